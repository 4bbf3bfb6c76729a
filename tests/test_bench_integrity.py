import json

from click.testing import CliRunner

from nnmark.bench import integrity
from nnmark.cli import main


def test_bench_integrity_quick_writes_its_tables_and_plot(tmp_path):
    r = CliRunner().invoke(main, ["bench", "integrity", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "integrity.json").read_text())
    assert list(result["cases"]) == ["LeNet-5 / mnist5k", "LeNet-5 / digits"]
    for case in result["cases"].values():
        (row,) = case["seeds"]
        methods = set(row["detection"]["backdoor"])
        assert {"Validset", "DBI", "AID"} <= methods and any(m.startswith("Pairs m=") for m in methods)
        assert row["attack_info"]["finetune lr=1e-10"]["changed_buffers"] == 0.0  # LeNet-5 has no BatchNorm
        assert row["attack_info"]["backdoor"]["poison_success"] == 1.0
        assert row["attack_info"]["finetune lr=1e-10"]["changed_fraction"] < row["attack_info"]["finetune lr=0.001"][
            "changed_fraction"]
        assert row["attack_info"]["prune 0.1"]["sparsity"] > row["attack_info"]["prune 0.01"]["sparsity"] >= 0.01
        assert {"int8 per-tensor (fake)", "int8 per-channel (fake)"} <= set(row["detection"])
        assert row["aid_coverage"][1] > row["aid_coverage"][0]
        for rates in row["detection"].values():
            for r_ in rates.values():
                assert 0 <= r_["single"] <= r_["pair"] <= 1
        # a large fine-tune moves boundary samples more than natural ones
        big = row["detection"]["finetune lr=0.001"]
        assert big["DBI"]["single"] + big["AID"]["single"] > big["Validset"]["single"]
        assert set(row["false_alarms"]) | set(row["envs_skipped"]) == set(result["false_alarm_envs"])
        assert {"float64", "mkldnn-off", "batch1"} <= set(result["false_alarm_envs"])
        assert [t["n"] for t in case["timing"]] == [8, 16] and all(t["plain"] > 0 for t in case["timing"])
    assert any(m.startswith("Pairs head-act m=") for m in result["cases"]["LeNet-5 / mnist5k"]["seeds"][0]["key_sizes"])
    md = (tmp_path / "integrity.md").read_text()
    for title in ("Table 2 layout", "Table 3 layout", "Fig. 3 layout", "Table 4 layout", "False alarms",
                  "Detection vs margin", "Activation term of eq. 6", "Table 5 layout", "| AID single / pair |"):
        assert title in md
    assert "`nnmark bench integrity --quick`" in md
    png = (tmp_path / "integrity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_default_margin_is_the_smallest_without_false_alarms():
    def seed(alarms: dict) -> dict:
        return {"key_sizes": {k: 4 for k in alarms}, "false_alarm_samples": {"batch1": alarms}}

    result = {"params": {"margins": [0.0, 1e-4, 1e-3]},
              "cases": {"a": {"seeds": [seed({"Pairs m=0": 2, "Pairs m=0.0001": 1, "Pairs m=0.001": 0})]},
                        "b": {"seeds": [seed({"Pairs m=0": 0, "Pairs m=0.0001": 0, "Pairs m=0.001": 0})]},
                        "no pairs made": {"seeds": [seed({})]}}}
    assert integrity.choose_default_margin(result) == 1e-3
    result["cases"]["a"]["seeds"][0]["false_alarm_samples"]["batch1"]["Pairs m=0.001"] = 1
    assert integrity.choose_default_margin(result) is None


def test_bench_integrity_quick_on_a_foreign_model_is_one_case_with_the_same_rows(tmp_path):
    args = ["--model", "foreign_models:small_gn_net", "--input-shape", "3,32,32", "--normalize", "0.5,0.25",
            "--data", "digits"]
    r = CliRunner().invoke(main, ["bench", "integrity", "--quick", *args, "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    stem = "integrity-foreign_models-small_gn_net"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["model"]["spec"] == "foreign_models:small_gn_net" and result["model"]["kind"] == "factory"
    (case,) = result["cases"].values()
    assert list(result["cases"]) == ["small_gn_net / digits"]
    (row,) = case["seeds"]
    assert row["accuracy"] > 0.5
    # the zoo quick run's attack rows and keys; AID hooks the GELU units of this model as it hooks ReLUs
    assert {"backdoor", "finetune lr=1e-10", "finetune lr=0.001", "prune 0.01", "prune 0.1", "int8 per-tensor (fake)",
            "int8 per-channel (fake)"} <= set(row["detection"])
    assert {"Validset", "DBI", "AID", "Pairs m=0"} <= set(row["key_sizes"]) and not row.get("keys_skipped")
    assert row["aid_coverage"] is not None
    assert all(t["AID"] > 0 and t["DBI"] > 0 for t in case["timing"])
    md = (tmp_path / f"{stem}.md").read_text()
    assert "Model: `foreign_models:small_gn_net`, a factory source" in md
    assert "AID could not run here" not in md and "int8 torch static PTQ could not run here" in md
    assert f"`nnmark bench integrity {' '.join(args[:4])} --normalize 0.5,0.5,0.5,0.25,0.25,0.25" in md
