"""``nnmark bench ownership-watermark --quick`` end to end."""

import json

from click.testing import CliRunner

from nnmark.cli import main


def test_quick_bench_writes_tables_json_and_plot(tmp_path):
    result = CliRunner().invoke(main, ["bench", "ownership-watermark", "--quick", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads((tmp_path / "coupled.json").read_text())
    md = (tmp_path / "coupled.md").read_text()
    assert out["command"] == "nnmark bench ownership-watermark --quick"
    p = out["params"]
    lenet = out["seeds"][0]["archs"]["lenet5"]
    assert set(lenet["marks"]) == set(p["variants"]["lenet5"]) | set(p["baselines"])
    direct = lenet["marks"]["direct"]
    assert direct["method"] == "coupled" and direct["before"]["passed"] and direct["before"]["success"] >= 0.9
    assert direct["before"]["p_value"] < 1e-3 and direct["before"]["null"] >= 0.1
    assert not direct["on_clean_model"]["passed"] and direct["on_clean_model"]["success"] < 0.3
    assert len(direct["finetune"]) == p["ft_trials"] and len(direct["prune"]) == len(p["prune"])
    assert len(direct["transfer"]) == p["transfer_trials"] and 0 <= direct["transfer"][0]["digits_accuracy"] <= 1
    assert "transfer" not in lenet["marks"]["direct-plain"]  # the ablation rows face fine-tuning and pruning only
    over = direct["overwrite"]
    victim = set(direct["config"]["base"]) | {direct["config"]["target"]}
    assert not (set(over["new_classes"]["base"]) | {over["new_classes"]["target"]}) & victim
    assert over["original"]["accuracy"] > 0.5 and 0 <= over["new"]["success"] <= 1
    for name, mark in lenet["marks"].items():
        c = mark["before"]
        assert c["passed"] == (c["success"] >= 0.5 and c["p_value"] < 1e-3), name
        assert c["null"] >= max(0.1, c["rate_clean"] if mark["method"] != "adi" else 0.1) - 1e-9, name
    assert lenet["marks"]["zhang-content"]["method"] == "zhang" and lenet["marks"]["adi-scratch"]["method"] == "adi"
    front = lenet["marks"]["frontier"]
    assert front["method"] == "frontier" and front["before"]["passed"] and front["before"]["null"] >= 0.5
    assert front["on_clean_model"]["success"] == 0.5 and not front["on_clean_model"]["passed"]  # the key's source
    assert front["config"]["success_before"] == 0.5
    for heading in ("Table 2", "Fig. 5/6", "Fig. 8/9", "Fig. 7", "Table 3", "Table 4", "null p0"):
        assert heading in md
    assert "nnmark bench ownership-watermark --quick" in md and out["date"] in md
    row = next(line for line in md.splitlines() if line.startswith("| direct | "))
    assert f"{direct['before']['success'] * 100:.0f} / " in row and "✓" in row
    assert (tmp_path / "coupled.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

