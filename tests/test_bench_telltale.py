import json

from click.testing import CliRunner

from nnmark.bench.innformant import ENVIRONMENTS
from nnmark.cli import main


def test_bench_telltale_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "telltale", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "innformant.json").read_text())
    assert result["command"] == "nnmark bench telltale --quick"
    (case,) = result["cases"]
    assert case["arch"] == "lenet5" and case["n"] == 8
    assert case["successes"] >= 2 and case["success_rate"] == case["successes"] / 8  # ~60-75% here
    assert sum(case["singles_out"].values()) == case["successes"]
    assert len(case["local_steps"]) == len(case["remote_steps"]) == len(case["psnr_values"]) == case["successes"]
    assert case["psnr"]["min"] <= case["psnr"]["median"] <= case["psnr"]["max"]
    # every environment served answers as itself, or as a group the key cannot split, never as another one
    for env, answer in case["confusion"].items():
        assert env in answer["decision"].split(" or "), (env, answer)
        assert answer["exit_code"] == (0 if "float32" in answer["decision"].split(" or ") else 1)
    assert set(case["confusion"]) == set(ENVIRONMENTS)
    t = case["transparency"]
    assert t["refined"]["median"] >= t["ours"]["median"] and t["refined_improved"] >= 1
    assert t["limit_same_images"]["median"] > t["ours"]["median"]  # the DeepFool limit sits above our samples
    assert t["deepfool_smaller_than_sign"] == 1.0
    assert t["line_success_rate"] > 0.4
    cost = case["cost"]
    assert cost["batched"]["queries"] > 0 and cost["time_ratio"] > 0
    md = (tmp_path / "innformant.md").read_text()
    for heading in ("Table 2", "Table 3", "Figure 5", "Cost", "Confusion", "Transparency"):
        assert f"## {heading}" in md
    assert "nnmark bench telltale --quick" in md
    assert (tmp_path / "innformant.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
