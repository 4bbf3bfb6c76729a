"""The page the watch serves at ``/``: the audit report of each target's latest round (``nnmark.audit.report``,
with its fleet table), then each target's history of state changes. Everything shown is escaped."""

from __future__ import annotations

import dataclasses
import datetime
import html

from nnmark.audit import report as audit_report
from nnmark.audit.run import KeyResult, TargetReport
from nnmark.watch.store import Event

_KEY_FIELDS = {f.name for f in dataclasses.fields(KeyResult)}


def target_report(saved: dict) -> TargetReport:
    """A ``TargetReport`` back from its ``to_dict()`` (the per-query digests and thumbnails are not kept)."""
    results = [KeyResult(**{k: v for k, v in key.items() if k in _KEY_FIELDS}) for key in saved.get("keys", [])]
    return TargetReport(saved["target"], saved.get("info", {}), results, saved.get("error", ""),
                        saved.get("error_type", ""))


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def history_html(events: list[Event]) -> str:
    """Per target, its state changes, newest first."""
    esc = html.escape
    parts = ['<section class="history"><h2>History of state changes</h2>']
    for target in sorted({e.target for e in events}):
        rows = "".join(f"<tr><td>{esc(_when(e.time))}</td><td>{esc(e.key)}</td><td>{esc(e.old or 'new')}</td>"
                       f"<td>{esc(e.new)}</td><td>{esc(e.note)}</td></tr>"
                       for e in reversed([e for e in events if e.target == target]))
        parts.append(f'<h3>{esc(target)}</h3><table class="events"><tr><th>time</th><th>key</th><th>from</th>'
                     f"<th>to</th><th>note</th></tr>{rows}</table>")
    if not events:
        parts.append("<p>No state change yet.</p>")
    return "".join(parts) + "</section>"


def page(saved_reports: list[dict], events: list[Event], meta: dict) -> str:
    """The whole page (one self-contained HTML document)."""
    document = audit_report.to_html([target_report(r) for r in saved_reports], meta)
    return document.replace("</body>", history_html(events) + "</body>", 1)
