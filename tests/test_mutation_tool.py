"""tools/mutation.py: how mutmut's results become a module's score, and what a CI failure names."""

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("mutation_tool", Path(__file__).parent.parent / "tools" / "mutation.py")
mutation = sys.modules["mutation_tool"] = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mutation)


def test_score_counts_only_killed_and_timed_out_mutants_and_leaves_equivalent_ones_out():
    codes = {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 36, "m.x_f__mutmut_3": 0, "m.x_f__mutmut_4": 0,
             "m.x_f__mutmut_5": 33, "m.x_f__mutmut_6": None}
    s = mutation.score("m", codes, {"m.x_f__mutmut_4": "why"}, 1.0)
    assert s.counts == {"killed": 1, "timeout": 1, "survived": 1, "no tests": 1, "not run": 1, "equivalent": 1}
    assert s.percent == 40.0
    assert s.survivors == ["m.x_f__mutmut_3 (survived)", "m.x_f__mutmut_5 (no tests)", "m.x_f__mutmut_6 (not run)"]
    assert "| `m` | 1 | 1 | 1 | 1 | 1 | 1 | 40.0% (below) | 1 |" in mutation.table([s], 90)
    assert mutation.score("m", {"m.x_f__mutmut_1": 0}, {"m.x_f__mutmut_1": "why"}, 0.0).percent == 100.0


def test_the_configuration_names_a_ci_subset_of_its_modules_and_only_survivors_as_equivalent():
    config = mutation.settings()
    assert set(config["ci"]) <= set(config["modules"]) and config["threshold"] >= 90
    assert all(any(name.startswith(m + ".x") for m in config["modules"]) for name in config["equivalent"])
    assert all(why.strip() for why in config["equivalent"].values())
