"""``nnmark bench ownership``: the scores that decide its tables, and a quick run through the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from nnmark import attacks, data
from nnmark.attacks.measure import is_theft
from nnmark.bench import ownership as bench
from nnmark.bench import thefts
from nnmark.cli import main
from nnmark.errors import DataError


def test_auc_counts_every_pair_and_ties_half():
    assert bench.auc([0.9], [0.1, 0.9, 1.0]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert bench.auc([2.0, 3.0], [1.0]) == 1.0 and bench.auc([1.0], [2.0]) == 0.0


def test_past_every_needs_a_score_strictly_above_the_most_suspicious_independent():
    assert bench.past_every([1.0, 0.5, 0.6], [0.5, 0.2]) == pytest.approx(2 / 3)
    assert bench.past_every([0.5], [0.5]) == 0.0


def _verdict(passed: bool, score: float) -> dict:
    return {"passed": passed, "statistic": score, "score": score, "p_value": 0.5, "queries": 100}


def _seed(copy: dict, independents: list[dict], method: str = "M") -> dict:
    return {"thefts": {"a": {"methods": {method: copy}}},
            "independents": {f"i{j}": {"methods": {method: v}} for j, v in enumerate(independents)}}


def test_method_summary_counts_false_claims_from_the_independent_models(monkeypatch):
    monkeypatch.setattr(bench, "METHODS", {"M": ("M", "labels")})
    seeds = [_seed(_verdict(True, 0.9), [_verdict(False, 0.1), _verdict(True, 0.95), _verdict(False, 0.2)])]
    cell = bench.method_summary(seeds, "a", "M")
    assert cell["tpr"] == 1 and cell["false_claims"] == 1 and cell["independents"] == 3
    assert cell["tpr_threshold_free"] == 0 and cell["auc"] == pytest.approx(2 / 3)
    assert bench.method_summary([_seed(_verdict(True, 1), [], method="N")], "a", "M") is None


def test_survivors_need_every_copy_matched_and_no_false_claim_cheapest_first(monkeypatch):
    monkeypatch.setattr(bench, "METHODS", {m: (m, "labels") for m in "ABCD"})
    monkeypatch.setattr(bench, "key_cost", lambda seeds, m: {"A": 5, "B": 1, "C": 0, "D": 0}[m])
    cell = {"tpr": 1.0, "false_claims": 0, "queries": 100}
    summary = {"a": {"methods": {"A": cell, "B": cell, "C": {**cell, "false_claims": 1},
                                 "D": {**cell, "tpr": 0.5}}},
               "b": {"methods": {"A": {**cell, "queries": 10}, "B": cell, "C": None, "D": None}}}
    assert bench.survivors(summary, []) == {"a": ["B", "A"], "b": ["A", "B"]}


def test_goals_are_refuted_by_a_theft_no_method_catches_at_100_queries():
    cell = {"tpr": 1.0, "false_claims": 0, "queries": 100, "auc": 1.0}
    summary = {bench.VICTIM: {"theft": True, "methods": {"SAC-m": cell}},
               "distill, same arch, T=3": {"theft": True, "methods": {"SAC-m": cell}},
               "RTAL": {"theft": True, "methods": {"SAC-m": {**cell, "queries": 101}}},
               "extract labels + adversarial": {"theft": False, "methods": {"SAC-m": {**cell, "auc": 0.5}}}}
    best = {a: ["SAC-m"] for a in summary}
    first, distill, adversarial = bench.goals(summary, best).splitlines()
    assert "REFUTED for RTAL (1 of 2 thefts)" in first
    assert distill.endswith("met.") and "not measured" in adversarial
    summary["distill, same arch, T=3"]["methods"]["SAC-m"] = {**cell, "auc": 0.98}
    assert "REFUTED by distill, same arch, T=3 (0.98)" in bench.goals(summary, best)


def test_dataset_spec_writes_a_subset_once_and_falls_back_without_fashion_mnist(tmp_path, monkeypatch):
    fashion = data.Dataset("fashion-mnist", data.Split(torch.rand(50, 1, 28, 28), torch.arange(50) % 10),
                           data.Split(torch.rand(20, 1, 28, 28), torch.arange(20) % 10), 10)
    load = data.load
    monkeypatch.setattr(data, "load", lambda spec, **kw: fashion if spec == bench.DATA else load(spec, **kw))
    spec, note = bench.dataset_spec({"subset": (40, 10)}, tmp_path)
    assert spec.startswith("npz:") and "first 40 training and 10 test images" in note
    subset = load(f"{spec}@thief")
    assert len(subset.train) == 20 and torch.equal(subset.test.x, fashion.test.x[:10])
    written = (tmp_path / "fashion-mnist-40-10.npz").stat().st_mtime_ns
    assert bench.dataset_spec({"subset": (40, 10)}, tmp_path)[0] == spec
    assert (tmp_path / "fashion-mnist-40-10.npz").stat().st_mtime_ns == written
    assert bench.dataset_spec({"subset": None}, tmp_path) == (bench.DATA, "fashion-mnist: 50 training images (two "
                                                               "halves), 20 test images")

    def missing(spec):
        raise DataError("no fashion-mnist here")

    monkeypatch.setattr(data, "load", missing)
    spec, note = bench.dataset_spec({"subset": (40, 10)}, tmp_path)
    assert spec == bench.FALLBACK and "no fashion-mnist here" in note and "mnist5k instead" in note


def test_every_theft_names_a_registered_attack_function():
    assert set(thefts.ATTACKS) <= set(attacks.ATTACKS)
    assert all(attacks.ATTACKS[name].fn is fn for name, fn in thefts.ATTACKS.items())
    catalogue = thefts.catalogue()
    assert all(t.attack in thefts.ATTACKS and (t.base is None or t.base in catalogue) for t in catalogue.values())


def test_bench_ownership_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "ownership", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ownership.json").read_text())
    assert result["command"] == "nnmark bench ownership --quick"
    (row,) = result["seeds"]
    assert row["victim_accuracy"] > 0.6 and len(row["independents"]) == 5
    assert {x["arch"] for x in row["independents"].values()} == {"lenet5", "vgg11", "resnet20"}
    assert list(row["thefts"]) == [bench.VICTIM, *thefts.catalogue()] == list(result["summary"])
    assert row["cost"]["derived_trained"] == len(thefts.catalogue()) + len(bench.QUICK["distilled"])  # cold caches
    made = [m for m, (key, _) in bench.METHODS.items() if "seconds" in row["keys"][key]]
    assert {"SAC-m", "SAC-m labels", "MetaFinger", "IPGuard"} <= set(made)
    for m in made:  # the victim itself is a true positive for every method that made a key
        assert row["thefts"][bench.VICTIM]["methods"][m]["passed"]
        assert result["summary"][bench.VICTIM]["methods"][m]["tpr"] == 1
    for attack, s in result["summary"].items():
        copy = row["thefts"][attack]
        assert s["theft"] == copy["theft"] == is_theft(row["victim_accuracy"], copy["accuracy"])
        for m in made:  # false claims are counted over the independent models, under the method's rule
            cell = s["methods"][m]
            assert cell["false_claims"] == sum(x["methods"][m]["passed"] for x in row["independents"].values())
            assert cell["independents"] == 5 and 0 <= cell["auc"] <= 1 and cell["queries"] >= 1
    for attack, methods in result["survivors"].items():
        assert all(result["summary"][attack]["methods"][m]["false_claims"] == 0 for m in methods)
    md = (tmp_path / "ownership.md").read_text()
    for part in ("Reduced against the issue", "## Which method survives which theft", "| none (the victim itself) |",
                 "### SAC-m labels", "## Independent models", "## Cost", "`nnmark bench ownership --quick`"):
        assert part in md
    assert (tmp_path / "ownership.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
