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


def test_bench_cli_quick_times_every_command_beside_import_torch(tmp_path):
    r = CliRunner().invoke(main, ["bench", "cli", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "cli.json").read_text())
    assert [row["name"] for row in result["rows"]][:3] == ["python -c 'import torch'", "nnmark --help",
                                                           "nnmark --version"]
    assert all(row["median_s"] > 0 for row in result["rows"])
    assert result["help_ratio"] > 0 and result["verify_ratio"] > 0
    assert "| `nnmark --help` |" in (tmp_path / "cli.md").read_text()
