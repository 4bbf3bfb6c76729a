import json

from click.testing import CliRunner

from nnmark.cli import main


def test_bench_dbi_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "dbi", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "dbi.json").read_text())
    (row,) = result["seeds"]
    assert set(row["change_rate"]) == {"DBI", "non-fragile", "random"}
    assert len(row["change_rate"]["DBI"]) == 6
    assert all(0 <= v <= 1 for rates in row["change_rate"].values() for v in rates.values())
    assert [t["itr"] for t in row["trace"]] == [100, 200]
    assert result["timing"]["ratio"] > 1
    md = (tmp_path / "dbi.md").read_text()
    assert "| DBI |" in md and "Generation time" in md and "False alarms" in md


def test_bench_integrity_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "integrity", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "integrity.json").read_text())
    (row,) = result["seeds"]
    assert set(row["detection"]["backdoor"]) == {"Validset", "DBI", "Pairs margin=0", "Pairs margin=0.001"}
    assert row["attack_info"]["backdoor"]["poison_success"] == 1.0
    assert row["attack_info"]["finetune lr=1e-10"]["changed_fraction"] < row["attack_info"]["finetune lr=0.001"][
        "changed_fraction"]
    for rates in row["detection"].values():
        for r_ in rates.values():
            assert 0 <= r_["single"] <= r_["pair"] <= 1
    assert len(result["timing"]) == 2 and all(t["plain_s"] > 0 for t in result["timing"])
    md = (tmp_path / "integrity.md").read_text()
    assert "Table 2 layout" in md and "False alarms" in md and "Table 5 layout" in md
