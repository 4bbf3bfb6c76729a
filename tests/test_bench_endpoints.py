import json

from click.testing import CliRunner

from nnmark.bench import endpoints
from nnmark.cli import main


def test_bench_endpoints_quick_measures_nnmark_serve_beside_local(tmp_path, monkeypatch):
    monkeypatch.setattr(endpoints, "VENVS", tmp_path / "no-venvs")  # nnmark serve only: no server subprocesses
    r = CliRunner().invoke(main, ["bench", "endpoints", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "endpoints.json").read_text())["rows"]
    measured = [(row["target"], row["transport"], row["n"]) for row in rows if row["ratio"] is not None]
    assert measured == [(target, transport, n) for n in (20, 256) for target, transport in
                        [("local", "TorchOracle"), ("nnmark serve", "REST JSON"), ("nnmark serve", "REST binary"),
                         ("nnmark serve", "gRPC")]]
    assert all(row["ratio"] > 0 and row["median_s"] > 0 for row in rows if row["ratio"] is not None)
    served = [row for row in rows if row["target"] == "nnmark serve"]
    assert all(row["bytes"] > 0 for row in served)
    json_bytes = {row["n"]: row["bytes"] for row in served if row["transport"] == "REST JSON"}
    binary_bytes = {row["n"]: row["bytes"] for row in served if row["transport"] == "REST binary"}
    assert all(binary_bytes[n] < json_bytes[n] for n in (20, 256))
    assert {row["target"] for row in rows if row["ratio"] is None} == {"KServe", "MLServer"}
    md = (tmp_path / "endpoints.md").read_text()
    assert "| nnmark serve | gRPC | 256 |" in md and endpoints.NOT_MEASURED in md


def test_a_server_that_does_not_start_is_one_line_exit_2(tmp_path, monkeypatch):
    python = tmp_path / "venvs" / "kserve" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'no kserve here' >&2\nexit 3\n")
    python.chmod(0o755)
    (python.parents[1] / ".installed").touch()
    monkeypatch.setattr(endpoints, "VENVS", tmp_path / "venvs")  # KServe "installed" but broken; MLServer absent
    r = CliRunner().invoke(main, ["bench", "endpoints", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "kserve did not start: server exited with 3" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "endpoints.md").exists()
