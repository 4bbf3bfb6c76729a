"""`nnmark bench watch --quick`: the watch against nnmark serve replicas, its tables written."""

import json

import pytest

from click.testing import CliRunner

from nnmark.bench import watch as bench_watch
from nnmark.cli import main


def test_bench_watch_quick_measures_load_swap_outage_idle_and_exposure(tmp_path):
    r = CliRunner().invoke(main, ["bench", "watch", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    path = tmp_path / "watch.md"
    result = json.loads((tmp_path / "watch.json").read_text())
    text = path.read_text()
    for title in ("## Load", "## Swap to alert", "## Queries per target per day", "## Outage", "## Idle",
                  "## Key exposure"):
        assert title in text
    assert result["load"]["rounds"] >= bench_watch.QUICK["targets"] and result["load"]["queries_per_round"] > 0
    assert result["load"]["swap_to_alert_s"] is not None  # the swapped replica's alert arrived
    assert result["outage"]["failed_events"] == 0 and "unreachable" in result["outage"]["rounds_by_state"]
    first = result["exposure"][0]
    assert first["1"] == first["sample"] / first["n"] == pytest.approx(first["expected_1"])  # one round: k of n
    assert first["1"] < first["10"] <= first["100"] <= 1
