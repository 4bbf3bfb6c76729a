"""``nnmark bench ownership``: the scores that decide its tables, and a quick run through the CLI."""

import json
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nnmark import attacks, data, models
from nnmark.attacks.distill import build_student
from nnmark.attacks.measure import is_theft
from nnmark.bench import dawn as api_bench
from nnmark.bench import ownership as bench
from nnmark.bench import thefts
from nnmark.cli import bench as bench_cli
from nnmark.cli import main
from nnmark.errors import ArgumentError, DataError
from nnmark.keys import KeyFile
from nnmark.marks.ownership import shadow

REPORTS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def test_auc_counts_every_pair_and_ties_half():
    assert bench.auc([0.9], [0.1, 0.9, 1.0]) == pytest.approx((1 + 0.5 + 0) / 3)
    assert bench.auc([2.0, 3.0], [1.0]) == 1.0 and bench.auc([1.0], [2.0]) == 0.0


def test_past_every_needs_a_score_strictly_above_the_most_suspicious_independent():
    assert bench.past_every([1.0, 0.5, 0.6], [0.5, 0.2]) == pytest.approx(2 / 3)
    assert bench.past_every([0.5], [0.5]) == 0.0


def _verdict(passed: bool, score: float) -> dict:
    return {"passed": passed, "statistic": score, "score": score, "p_value": 0.5, "queries": 100}


def _seed(copy: dict, independents: list[dict], method: str = "M", victim: str = bench.CLEAN,
          accuracy: float = 0.9, theft: bool = True) -> dict:
    """One seed's result on a LeNet-5 victim: one copy "a" of ``victim`` judged by ``method``, and the independents."""
    copies = {"a": {"accuracy": accuracy, "theft": theft, "methods": {method: copy}}}
    return {"victims": {"lenet5": {"victims": {victim: {"copies": copies}},
                                   "independents": {f"i{j}": {"methods": {method: v}}
                                                    for j, v in enumerate(independents)}}}}


def test_method_summary_counts_false_claims_from_the_independent_models(monkeypatch):
    monkeypatch.setattr(bench, "METHODS", {"M": ("M", "labels")})
    seeds = [_seed(_verdict(True, 0.9), [_verdict(False, 0.1), _verdict(True, 0.95), _verdict(False, 0.2)])]
    cell = bench.method_summary(seeds, "lenet5", "a", "M")
    assert cell["tpr"] == 1 and cell["false_claims"] == 1 and cell["independents"] == 3
    assert cell["tpr_threshold_free"] == 0 and cell["auc"] == pytest.approx(2 / 3)
    assert cell["accuracy"] == 0.9 and cell["theft"]
    assert bench.method_summary([_seed(_verdict(True, 1), [], method="N")], "lenet5", "a", "M") is None


def test_a_watermark_is_judged_on_the_copies_of_its_own_marked_victim():
    assert bench.victim_of("SAC-m labels") == bench.victim_of("IPGuard") == bench.CLEAN
    assert all(bench.victim_of(w) == w for w in bench.WATERMARKS)
    marked = _seed(_verdict(True, 0.9), [_verdict(False, 0.1)], method="Adi", victim="Adi", accuracy=0.7,
                   theft=False)
    cell = bench.method_summary([marked], "lenet5", "a", "Adi")
    assert cell["tpr"] == 1 and cell["accuracy"] == 0.7 and not cell["theft"]
    assert bench._mark(cell) == "not a theft (70%)" and not bench._survives(cell)
    clean = _seed(_verdict(True, 0.9), [_verdict(False, 0.1)], method="Adi")  # a clean copy is not Adi's to judge
    assert bench.method_summary([clean], "lenet5", "a", "Adi") is None


def test_survivors_need_every_copy_matched_and_no_false_claim_cheapest_first(monkeypatch):
    monkeypatch.setattr(bench, "METHODS", {m: (m, "labels") for m in "ABCDE"})
    monkeypatch.setattr(bench, "key_cost", lambda seeds, arch, m: {"A": 5, "B": 1, "C": 0, "D": 0, "E": 0}[m])
    cell = {"tpr": 1.0, "false_claims": 0, "queries": 100, "theft": True}
    summary = {"a": {"methods": {"A": cell, "B": cell, "C": {**cell, "false_claims": 1},
                                 "D": {**cell, "tpr": 0.5}, "E": {**cell, "theft": False}}},
               "b": {"methods": {"A": {**cell, "queries": 10}, "B": cell, "C": None, "D": None, "E": None}}}
    assert bench.survivors(summary, [], "lenet5") == {"a": ["B", "A"], "b": ["A", "B"]}


def test_goals_are_refuted_by_a_theft_no_method_catches_at_100_queries():
    cell = {"tpr": 1.0, "false_claims": 0, "queries": 100, "auc": 1.0, "theft": True}
    summary = {bench.VICTIM: {"methods": {"SAC-m": cell}},
               "distill, same arch, T=3": {"methods": {"SAC-m": cell}},
               "RTAL": {"methods": {"SAC-m": {**cell, "queries": 101}}},
               "extract labels + adversarial": {"methods": {"SAC-m": {**cell, "auc": 0.5, "theft": False}}}}
    best = {"lenet5": {a: ["SAC-m"] for a in summary}}
    first, distill, adversarial, distill_w, adversarial_w, distill_rare, adversarial_rare = bench.goals(
        {"lenet5": summary}, best).splitlines()
    assert "REFUTED for RTAL (LeNet-5) (1 of 2 thefts)" in first
    assert distill.endswith("met.") and "not measured" in adversarial
    assert distill_w.startswith("- SAC-w AUC >= 0.99") and "not measured" in distill_w and "not measured" in adversarial_w
    assert distill_rare.startswith("- SAC-w rare errors AUC >= 0.99") and "not measured" in adversarial_rare
    summary["distill, same arch, T=3"]["methods"]["SAC-m"] = {**cell, "auc": 0.98}
    assert "REFUTED by distill, same arch, T=3 (LeNet-5) (0.98)" in bench.goals({"lenet5": summary}, best)


def test_the_metafinger_goal_needs_95_percent_on_each_named_thefts_copy_and_p_against_the_closest_independent():
    key = "MetaFinger thief-aware"

    def seeds(rtal: float, independent: float, theft: bool = True) -> list[dict]:
        copies = {"RTAL": {"theft": theft, "methods": {key: {"statistic": rtal, "queries": 100}}},
                  "distill, same arch, T=3": {"theft": True, "methods": {key: {"statistic": 0.1, "queries": 100}}}}
        independents = {"i0": {"methods": {key: {"statistic": 0.1}}},
                        "i1": {"methods": {key: {"statistic": independent}}}}
        return [{"seed": 4, "victims": {"lenet5": {"independents": independents,
                                                   "victims": {bench.CLEAN: {"copies": copies}}}}}]

    assert bench.metafinger_goal(seeds(0.95, 0.5), ["lenet5"], key).endswith(": met (1 copy).")
    refuted = bench.metafinger_goal(seeds(0.94, 0.1), ["lenet5"], key)
    assert "REFUTED by RTAL (LeNet-5, seed 4): 94%" in refuted
    assert "REFUTED" in bench.metafinger_goal(seeds(0.95, 0.9), ["lenet5"], key)  # p 0.06 against the closest one
    assert "not measured" in bench.metafinger_goal(seeds(0.5, 0.1, theft=False), ["lenet5"], key)
    assert "not measured" in bench.metafinger_goal(seeds(0.95, 0.1), ["lenet5"], "MetaFinger thief-wide")


def test_a_watermark_whose_key_could_not_be_made_is_a_cost_row_with_its_error():
    error = "eps 0.1 gives 0 true and 44 false adversaries among 44 images; need 45 of each (change eps)"
    victim = {"keys": {"frontier": {"error": error}, "IPGuard": {"seconds": 2.0, "queries": 100}},
              "cost": {"pool_models": {}, "pool_seconds": {}},
              "victims": {bench.CLEAN: {"victim_accuracy": 0.9, "copies": {bench.VICTIM: {
                  "methods": {"IPGuard": _verdict(True, 1.0)}}}}}}
    rows = bench.cost_table([{"victims": {"resnet20": victim}}], "resnet20", ["IPGuard", "frontier"]).splitlines()
    assert rows[-2] == "| IPGuard | 2.0 s | 0 | - | 100 | 90% |"
    assert rows[-1] == f"| frontier | {error} | 0 | - | - | - |"
    summary = {bench.VICTIM: {"methods": {"IPGuard": {"tpr": 1.0}, "frontier": None}}}
    assert bench.method_table(summary, "frontier").startswith("Nothing judged: the method made no key")


def test_reductions_name_what_a_run_left_out_of_the_issues_design():
    assert bench.reductions({**bench.FULL}) == list(bench.NOT_MEASURED)
    quick = bench.reductions(bench.QUICK)
    assert "1 victim seed(s), not 3" in quick and "no ResNet-20 victim" in quick
    assert "no frontier watermark" in quick and "no coupled direct watermark" not in quick
    assert f"the watermarked victims face 2 of the {len(thefts.catalogue())} thefts" in quick


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "no parameter 'bogus'"),
    ({"victims": "resnet20"}, "victims takes a list, got a string"),
    ({"seeds": 1.5}, "seeds takes an integer, got a number"),
    ({"n": True}, "n takes an integer, got true or false"),
    ({"epochs": {"lenet5": 2}}, "epochs needs the keys lenet5, vgg11, resnet20"),
    ({"victims": []}, "needs a victim and a seed"),
    ({"seeds": 0}, "needs a victim and a seed"),
    ({"victims": ["vgg11"]}, "victims: unknown ['vgg11']"),
    ({"watermarks": ["Zhang", "Li"]}, "watermarks: unknown ['Li']"),
    ({"watermark_thefts": ["RTAL", "steal"]}, "unknown ['steal']"),
])
def test_an_override_that_would_fail_the_run_is_refused_before_anything_is_trained(overrides, message):
    with pytest.raises(ArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bench.check_overrides(overrides)


def test_overrides_of_each_kind_the_modes_give_are_taken_and_recorded_as_set_options():
    overrides = {"victims": ("resnet20",), "seeds": 2, "watermarks": [], "subset": None, "alpha": 1,
                 "epochs": {"lenet5": 2, "vgg11": 1, "resnet20": 1}, "watermark_thefts": ["RTAL"]}
    bench.check_overrides(overrides)
    options = bench.set_options(overrides)
    assert options.startswith(""" --set 'victims=["resnet20"]' --set seeds=2 --set 'watermarks=[]'""")
    settings = shlex.split(options)[1::2]
    assert shlex.split(options)[::2] == ["--set"] * len(overrides)
    assert bench_cli._overrides(tuple(settings)) == {"overrides": bench.jsonable(overrides)}
    assert bench.stem({"victims": ["resnet20"]}) == "ownership-resnet20"
    assert bench.stem(bench.FULL) == bench.stem(bench.QUICK) == "ownership"


@pytest.mark.parametrize("stem", ["ownership", "ownership-resnet20"])
def test_a_committed_reports_command_gives_its_parameters_and_its_file_name(stem):
    result = json.loads((REPORTS / f"{stem}.json").read_text())
    words = shlex.split(result["command"])
    assert words[:3] == ["nnmark", "bench", "ownership"]
    args = words[3:]
    seeds = int(args[args.index("--seeds") + 1]) if "--seeds" in args else None
    overrides = bench_cli._overrides(tuple(args[i + 1] for i, w in enumerate(args) if w == "--set"))["overrides"]
    bench.check_overrides(overrides)
    p = {**bench.parameters(bench.FULL, bench.QUICK, quick="--quick" in args, seeds=seeds), **overrides}
    assert bench.jsonable(p) == result["params"] and bench.stem(p) == stem


def test_set_without_a_name_or_an_unknown_parameter_is_one_line_exit_2_and_writes_nothing(tmp_path):
    for setting in ("victims", "=1", "bogus=1", "seeds=two"):
        r = CliRunner().invoke(main, ["bench", "ownership", "--quick", "--set", setting, "--out-dir", str(tmp_path)])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert not list(tmp_path.iterdir())
    assert "No such option" in CliRunner().invoke(main, ["bench", "dbi", "--set", "n=1"]).output


def test_the_audit_goal_is_refuted_by_a_sequential_claim_the_whole_key_does_not_make():
    def seeds(passed: list[bool], whole: bool) -> list[dict]:
        runs = {"copy: a": {"passed": [True], "whole_passed": False},
                "i0": {"passed": passed, "whole_passed": whole}}
        return [{"victims": {"lenet5": {"audit": {"MetaFinger": runs}}}}]

    assert "met (no sequential MATCH" in bench.audit_goal(seeds([False, False], False), ["lenet5"])
    assert "met (" in bench.audit_goal(seeds([True, True], True), ["lenet5"])  # the method's own claim
    refuted = bench.audit_goal(seeds([False, True], False), ["lenet5"])
    assert "REFUTED" in refuted and "MetaFinger (LeNet-5): i0, 1 of 2 orders" in refuted


def test_audit_counts_take_the_thefts_of_the_keys_own_victim_and_every_independent():
    runs = {"copy: a": {"passed": [True]}, "copy: b": {"passed": [True]}, "i0": {"passed": [False]}}
    copies = {"a": {"theft": True}, "b": {"theft": False}}
    seeds = [{"victims": {"lenet5": {"victims": {"Adi": {"copies": copies}}, "audit": {"Adi": runs}}}}]
    counts = bench._audit_counts(seeds, "lenet5", "Adi")
    assert counts == {"thefts": [runs["copy: a"]], "independents": [runs["i0"]]}


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


def test_a_subset_of_thefts_keeps_the_catalogues_order_and_the_thefts_they_start_from():
    assert list(thefts.select(None)) == list(thefts.catalogue())
    assert list(thefts.select(["RTAL", "distill, same arch, T=3"])) == ["distill, same arch, T=3", "RTAL"]
    for bad in (["no such theft"], ["extract labels + adversarial eps=0.05"]):
        with pytest.raises(ArgumentError):
            thefts.select(bad)


def test_a_watermarked_victim_and_its_key_are_made_once_then_read_from_the_cache(tmp_path):
    ds = data.load("digits")
    made = []

    def embed():
        made.append(1)
        key = KeyFile(method="adi", config={"k": 1}, queries=ds.test.x[:3], expected=torch.tensor([1, 2, 3]))
        return build_student("lenet5", ds.shape, 10, seed=0), key

    recipe = {"watermark": "Adi", "seed": 0}
    first = thefts.embedded(recipe, embed, "lenet5", ds, tmp_path)
    again = thefts.embedded(recipe, embed, "lenet5", ds, tmp_path)
    assert made == [1] and not first[2]["cached"] and again[2]["cached"]
    assert models.digest(again[0]) == models.digest(first[0]) and torch.equal(again[1].queries, first[1].queries)
    [key_file] = tmp_path.glob("*.key")
    key_file.unlink()  # a model whose key is lost is made again, key and all
    third = thefts.embedded(recipe, embed, "lenet5", ds, tmp_path)
    assert made == [1, 1] and not third[2]["cached"] and key_file.exists()


def test_sacs_scratch_models_are_trained_once_then_read_from_the_cache_with_their_recorded_seconds(tmp_path,
                                                                                                     monkeypatch):
    ds = data.load("digits")
    victim = build_student("lenet5", ds.shape, 10, seed=0)
    trained = []
    real = bench.sac.scratch_models

    def counting(source, owner, k, *, epochs, seed):
        trained.append(seed)
        return real(source, owner, k, epochs=epochs, seed=seed)

    monkeypatch.setattr(bench.sac, "scratch_models", counting)

    def owner(seed):
        return bench.Owner(victim, "lenet5", {}, ds, {"sac_scratch": 2, "epochs": {"lenet5": 1}}, seed, tmp_path)

    first, again, other = owner(0).scratch, owner(0).scratch, owner(1).scratch
    assert trained == [0, 1, 2]  # seed 1's first model is seed 0's second (sac.scratch_models' seeds): read back
    assert [models.digest(m) for m in again[0]] == [models.digest(m) for m in first[0]]
    assert again[1] == first[1] > 0
    assert [models.digest(m) for m in other[0]] == [models.digest(first[0][1]), models.digest(other[0][1])]
    assert models.digest(other[0][1]) not in {models.digest(m) for m in first[0]}
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(records) == 3 and {r["threads"] for r in records} == {torch.get_num_threads()}  # weights depend on it


def test_bench_ownership_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "ownership", "--quick", "--set", 'watermark_thefts=["RTAL"]',
                                  "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ownership.json").read_text())
    assert result["command"] == """nnmark bench ownership --quick --set 'watermark_thefts=["RTAL"]'"""
    assert result["params"]["watermark_thefts"] == ["RTAL"]
    (row,) = result["seeds"]
    (victim,) = row["victims"].values()
    summary = result["summary"]["lenet5"]
    assert victim["victim_accuracy"] > 0.6 and len(victim["independents"]) == 5
    assert {x["arch"] for x in victim["independents"].values()} == {"lenet5", "vgg11", "resnet20"}
    clean, marked = victim["victims"][bench.CLEAN]["copies"], victim["victims"]["coupled direct"]["copies"]
    assert list(clean) == [bench.VICTIM, *thefts.catalogue()] == list(summary)
    assert list(marked) == [bench.VICTIM, "RTAL"]
    assert victim["cost"]["derived_trained"] == len(thefts.catalogue()) + 1  # cold caches
    assert row["distilled_trained"] == len(bench.QUICK["distilled"])
    made = [m for m, (key, _) in bench.METHODS.items() if "seconds" in victim["keys"].get(key, {})]
    assert {"SAC-m", "SAC-m labels", "MetaFinger", "MetaFinger thief-wide", "IPGuard", "coupled direct"} <= set(made)
    pools = victim["cost"]["pool_models"]  # the wide pools: the thief-aware ones, 2 students of 2 families, prune 90%
    assert pools["thief-wide"] == pools["thief"] + 5 == pools["paper"] + len(shadow.THIEF_POSITIVES) + 5
    for m in made:  # the victim itself (the marked one, for a watermark) is a true positive for every method
        assert victim["victims"][bench.victim_of(m)]["copies"][bench.VICTIM]["methods"][m]["passed"], m
        assert summary[bench.VICTIM]["methods"][m]["tpr"] == 1
    assert "coupled direct" not in clean["RTAL"]["methods"] and "IPGuard" not in marked["RTAL"]["methods"]
    for attack, s in summary.items():
        copy = clean[attack]
        assert s["theft"] == copy["theft"] == is_theft(victim["victim_accuracy"], copy["accuracy"])
        for m in made:  # false claims are counted over the independent models, under the method's rule
            cell = s["methods"][m]
            if cell is None:
                assert m == "coupled direct" and attack not in marked
                continue
            assert cell["false_claims"] == sum(x["methods"][m]["passed"] for x in victim["independents"].values())
            assert cell["independents"] == 5 and 0 <= cell["auc"] <= 1 and cell["queries"] >= 1
    for attack, methods in result["survivors"]["lenet5"].items():
        assert all(summary[attack]["methods"][m]["false_claims"] == 0 for m in methods)
    audited = victim["audit"]["MetaFinger"]
    assert set(audited) == {f"copy: {a}" for a in clean} | set(victim["independents"])
    assert audited["copy: " + bench.VICTIM]["passed"] == [True]
    assert all(max(x["queries"]) <= x["whole_queries"] for x in audited.values())
    md = (tmp_path / "ownership.md").read_text()
    for part in ("Reduced against the issue", "no ResNet-20 victim", "## LeNet-5 victim: which method survives",
                 "| none (the victim itself) |", "### LeNet-5: SAC-m labels", "### LeNet-5: coupled direct",
                 "### LeNet-5: independent models", "### LeNet-5: cost", "### LeNet-5: nnmark audit",
                 """`nnmark bench ownership --quick --set 'watermark_thefts=["RTAL"]'`"""):
        assert part in md
    assert (tmp_path / "ownership.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, ["bench", "ownership", "--quick", "--set", 'watermark_thefts=["RTAL"]',
                                      "--out-dir", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    resumed = json.loads((tmp_path / "again" / "ownership.json").read_text())  # the finished seed, read back
    assert json.dumps(resumed["seeds"]) == json.dumps([{**row, "resumed": True}])
    assert json.dumps(resumed["summary"]) == json.dumps(result["summary"])
    assert resumed["survivors"] == result["survivors"]
    md = (tmp_path / "again" / "ownership.md").read_text()
    assert "training 0 shadow models and 0 copies" in md and "seed(s) 0 read back as an earlier run" in md


def test_a_seed_is_read_back_only_for_the_same_seed_parameters_data_and_code(monkeypatch, tmp_path):
    computed = []

    def run_seed(seed, p, spec, progress):
        computed.append((seed, p["n"], spec))
        return {"seed": seed, "n": p["n"]}

    source = ["a"]
    monkeypatch.setattr(bench, "run_seed", run_seed)
    monkeypatch.setattr(bench, "derived_cache", lambda: tmp_path)
    monkeypatch.setattr(bench, "source_digest", lambda: source[0])
    first = bench.seed_row(0, {"n": 100}, "fashion-mnist", False)
    assert first == {"seed": 0, "n": 100} and computed == [(0, 100, "fashion-mnist")]
    assert bench.seed_row(0, {"n": 100}, "fashion-mnist", False) == {**first, "resumed": True}
    assert len(computed) == 1
    bench.seed_row(1, {"n": 100}, "fashion-mnist", False)
    bench.seed_row(0, {"n": 50}, "fashion-mnist", False)
    bench.seed_row(0, {"n": 100}, "mnist5k", False)
    source[0] = "b"  # nnmark's code changed
    bench.seed_row(0, {"n": 100}, "fashion-mnist", False)
    assert computed[1:] == [(1, 100, "fashion-mnist"), (0, 50, "fashion-mnist"), (0, 100, "mnist5k"),
                            (0, 100, "fashion-mnist")]
    assert len(list((tmp_path / "seeds").glob("*.json"))) == 5


def test_nnmarks_source_digest_changes_with_any_of_its_files(monkeypatch, tmp_path):
    from nnmark.bench import common

    package = tmp_path / "nnmark"
    (package / "bench").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "bench" / "common.py").write_text("x = 1\n")
    monkeypatch.setattr(common, "__file__", str(package / "bench" / "common.py"))
    before = common.source_digest()
    assert common.source_digest() == before
    (package / "bench" / "common.py").write_text("x = 2\n")
    assert common.source_digest() != before
    (package / "bench" / "common.py").write_text("x = 1\n")
    assert common.source_digest() == before
    (package / "new.py").write_text("")
    assert common.source_digest() != before


def test_no_copy_or_distilled_independent_starts_from_the_seed_of_a_model_it_is_compared_with():
    # a student of seed s starts from the initial weights of the from-scratch model of seed s
    seeds = range(bench.FULL["seeds"])
    compared = {s for t in seeds for s in range(100 * t, 100 * t + 100)}  # victims and their pools
    compared |= {spec.seed for t in seeds for spec in bench.independent_specs("fashion-mnist", bench.FULL, t).values()}
    students = [thefts.theft_seed(t) for t in seeds]
    students += [thefts.distilled_seed(t, i) for t in seeds for i in range(len(bench.FULL["distilled"]))]
    assert len(set(students)) == len(students) and not compared & set(students)


def test_bench_ownership_api_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "ownership-api", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "ownership-api.json").read_text())
    assert result["command"] == "nnmark bench ownership-api --quick"
    (row,) = result["seeds"]
    assert list(row["copies"]) == list(api_bench.catalogue(api_bench.QUICK)) == list(result["summary"])
    assert 0 < row["kept"] <= min(row["recorded"], api_bench.QUICK["n"])
    assert abs(row["served_accuracy"] - row["victim_accuracy"]) <= api_bench.QUICK["rate"] * 2
    assert len(row["independents"]) == 2
    for name, s in result["summary"].items():
        copy = row["copies"][name]
        assert s["thefts"] == copy["theft"] == is_theft(row["victim_accuracy"], copy["accuracy"])
        assert s["false_claims"] == sum(x["passed"] for x in row["independents"].values()) and s["judged"] == 2
        assert s["tpr"] == copy["passed"] and copy["hits"] <= copy["departures"] and copy["queries"] == row["kept"]
    md = (tmp_path / "ownership-api.md").read_text()
    for part in ("## Which theft through the API DAWN catches", "| extract labels, same arch, stops early |",
                 "## Independent models", "## The victims, served"):
        assert part in md
