"""``nnmark license`` and ``nnmark trace``: copies and a signed registry written whole, exit codes 0 / 1 / 2, a
labels-only endpoint, a tampered registry refused, and the audit naming the licensee."""

import json

import pytest
from click.testing import CliRunner

from nnmark import models, serve
from nnmark.cli import main
from nnmark.oracles import TorchOracle

SMALL = ["--families", "40", "--epochs", "3", "--max-drop", "5"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "secret"
    path.write_bytes(b"correct horse battery staple\n")
    return path


@pytest.fixture(scope="module")
def licensed(lenet_file, secret, tmp_path_factory):
    out = tmp_path_factory.mktemp("lic") / "licensed"
    r = _run("license", "--model", lenet_file, "--licensees", "alice,bob,carol", "--out", out, "--secret-file", secret,
             *SMALL, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_license_writes_one_copy_per_licensee_and_a_signed_registry(licensed, lenet_file):
    out, summary = licensed
    assert sorted(p.name for p in out.iterdir()) == ["alice.safetensors", "bob.safetensors", "carol.safetensors",
                                                      "registry.key"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert summary["signed"] and summary["queries"] == 160 and [r["licensee"] for r in summary["licensees"]] == [
        "alice", "bob", "carol"]
    source = models.load(lenet_file)[0]
    for row in summary["licensees"]:
        copy, config = models.load(out / row["file"])
        assert config.arch == "lenet5" and models.digest(copy) == row["digest"] != models.digest(source)
        assert abs(row["accuracy_drop"]) <= 0.05 and config.accuracy == row["accuracy"]


def test_trace_exit_codes_name_the_licensee_or_none(licensed, lenet_file, secret):
    out, _ = licensed
    r = _run("trace", out / "registry.key", "--model", out / "bob.safetensors", "--secret-file", secret, "--json")
    assert r.exit_code == 0, r.output
    verdict = json.loads(r.stdout)
    assert verdict["decision"] == "traced to bob" and verdict["identical_to_copy_of"] == "bob"
    assert [a["licensee"] for a in verdict["details"]["accused"]] == ["bob"] and verdict["queries"] == 160
    r = _run("trace", out / "registry.key", "--model", lenet_file, "--secret-file", secret)
    assert r.exit_code == 1 and r.stdout.startswith("UNMARKED SOURCE"), r.output
    r = _run("trace", out / "registry.key", "--model", out / "carol.safetensors", "--secret-file", secret)
    assert r.exit_code == 0 and r.stdout.startswith("TRACED TO carol (p = "), r.output


def test_trace_through_a_labels_only_endpoint(licensed, secret):
    out, _ = licensed
    copy, config = models.load(out / "alice.safetensors")
    app = serve.create_app(TorchOracle(copy.eval(), config.input_shape), model_name="model", output="labels")
    with serve.serving(app) as url:
        r = _run("trace", out / "registry.key", "--endpoint", url, "--output-kind", "labels", "--secret-file", secret,
                 "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["decision"] == "traced to alice"


def test_a_tampered_or_wrongly_keyed_registry_is_refused(licensed, secret, tmp_path):
    out, _ = licensed
    data = bytearray((out / "registry.key").read_bytes())
    data[-5] ^= 1  # a code or query byte
    bad = tmp_path / "bad.key"
    bad.write_bytes(bytes(data))
    for registry, secret_file in [(bad, secret), (out / "registry.key", tmp_path / "other")]:
        (tmp_path / "other").write_text("another secret")
        r = _run("trace", registry, "--model", out / "bob.safetensors", "--secret-file", secret_file, "--json")
        assert r.exit_code == 2 and "signature does not match" in r.stderr and "Traceback" not in r.output
        assert len(r.stderr.strip().splitlines()) == 1 and json.loads(r.stdout)["type"] == "SignatureError"


def test_license_refuses_bad_requests_before_any_work(lenet_file, secret, tmp_path, licensed):
    out, _ = licensed
    cases = [
        (["--licensees", "a,b", "--count", "2", "--out", tmp_path / "x", "--secret-file", secret], "exactly one"),
        (["--licensees", "a,a", "--out", tmp_path / "x", "--secret-file", secret], "distinct"),
        (["--count", "2", "--out", out, "--secret-file", secret], "exists"),
        (["--count", "2", "--out", tmp_path / "x"], "need a secret"),
        (["--count", "2", "--out", tmp_path / "x", "--secret-file", secret, "--families", "46"], "families"),
        (["--count", "2", "--out", tmp_path / "x", "--secret-file", secret, "--feature-weight", "-1"],
         "--feature-weight"),
        (["--count", "2", "--out", tmp_path / "x", "--secret-file", secret, "--device", "cuda:7"], "--device"),
        (["--count", "2", "--out", tmp_path / "x", "--secret-file", secret, "--micro-batch", "0"], "--micro-batch"),
    ]
    for args, message in cases:
        r = _run("license", "--model", lenet_file, *args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.output)
    assert not (tmp_path / "x").exists()


def test_license_fine_tunes_the_copies_in_micro_batches(lenet_file, secret, tmp_path, training_passes):
    seen, r = training_passes(lambda: _run(
        "license", "--model", lenet_file, "--licensees", "alice", "--out", tmp_path / "x", "--secret-file", secret,
        "--epochs", "1", "--clean", "500", "--max-drop", "100", "--micro-batch", "7"))
    assert r.exit_code == 0, r.output
    assert max(seen) == 7  # every training pass of the fine-tune (the default batch is larger)


def test_trace_refuses_a_key_that_is_not_a_registry(lenet_file, secret, tmp_path):
    key = tmp_path / "natural.key"
    made = _run("mark", "natural", "--model", lenet_file, "--n", 20, "--out", key, "--secret-file", secret)
    assert made.exit_code == 0, made.output
    r = _run("trace", key, "--model", lenet_file, "--secret-file", secret)
    assert r.exit_code == 2 and "licence registry" in r.stderr


def test_audit_report_names_the_licensee(licensed, secret, tmp_path):
    out, _ = licensed
    report = tmp_path / "audit.md"
    r = _run("audit", out / "registry.key", "--model", out / "carol.safetensors", "--secret-file", secret,
             "--report", report)
    assert r.exit_code == 0, r.output
    assert "traced to carol" in report.read_text()


def test_bench_trace_quick_writes_its_tables(tmp_path):
    r = CliRunner().invoke(main, ["bench", "trace", "--quick", "--out-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "trace.json").read_text())
    (run,) = result["runs"]
    assert set(run["schemes"]) == {"code", "onehot"}
    for scheme in run["schemes"].values():
        assert len(scheme["untouched"]) == 4 and len(scheme["attacked"]) == 5 and len(scheme["collusion"]) == 4
        assert not any(t["false"] for t in scheme["innocent"].values())  # the independent models and the source
        assert scheme["innocent"]["the unmarked source"]["decision"] == "unmarked source"
    assert result["projection"]["a single copy"]["1000"]["level"] == pytest.approx(1e-7)
    text = (tmp_path / "trace.md").read_text()
    assert "## Scheme `code` (default)" in text and "## Projection on paper" in text and "queries per trace" in text
