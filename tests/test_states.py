"""States a monitor acts on: a verdict gives ok or failed; an outage, a slow or broken server, an endpoint whose
answers move and a misread endpoint each have their own state, decided from the error's type, never failed."""

import asyncio
import dataclasses
import contextlib
import json
import socket

import pytest
from fastapi.responses import JSONResponse
from test_grpc import fake_grpc_endpoint
from test_remote import fake_endpoint, uniform_answer

from nnmark import errors, keys
from nnmark.attacks import quantize_dynamic_torch, quantize_int8
from nnmark.audit import report, states
from nnmark.audit import run as audit
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import TorchOracle, oip
from nnmark.serve import create_app, serving

SHAPE = (1, 28, 28)
SECRET = b"states secret"
FAST = {"timeout": 0.5, "retries": 0}
"""An endpoint spec that gives up at once: the tests wait for nothing."""
ANSWERS = {"timeout": 30.0}
"""For an endpoint that answers: time enough on a loaded machine (a request past 0.5 s read as an outage once); it
costs nothing when the server answers at once."""


@pytest.fixture(scope="module")
def key(lenet, mnist, tmp_path_factory):
    """A signed DBI key of the LeNet-5 with preflight canaries, loaded as the audit loads it."""
    oracle = TorchOracle(lenet, SHAPE)
    made = canary.attach(dbi.create(oracle, mnist.train.x[:60], itr=200, eps=1e-3), oracle, mnist.test.x[:500],
                         mnist.test.y[:500])
    path = tmp_path_factory.mktemp("states") / "dbi.key"
    keys.save(made, path, secret=SECRET)
    return audit.load_key(path, secret=SECRET)


def _audit(url: str, key, **spec) -> audit.TargetReport:
    target = audit.endpoint_target(url, **{**FAST, **spec})
    return audit.audit_target(target, [key], audit.Settings(secret=SECRET))


@contextlib.contextmanager
def closed_port():
    """A local port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _served(model) -> contextlib.AbstractContextManager[str]:
    return serving(create_app(TorchOracle(model, SHAPE), model_name="model"))


def _only(result: audit.TargetReport) -> tuple[str, audit.KeyResult]:
    (r,) = result.keys
    assert states.states_of(result) == {r.key: states.state(r)}
    return states.state(r), r


# --- each state from a real endpoint ------------------------------------------------------------------------------


def test_an_intact_endpoint_is_ok_and_a_tampered_one_failed(lenet, key):
    with _served(lenet) as intact, _served(quantize_int8(lenet)) as tampered:
        ok, failed = _audit(intact, key, **ANSWERS), _audit(tampered, key, **ANSWERS)
    assert _only(ok)[0] == states.OK and ok.keys[0].decision == "intact"
    assert _only(failed)[0] == states.FAILED and failed.keys[0].decision == "tampered"
    document = json.loads(report.to_json([ok, failed], {}))
    assert [t["states"] for t in document["targets"]] == [{key.path: "ok"}, {key.path: "failed"}]
    assert [t["keys"][0]["state"] for t in document["targets"]] == ["ok", "failed"]


def test_an_unstarted_or_killed_endpoint_is_unreachable_never_failed(lenet, key):
    with closed_port() as port:
        unstarted = _audit(f"http://127.0.0.1:{port}", key)
    with _served(lenet) as url:
        pass
    killed = _audit(url, key)
    for result in (unstarted, killed):
        state, r = _only(result)
        assert state == states.UNREACHABLE and result.error_type == r.error_type == "EndpointUnreachable"
        assert result.status() == 2 and r.passed is None and "failed 1 times" in result.error


@pytest.mark.parametrize("status, retried", [(500, False), (503, True)])
def test_a_server_error_is_unreachable(key, status, retried):
    async def broken(req, calls):
        return JSONResponse({"error": "model crashed"}, status_code=status)

    app = fake_endpoint(broken)
    with serving(app) as url:
        state, r = _only(_audit(url, key, retries=1, backoff=0.0))
    assert state == states.UNREACHABLE and r.error_type == "EndpointUnreachable"
    assert f"HTTP {status}" in r.note and "model crashed" in r.note
    assert app.state.calls == (2 if retried else 1)  # a 500 is not retried, a 503 is, and both are an outage


def test_a_grpc_server_that_fails_or_is_gone_is_unreachable(key):
    def crash(request):
        raise RuntimeError("model crashed")

    server, url = fake_grpc_endpoint(crash)
    try:
        failing = _audit(url, key)
    finally:
        server.stop(None).wait()
    gone = _audit(url, key)
    state, r = _only(failing)
    assert state == states.UNREACHABLE and "gRPC UNKNOWN" in r.note
    assert _only(gone)[0] == states.UNREACHABLE and "gRPC UNAVAILABLE" in gone.error


def test_a_slow_endpoint_is_unreachable(key):
    async def slow(req, calls):
        await asyncio.sleep(2.0)
        return JSONResponse(uniform_answer(req))

    with serving(fake_endpoint(slow)) as url:
        state, r = _only(_audit(url, key, timeout=0.3))
    assert state == states.UNREACHABLE and "no answer within 0.3 s" in r.note


def test_a_dynamic_int8_replica_is_inconsistent_with_its_spread(lenet, key):
    with _served(quantize_dynamic_torch(lenet)) as url:
        state, r = _only(_audit(url, key, **ANSWERS))
    assert state == states.INCONSISTENT and r.error_type == "EndpointInconsistent"
    assert r.spread is not None and r.spread > 1e-5 and f"max change {r.spread:.3g}" in r.note
    document = json.loads(report.to_json([audit.TargetReport("replica", {}, [r])], {}))
    assert document["targets"][0]["keys"][0]["spread"] == pytest.approx(r.spread)
    assert f"spread | {r.spread:.3g}" in report.to_markdown([audit.TargetReport("replica", {}, [r])], {})


def test_a_misread_endpoint_is_misconfigured(lenet, key):
    misread = TorchOracle(lenet, SHAPE).seen_through(canary.misreadings(1)["normalised_05"].transform)
    with serving(create_app(misread, model_name="model")) as url:
        state, r = _only(_audit(url, key, **ANSWERS))
    assert state == states.MISCONFIGURED and r.error_type == "EndpointMismatch"
    assert "endpoint answers as the keyed model does when" in r.note


def test_a_key_that_does_not_fit_or_load_is_an_error(lenet, key, tmp_path):
    (tmp_path / "broken.key").write_bytes(b"not a key")
    broken = audit.load_key(tmp_path / "broken.key", secret=SECRET)
    with _served(lenet) as url:
        result = audit.audit_target(audit.endpoint_target(url, **FAST), [broken, key], audit.Settings(secret=SECRET))
    assert [states.state(r) for r in result.keys] == [states.ERROR, states.OK]
    assert result.keys[0].error_type == "KeyFileError"


# --- the rules, one branch at a time ---------------------------------------------------------------------------


def _result(passed, error_type=""):
    return audit.KeyResult("k.key", "", "dbi", "integrity", "x", passed, 10, "change rate", 0.0, error_type=error_type)


def test_a_verdict_decides_ok_or_failed_whatever_the_error_type_says():
    assert states.state(_result(True)) == "ok" and states.state(_result(False)) == "failed"
    assert states.state(_result(True, "EndpointUnreachable")) == "ok"
    assert states.state(_result(False, "EndpointInconsistent")) == "failed"


@pytest.mark.parametrize("error_type, expected", [
    ("EndpointUnreachable", "unreachable"), ("EndpointInconsistent", "inconsistent"),
    ("EndpointMismatch", "misconfigured"), ("EndpointError", "error"), ("NnmarkError", "error"),
    ("KeyFileError", "error"), ("QueryBudgetExceeded", "error"), ("", "error"), ("ValueError", "error"),
    ("printable", "error"), ("NoSuchError", "error"),
])
def test_an_error_state_comes_from_the_error_type(error_type, expected):
    assert states.state(_result(None, error_type)) == expected


def test_error_types_are_named_by_their_nearest_nnmark_type():
    assert states.error_type(errors.EndpointUnreachable("x")) == "EndpointUnreachable"
    assert states.error_type(oip.MalformedMessage("x")) == "EndpointError"  # defined in oracles.oip
    assert states.error_type(audit.AuditError("x")) == "NnmarkError"
    assert states.error_type(ValueError("x")) == "ValueError"
    assert states.error_type(errors.ArgumentError("x")) == "ArgumentError"  # also a ValueError

    class Subclass(errors.EndpointInconsistent):
        pass

    assert states.error_state(states.error_type(Subclass("x", spread=0.1))) == "inconsistent"


def test_the_worst_state_orders_targets_and_none_is_an_error():
    assert states.worst(["ok", "unreachable", "failed", "error"]) == "failed"
    assert states.worst(["ok", "error", "unreachable"]) == "unreachable"
    assert states.worst(["misconfigured", "inconsistent"]) == "inconsistent"
    assert states.worst(["ok", "error"]) == "error" and states.worst(["ok"]) == "ok"
    assert states.worst([]) == "error"
    assert set(states.SEVERITY) == set(states.STATES) and len(states.STATES) == 6


def test_an_inconsistent_error_keeps_its_spread_through_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(errors.EndpointInconsistent("moved", spread=0.25)))
    assert e.spread == 0.25 and str(e) == "moved"


def test_a_target_that_does_not_open_gives_each_key_its_error(key, tmp_path):
    (tmp_path / "broken.key").write_bytes(b"not a key")
    broken = audit.load_key(tmp_path / "broken.key", secret=SECRET)
    with closed_port() as port:
        result = audit.audit_target(audit.endpoint_target(f"http://127.0.0.1:{port}", **FAST), [key, broken],
                                    audit.Settings(secret=SECRET))
    assert [states.state(r) for r in result.keys] == ["unreachable", "error"]
    assert result.keys[1].error_type == "KeyFileError" and result.problem() == result.error


def test_the_fleet_table_puts_the_worst_targets_first_and_tells_keys_of_one_name_apart():
    def target(name, *results):
        return audit.TargetReport(name, {}, [_keyed(path, passed, kind) for path, passed, kind in results])

    def _keyed(path, passed, kind):
        return dataclasses.replace(_result(passed, kind), key=path)

    reports = [target("fine", ("x/dbi.key", True, ""), ("z/other.key", True, "")),
               target("down", ("x/dbi.key", None, "EndpointUnreachable")),
               target("tampered", ("x/dbi.key", True, ""), ("y/dbi.key", False, "")),
               target("moving", ("z/other.key", None, "EndpointInconsistent")),
               target("empty"),
               target("misread", ("y/dbi.key", None, "EndpointMismatch"))]
    assert report.key_labels(reports) == {"x/dbi.key": "x/dbi.key", "z/other.key": "other.key",
                                          "y/dbi.key": "y/dbi.key"}
    assert [r.target for _, r, _ in report.fleet_rows(reports)] == ["tampered", "moving", "misread", "down", "empty",
                                                                     "fine"]
    table = report.to_markdown(reports, {}).split("## Fleet")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| target | x/dbi.key | other.key | y/dbi.key |"
    assert table[2:] == ["| tampered | ok | - | failed |", "| moving | - | inconsistent | - |",
                         "| misread | - | - | misconfigured |", "| down | unreachable | - | - |",
                         "| empty | - | - | - |", "| fine | ok | ok | - |"]
    page = report.to_html(reports, {})
    assert '<tr><th><a href="#target-2">tampered</a></th><td class="state state-ok">ok</td>' \
           '<td class="state state-none">-</td><td class="state state-failed">failed</td></tr>' in page
