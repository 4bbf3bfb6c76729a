"""``nnmark bench audit --quick`` in miniature: the rows it measures and the tables it writes."""

import json

from click.testing import CliRunner

from nnmark.bench import audit as bench
from nnmark.cli import main


def test_bench_audit_quick_measures_sequential_against_whole_key(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "QUICK", {**bench.QUICK, "orders": 2, "independents": 2, "prune": ()})
    cli = CliRunner().invoke(main, ["bench", "audit", "--quick", "--out-dir", str(tmp_path)])
    assert cli.exit_code == 0, cli.output
    result = json.loads((tmp_path / "audit.json").read_text())
    assert result["command"] == "nnmark bench audit --quick"
    rows = {(r["suspect"], r["method"]): r for r in result["rows"]}
    assert {m for _, m in rows} == {"dbi", "pairs", "metafinger", "ipguard", "innformant"}
    for method in ("dbi", "pairs", "metafinger", "ipguard"):
        untouched = rows["untouched", method]
        assert untouched["full_passed"] and all(untouched["passed"]), method
    stolen = rows["FTAL (stolen)", "metafinger"]
    assert stolen["full_passed"] and all(stolen["passed"]) and max(stolen["queries"]) < stolen["full_queries"]
    assert not any(rows["independent 0", "metafinger"]["passed"])
    assert rows["float64 environment", "innformant"]["decisions"] == ["float64", "float64"]
    text = (tmp_path / "audit.md").read_text()
    assert "| method | suspect | whole-key decision |" in text and "| metafinger | 0/4 | 0/2 | 0.001 |" in text
