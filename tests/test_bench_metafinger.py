"""``nnmark bench ownership-fingerprint``: the Fig. 7 sub-pools, and a quick run through the CLI."""

import dataclasses
import json

from click.testing import CliRunner

from nnmark.marks.ownership import shadow
from nnmark.attacks import MODES, TRANSFORMS
from nnmark.bench import metafinger as bench
from nnmark.cli import main

DIGEST = "0" * 64


def test_subset_pools_take_families_and_augmentations_from_the_full_pool():
    full = shadow.pool_specs("lenet5", "mnist5k", DIGEST, shadow.PoolLayout(negatives=4, val_negatives=2, af=3))
    everything = {s for g in full.values() for s in g}
    same = bench.subset_pools(full, 4, 3)
    assert {g: len(v) for g, v in same.items()} == {g: len(v) for g, v in full.items()}
    two = bench.subset_pools(full, 2, 1)
    assert {s for g in two.values() for s in g} <= everything
    assert len(two["negatives_train"]) == 2 * (1 + 1)  # two families, each its model and one augmentation
    assert {s.seed for s in two["negatives_train"]} == {1, 2}
    assert len(two["positives_train"]) == 1 and two["positives_val"] == []
    assert two["negatives_val"] == full["negatives_val"]
    bare = bench.subset_pools(full, 4, 0)
    assert not any(s.augmented for g in bare.values() for s in g) and bare["positives_train"] == []
    assert len(bare["negatives_train"]) == 4


def test_bench_ownership_fingerprint_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "ownership-fingerprint", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "metafinger.json").read_text())
    assert result["command"] == "nnmark bench ownership-fingerprint --quick" and result["params"]["n"] == 30
    (row,) = result["seeds"]
    assert row["source_accuracy"] > 0.85
    fig3 = row["fig3"]
    assert list(fig3)[:5] == ["none", *MODES] and {"prune 10%", "prune 70%", "noise alpha=1"} <= set(fig3)
    for method in bench.METHODS:  # the untouched source answers every key as expected
        assert fig3["none"][method]["accuracy"] == 1.0
    assert fig3["none"]["IPGuard"]["passed"] and fig3["none"]["MetaFinger"]["passed"]
    assert fig3["none"]["MetaFinger"]["p_value"] < 1 and row["keys"]["MetaFinger"]["n"] >= 1
    rows = [*fig3.values(), *row["fig5"].values(), *row["table1"].values()]
    assert all(0 <= x[m]["accuracy"] <= 1 for x in rows for m in bench.METHODS)
    assert all(0.1 <= x["test_accuracy"] <= 1 for x in rows)
    assert len(row["fig5"]) == 2 * len(TRANSFORMS) and {k.split()[0] for k in row["fig5"]} == set(TRANSFORMS)
    assert set(row["table1"]) == {"lenet5 #1", "vgg11 #1"}
    for clean in row["table1"].values():
        assert not clean["MetaFinger"]["passed"] and 0 <= clean["IPGuard"]["p_value"] <= 1
    assert row["pools"] == {"positives_train": 1, "negatives_train": 8, "positives_val": 1, "negatives_val": 3}
    assert [(f["negatives"], f["af"]) for f in row["fig7"]] == [(1, 2), (2, 2), (2, 0)]
    assert all(f["shadow_seconds"] > 0 for f in row["fig7"])
    assert [f["shadow_models"] for f in row["fig7"]] == [7, 10, 4]
    cost = row["cost"]
    assert (cost["pool_models"], cost["lenet_models"], cost["second_models"]) == (13, 10, 3)
    assert cost["pool_training_seconds"] > 0 and cost["meta_training_seconds"] > 0
    md = (tmp_path / "metafinger.md").read_text()
    for part in ("Fig. 3 layout", "Fig. 5 layout", "Table 1 layout", "Fig. 7 layout", "## Cost", "| RTAL |",
                 "| median_smoothing k=5 |", "`nnmark bench ownership-fingerprint --quick`"):
        assert part in md
    assert (tmp_path / "metafinger.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the pool study (nnmark bench ownership-pools) --------------------------------------------------------------

from nnmark.bench import metafinger_pools as pools  # noqa: E402


def _row(accuracy=0.95, p_value=1e-7, p_empirical=1e-7, false_claims=0) -> dict:
    cell = {"statistic": accuracy, "p_value": p_value, "p_empirical": p_empirical}
    return {"kept": 100, "false_claims": false_claims, "copies": {t: dict(cell) for t in pools.GOAL_THEFTS}}


def test_the_goal_needs_95_percent_both_p_values_below_1e_6_and_no_false_claim():
    assert pools.goal_met(_row())
    assert not pools.goal_met(_row(accuracy=0.94))
    assert not pools.goal_met(_row(p_value=1e-6)) and not pools.goal_met(_row(p_empirical=1e-6))
    assert not pools.goal_met(_row(false_claims=1)) and not pools.goal_met({"kept": 0})
    one_short = _row()
    one_short["copies"][pools.GOAL_THEFTS[-1]]["statistic"] = 0.9
    assert not pools.goal_met(one_short)


def test_the_thief_designs_are_the_libraries_thief_aware_layouts():
    p = {"pool": {"negatives": 3, "val_negatives": 2, "af": 2}, "epochs": {"lenet5": 4}, "finetune_epochs": 2}
    base = pools.layout(p, pools.DESIGNS["paper"])
    assert pools.layout(p, pools.DESIGNS[pools.THIEF]) == base.thief_aware()
    assert [n for n, d in pools.DESIGNS.items() if pools.layout(p, d) == base.thief_aware()] == [pools.THIEF]
    wide = base.thief_wide(pools.VICTIM_ARCH)
    assert [n for n, d in pools.DESIGNS.items() if pools.layout(p, d) == wide] == [pools.EVERY_STUDENT_HARD_PRUNE]
    assert pools.THIEF.endswith("(thief-aware)") and pools.THIEF in pools.QUICK_DESIGNS
    assert base == shadow.PoolLayout(negatives=3, val_negatives=2, af=2, epochs=4, finetune_epochs=2)
    adversarial = pools.layout(p, pools.DESIGNS[pools.ADVERSARIAL])  # the thief-aware pools plus a PGD-trained copy
    assert adversarial.positive_variants == (*shadow.THIEF_POSITIVES, "adversarial")
    assert adversarial == dataclasses.replace(base.thief_aware(), positive_variants=adversarial.positive_variants)
    every = ("distill:vgg11", "extract:vgg11", "distill:resnet20", "extract:resnet20")
    added = {pools.HARD_PRUNE: ("prune90",), **{name: (f"distill:{arch}", f"extract:{arch}")
                                                for arch, name in pools.OTHER_STUDENTS.items()},
             pools.EVERY_STUDENT: every, pools.EVERY_STUDENT_HARD_PRUNE: (*every, "prune90")}
    for name, variants in added.items():  # the thief-aware pools plus these, one train-only copy each
        design = pools.layout(p, pools.DESIGNS[name])
        assert design == dataclasses.replace(base.thief_aware(), positive_variants=(*shadow.THIEF_POSITIVES, *variants))


def test_bench_ownership_pools_quick_compares_pool_designs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["bench", "ownership-pools", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "metafinger-pools.json").read_text())
    assert result["command"] == "nnmark bench ownership-pools --quick"
    (row,) = result["seeds"]
    paper, thief = row["designs"]["paper"], row["designs"][pools.THIEF]
    assert list(row["designs"]) == list(pools.QUICK_DESIGNS)
    assert (paper["shadow_models"], thief["shadow_models"]) == (13, 13 + 5)  # one copy of each of 5 variants
    assert thief["shadow_seconds"] > paper["shadow_seconds"] > 0
    for design in (paper, thief):
        assert design["kept"] >= 10 and 0.1 <= design["p0"] < 1
        assert set(design["copies"]) == set(row["thief_accuracy"]) >= set(pools.GOAL_THEFTS)
        for cell in design["copies"].values():
            assert 0 <= cell["statistic"] <= 1 and 0 <= cell["p_empirical"] <= 1
        assert design["goal"] == pools.goal_met(design)
    md = (tmp_path / "metafinger-pools.md").read_text()
    for part in ("## Pool designs (victim seed 0)", "## Every copy (victim seed 0)", f"| {pools.THIEF} |",
                 f"`{pools.THIEF}` is the default thief-aware pools", "| RTAL |",
                 "`nnmark bench ownership-pools --quick`"):
        assert part in md
