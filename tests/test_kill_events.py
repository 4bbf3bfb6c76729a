"""The watch's change and alert decisions (``watch.events``): which observed state is an event, and the
Alertmanager-format webhook that carries it (fast: no network, mutation-tested). What the module docstring promises:
a change in either direction is an event, except that ``unreachable`` is announced only once it was observed
``unreachable_after`` rounds in a row; a first state is an event only when it is not ``ok``; the state left (when
not ``ok``) is a resolved alert, the state entered (when not ``ok``) a firing one, status "firing" when any fires;
a POST is tried ``retries + 1`` times and a failing webhook is reported, never raised."""

import httpx
import pytest

from nnmark.errors import ArgumentError
from nnmark.watch import events
from nnmark.watch.events import Event
from nnmark.watch.store import KeyState


# --- step -------------------------------------------------------------------------------------------------------


def test_a_first_state_is_an_event_unless_it_is_ok():
    assert events.step(KeyState(), "ok", 3) == (KeyState("ok", "ok", 0), None)
    assert events.step(KeyState(), "failed", 3) == (KeyState("failed", "failed", 0), "failed")
    assert events.step(KeyState(), "unreachable", 3) == (KeyState(None, "unreachable", 1), None)


def test_unreachable_is_announced_exactly_at_the_nth_round_in_a_row():
    s = KeyState("ok", "ok", 0)
    for n in (1, 2):
        s, said = events.step(s, "unreachable", 3)
        assert (s, said) == (KeyState("ok", "unreachable", n), None)
    s, said = events.step(s, "unreachable", 3)
    assert (s, said) == (KeyState("unreachable", "unreachable", 3), "unreachable")
    s, said = events.step(s, "unreachable", 3)
    assert (s, said) == (KeyState("unreachable", "unreachable", 4), None)
    assert events.step(s, "ok", 3) == (KeyState("ok", "ok", 0), "ok")
    assert events.step(KeyState("ok", "ok", 0), "unreachable", 1) == (KeyState("unreachable", "unreachable", 1),
                                                                      "unreachable")
    assert events.step(KeyState(None, "unreachable", 1), "unreachable", 2) == (
        KeyState("unreachable", "unreachable", 2), "unreachable")


def test_a_short_outage_is_no_event_and_its_streak_starts_again():
    s = KeyState("failed", "failed", 0)
    for observed, streak in (("unreachable", 1), ("unreachable", 2), ("failed", 0), ("unreachable", 1)):
        s, said = events.step(s, observed, 3)
        assert said is None and s == KeyState("failed", observed, streak)


@pytest.mark.parametrize("before, observed", [("ok", "failed"), ("failed", "ok"), ("failed", "misconfigured"),
                                              ("unreachable", "ok"), ("unreachable", "failed"), ("ok", "error")])
def test_any_other_change_is_announced_at_once(before, observed):
    assert events.step(KeyState(before, before, 0), observed, 3) == (KeyState(observed, observed, 0), observed)
    assert events.step(KeyState(observed, observed, 0), observed, 3) == (KeyState(observed, observed, 0), None)


# --- the webhook body -------------------------------------------------------------------------------------------


def _alert(state, status, starts, ends, summary, note=""):
    return {"status": status, "labels": {"alertname": "NnmarkKeyState", "target": "r1", "key": "dbi.key",
                                         "state": state},
            "annotations": {"summary": f"r1 dbi.key: {summary}", "description": note}, "startsAt": starts,
            "endsAt": ends, "generatorURL": "http://watch", "fingerprint": ""}


def _body(status, alerts):
    common = {"alertname": "NnmarkKeyState", "target": "r1", "key": "dbi.key"}
    return {"version": "4", "groupKey": "{}:{target='r1', key='dbi.key'}", "truncatedAlerts": 0, "status": status,
            "receiver": "nnmark-watch", "groupLabels": common, "commonLabels": common, "commonAnnotations": {},
            "externalURL": "http://watch", "alerts": alerts}


T, AT = 1_700_000_000.25, "2023-11-14T22:13:20.250Z"


def test_entering_a_state_fires_it_and_leaving_it_resolves_it():
    assert events.alertmanager_body(Event(T, "r1", "dbi.key", "ok", "failed", "tampered"), "http://watch") == _body(
        "firing", [_alert("failed", "firing", AT, events.NEVER, "ok -> failed", "tampered")])
    assert events.alertmanager_body(Event(T, "r1", "dbi.key", None, "failed"), "http://watch") == _body(
        "firing", [_alert("failed", "firing", AT, "0001-01-01T00:00:00Z", "new -> failed")])
    assert events.alertmanager_body(Event(T, "r1", "dbi.key", "failed", "ok"), "http://watch") == _body(
        "resolved", [_alert("failed", "resolved", AT, AT, "failed -> ok")])
    assert events.alertmanager_body(Event(T, "r1", "dbi.key", "unreachable", "failed"), "http://watch") == _body(
        "firing", [_alert("unreachable", "resolved", AT, AT, "unreachable -> failed"),
                   _alert("failed", "firing", AT, events.NEVER, "unreachable -> failed")])


def test_a_first_ok_and_an_ok_left_carry_no_alert():
    body = events.alertmanager_body(Event(T, "r1", "dbi.key", None, "ok"), "http://watch")
    assert body == _body("resolved", [])
    assert events.alertmanager_body(Event(0.0, "r1", "k", "ok", "ok"))["externalURL"] == ""


# --- the POST ---------------------------------------------------------------------------------------------------


class Post:
    """Stands in for ``httpx.post``: answers each try with the next of ``answers`` (a status code or an error)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, url, *, json, timeout):
        self.calls.append((url, json, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)


EVENT = Event(T, "r1", "dbi.key", "ok", "failed")


@pytest.mark.parametrize("answers, why, tries", [
    ((200,), "", 1), ((204,), "", 1), ((500, 202), "", 2), ((500, 404, 200), "", 3),
    ((500, 503, 502), "HTTP 502", 3), ((httpx.ConnectError("refused"),) * 3, "ConnectError: refused", 3),
    ((301, 500, httpx.ReadTimeout("slow")), "ReadTimeout: slow", 3),
    ((httpx.ConnectError("x"), 418, 500), "HTTP 500", 3),
])
def test_a_post_is_tried_retries_plus_one_times_until_a_2xx(monkeypatch, answers, why, tries):
    post = Post(*answers)
    monkeypatch.setattr(events.httpx, "post", post)
    slept = []
    hook = events.Webhook("http://hook", timeout=2.5, retries=2, backoff=0.5)
    assert hook.send(EVENT, "http://watch", sleep=slept.append) == why
    assert len(post.calls) == tries and slept == [0.5, 1.0][:tries - 1]
    assert all(c == ("http://hook", events.alertmanager_body(EVENT, "http://watch"), 2.5) for c in post.calls)


def test_no_retry_is_one_try(monkeypatch):
    post = Post(500)
    monkeypatch.setattr(events.httpx, "post", post)
    assert events.Webhook("http://hook", retries=0).send(EVENT, sleep=lambda s: None) == "HTTP 500"
    assert len(post.calls) == 1 and post.calls[0][2] == 5.0 and post.calls[0][1]["externalURL"] == ""


def test_the_default_webhook_retries_twice_with_a_doubling_backoff(monkeypatch):
    monkeypatch.setattr(events.httpx, "post", Post(500, 500, 500))
    slept = []
    assert events.Webhook("http://hook").send(EVENT, sleep=slept.append) == "HTTP 500" and slept == [0.5, 1.0]


def test_the_shown_url_leaves_out_the_password():
    hook = events.Webhook("http://alert:s3cret@127.0.0.1:9/hook?x=1")
    assert hook.shown_url == "http://127.0.0.1:9/hook?x=1"


@pytest.mark.parametrize("bad", [{"retries": -1}, {"timeout": 0.0}, {"backoff": -0.1}])
def test_a_webhook_that_could_not_post_is_refused(bad):
    """Retries < 0 would report success without a POST; a zero timeout or negative backoff is no try at all."""
    with pytest.raises(ArgumentError, match="retries >= 0, timeout > 0 and backoff >= 0"):
        events.Webhook("http://hook", **bad)
    assert events.Webhook("http://hook", retries=0, timeout=0.01, backoff=0.0).retries == 0
