"""State changes per target x key, and the Alertmanager-format webhook that carries them.

A change in either direction is an event, except that ``unreachable`` is announced only once it was observed
``unreachable_after`` rounds in a row (a short outage is no event; the other states are announced at once). The
first state of a target x key is an event only when it is not ``ok``.

The webhook body follows Alertmanager's webhook format (version "4"): the state left, when it was not ``ok``, as
a resolved alert, the state entered, when it is not ``ok``, as a firing one; status "firing" when any alert fires.
A POST is tried ``retries + 1`` times with ``timeout`` seconds each; a webhook that keeps failing is reported
and dropped, never a reason to stop the watch.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Callable

import httpx

from nnmark.errors import ArgumentError
from nnmark.watch.store import Event, KeyState

OK, UNREACHABLE = "ok", "unreachable"
DEFAULT_UNREACHABLE_AFTER = 3
ALERT_NAME = "NnmarkKeyState"
RECEIVER = "nnmark-watch"
NEVER = "0001-01-01T00:00:00Z"
"""Alertmanager's zero time: a firing alert's endsAt."""


def step(before: KeyState, observed: str, unreachable_after: int) -> tuple[KeyState, str | None]:
    """The standing after a round observed ``observed``, and the state it announces (None: no event)."""
    streak = before.streak + 1 if observed == UNREACHABLE else 0
    announce = observed
    if observed == UNREACHABLE and streak < unreachable_after:
        announce = before.announced
    quiet = announce == before.announced or (before.announced is None and announce == OK)
    return KeyState(announce, observed, streak), None if quiet else announce


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _alert(event: Event, state: str, firing: bool, external_url: str) -> dict:
    labels = {"alertname": ALERT_NAME, "target": event.target, "key": event.key, "state": state}
    change = f"{event.old or 'new'} -> {event.new}"
    return {"status": "firing" if firing else "resolved", "labels": labels,
            "annotations": {"summary": f"{event.target} {event.key}: {change}", "description": event.note},
            "startsAt": _rfc3339(event.time), "endsAt": NEVER if firing else _rfc3339(event.time),
            "generatorURL": external_url, "fingerprint": ""}


def alertmanager_body(event: Event, external_url: str = "") -> dict:
    """The webhook body of one event (module docstring)."""
    alerts = []
    if event.old not in (None, OK):
        alerts.append(_alert(event, event.old, False, external_url))
    if event.new != OK:
        alerts.append(_alert(event, event.new, True, external_url))
    firing = any(a["status"] == "firing" for a in alerts)
    common = {"alertname": ALERT_NAME, "target": event.target, "key": event.key}
    return {"version": "4", "groupKey": f"{{}}:{{target={event.target!r}, key={event.key!r}}}", "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved", "receiver": RECEIVER, "groupLabels": common,
            "commonLabels": common, "commonAnnotations": {}, "externalURL": external_url, "alerts": alerts}


@dataclass(frozen=True)
class Webhook:
    """Where events are POSTed, how long each try may take and how many retries follow a failure."""

    url: str
    timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.5

    def __post_init__(self) -> None:
        if self.retries < 0 or not self.timeout > 0 or self.backoff < 0:
            raise ArgumentError(f"webhook needs retries >= 0, timeout > 0 and backoff >= 0, got {self.retries}, "
                                f"{self.timeout}, {self.backoff}")

    @property
    def shown_url(self) -> str:
        """The URL without its user info (a password stays out of messages)."""
        return str(httpx.URL(self.url).copy_with(username=None, password=None))

    def send(self, event: Event, external_url: str = "", *, sleep: Callable[[float], None] = time.sleep) -> str:
        """POST the event; '' once a try got a 2xx answer, else why the last try failed."""
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                sleep(self.backoff * 2 ** (attempt - 1))
            try:
                answer = httpx.post(self.url, json=alertmanager_body(event, external_url), timeout=self.timeout)
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}"
                continue
            if answer.is_success:
                return ""
            why = f"HTTP {answer.status_code}"
        return why
