"""tools/mutation.py: how mutmut's results become a module's score, and what a CI failure names."""

import fnmatch
import importlib.util
import json
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
    assert all(any(fnmatch.fnmatchcase(name, p) for m in config["modules"] for p in mutation.patterns(m))
               for name in config["equivalent"])
    assert all(why.strip() for why in config["equivalent"].values())


def test_an_entry_with_functions_runs_and_scores_only_their_mutants(tmp_path):
    entry = "pkg.mod:decide,Report.status"
    assert mutation.patterns("pkg.mod") == ["pkg.mod.*"]
    assert mutation.patterns(entry) == ["pkg.mod.x_decide__mutmut_*", "pkg.mod.xǁReportǁstatus__mutmut_*"]
    meta = tmp_path / "mutants" / "src" / "pkg" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"pkg.mod.x_decide__mutmut_1": 1, "pkg.mod.x_decide_all__mutmut_1": 0, "pkg.mod.x_log__mutmut_1": 0,
             "pkg.mod.xǁReportǁstatus__mutmut_2": None, "pkg.mod.xǁReportǁto_dict__mutmut_1": 0}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    assert mutation.exit_codes(entry, tmp_path) == {"pkg.mod.x_decide__mutmut_1": 1,
                                                    "pkg.mod.xǁReportǁstatus__mutmut_2": None}
    assert len(mutation.exit_codes("pkg.mod", tmp_path)) == 5
