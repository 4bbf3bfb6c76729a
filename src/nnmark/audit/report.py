"""An audit's report: a fleet table, then per target its summary line and a section per key, as Markdown, JSON or
one HTML file.

The fleet table has one row per target and one column per key file, each cell the key's state on that target
(``nnmark.audit.states``: ok, failed, inconsistent, misconfigured, unreachable, error; coloured in HTML), the
targets that need a person first (by their worst state, ``states.SEVERITY``), so a tampered replica in a fleet is
the first row, not a section found by scrolling.

The summary line reads e.g. ``INTACT · MINE (metafinger p=3e-12) · environment float32 · 412 queries``:
integrity (INTACT, or TAMPERED with the methods that found it), ownership (MINE with the strongest evidence,
or NOT MINE), the environment each telltale key names, keys whose record disagrees with what the target
publishes, errors, "nothing was checked" when no key was asked, and the queries spent. The HTML file is
self-contained: inline CSS, and the flipped queries beside their sources as PNG ``data:`` URIs; a target
with an error (or nothing checked) is styled as an error, never as a pass.

Names and messages that come from outside (key file names, endpoint messages) are escaped in every text
output: control characters shown as escapes (``printable``), Markdown and HTML specials escaped in Markdown
(``markdown_text``), HTML-escaped in HTML; JSON escapes by itself.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import torch
from PIL import Image

from nnmark._io import atomic_write_bytes
from nnmark.audit import states
from nnmark.audit.run import (ERROR, INTEGRITY, NOTHING_CHECKED, OWNERSHIP, TELLTALE, AuditError, KeyResult,
                              TargetReport, problem)
from nnmark.errors import ArgumentError, NnmarkError, printable
from nnmark.marks.telltale.innformant import DIFFERENT_MODEL, UNKNOWN

THUMBNAIL_PX = 64
"""The side of a thumbnail in the HTML report (nearest-neighbour upscaling of the query)."""
SEPARATOR = " · "
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:72em;color:#222}
h1{font-size:1.4em}h2{font-size:1.2em;border-bottom:1px solid #ccc}h3{font-size:1.05em}
.summary{font-family:monospace;font-size:1.1em;padding:.4em .6em;background:#f4f4f4}
.pass{color:#176b2c}.fail{color:#a31515}.error{color:#fff;background:#a31515}.other{color:#666}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
figure{display:inline-block;margin:.3em;text-align:center}img{image-rendering:pixelated;border:1px solid #999}
.fleet td.state{font-weight:bold;text-align:center}.state-ok{background:#d4edda;color:#155724}
.state-failed{background:#a31515;color:#fff}.state-inconsistent{background:#ffd8a8;color:#7a3e00}
.state-misconfigured{background:#e2d4f0;color:#4a2372}.state-unreachable{background:#fff3bf;color:#6b5300}
.state-error{background:#f8d7da;color:#721c24}.state-none{color:#999}"""
NO_KEY = "-"
"""A fleet-table cell of a key the target is not asked."""


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]<>&|~#!])")


def markdown_text(text: str) -> str:
    """``printable(text)`` with Markdown and HTML specials backslash-escaped, so it renders as the text itself."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", printable(text))


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def summary_line(report: TargetReport) -> str:
    """The one-line summary of a target's audit (module docstring)."""
    if report.error:
        return f"ERROR: {report.error}"
    parts = []
    integrity = [r for r in report.keys if r.purpose == INTEGRITY and r.passed is not None]
    if integrity:
        failed = [r.method for r in integrity if not r.passed]
        parts.append(f"TAMPERED ({', '.join(failed)})" if failed else "INTACT")
    ownership = [r for r in report.keys if r.purpose == OWNERSHIP and r.passed is not None]
    mine = sorted((r for r in ownership if r.passed), key=lambda r: 1.0 if r.p_value is None else r.p_value)
    if mine:
        parts.append(f"MINE ({mine[0].method} p={_p(mine[0].p_value)})")
    elif ownership:
        parts.append("NOT MINE")
    parts += [r.decision if r.decision in (UNKNOWN, DIFFERENT_MODEL) else f"environment {r.decision}"
              for r in report.keys if r.purpose == TELLTALE and r.passed is not None]
    counts = {"disagree with what the target publishes": sum(bool(r.disagreements) for r in report.keys),
              "failed to run": sum(r.decision == ERROR for r in report.keys)}
    parts += [f"{count} key{'s' if count > 1 else ''} {label}" for label, count in counts.items() if count]
    if not any(r.passed is not None for r in report.keys):
        parts.insert(0, NOTHING_CHECKED.upper())
    parts.append(f"{report.queries} queries")
    return SEPARATOR.join(parts)


def key_labels(reports: list[TargetReport]) -> dict[str, str]:
    """The fleet table's columns: each key file (as the audit names it, in order of first appearance) -> its file
    name, or its whole path where two key files share a name."""
    paths = list(dict.fromkeys(r.key for report in reports for r in report.keys))
    names = [os.path.basename(path) or path for path in paths]
    return {path: name if names.count(name) == 1 else path for path, name in zip(paths, names)}


def fleet_rows(reports: list[TargetReport]) -> list[tuple[int, TargetReport, dict[str, str]]]:
    """(index in ``reports``, the report, its keys' states) per target, the worst first (``states.SEVERITY``; a
    target's own order among equals)."""
    rows = [(i, report, states.states_of(report)) for i, report in enumerate(reports)]
    return sorted(rows, key=lambda row: states.SEVERITY.index(states.worst(list(row[2].values()))))


def _fleet_markdown(reports: list[TargetReport]) -> list[str]:
    """The fleet table as Markdown lines."""
    md, labels = markdown_text, key_labels(reports)
    lines = ["## Fleet", "", "| target | " + " | ".join(md(label) for label in labels.values()) + " |",
             "| --- |" + " --- |" * len(labels)]
    for _, report, found in fleet_rows(reports):
        lines.append(f"| {md(report.target)} | " + " | ".join(found.get(path, NO_KEY) for path in labels) + " |")
    return lines + [""]


def _fleet_html(reports: list[TargetReport]) -> str:
    """The fleet table as HTML: each cell coloured by its state, each target linked to its section."""
    esc, labels = html.escape, key_labels(reports)
    head = "".join(f"<th>{esc(label)}</th>" for label in labels.values())
    rows = []
    for i, report, found in fleet_rows(reports):
        cells = "".join(f'<td class="state state-{found.get(path, "none")}">{found.get(path, NO_KEY)}</td>'
                        for path in labels)
        rows.append(f'<tr><th><a href="#target-{i}">{esc(report.target)}</a></th>{cells}</tr>')
    return f'<h2>Fleet</h2><table class="fleet"><tr><th>target</th>{head}</tr>{"".join(rows)}</table>'


def _decision_rows(r: KeyResult) -> list[tuple[str, str]]:
    """What the decision rests on: the p-value, e-value and threshold (ownership), the flip rule (integrity), or
    the consistent environments (telltale)."""
    if r.purpose == OWNERSHIP:
        rows = [("p-value", _p(r.p_value)), ("threshold", _p(r.threshold))]
        return rows + ([("e-value", f"{r.e_value:.3g}")] if r.e_value is not None else [])
    if r.purpose == INTEGRITY:
        return [("threshold", "any flipped query (any changed pair member) means tampered")]
    return [("consistent", ", ".join(r.details.get("consistent", [])) or "none")]


def _key_rows(r: KeyResult) -> list[tuple[str, str]]:
    """(field, value) rows of a key's section."""
    rows = [("method", r.method), ("purpose", r.purpose or "unknown"), ("verdict", r.decision),
            ("state", states.state(r)), ("key file", f"{r.key} (sha256 {r.key_sha256[:16]}...)")]
    if r.note:
        rows.append(("note", r.note))
    if r.spread is not None:
        rows.append(("spread", f"{r.spread:.3g} (largest change of a re-asked probability)"))
    if r.disagreements:
        rows.append(("disagreement", "; ".join(r.disagreements)))
    if r.passed is not None:
        rows.append(("statistic", f"{r.statistic_name} = {r.statistic:.4g}"))
        rows += _decision_rows(r)
        rows += [("queries", f"{r.queries} spent; key size {r.key_size}; stopped by: {r.rule}"),
                 ("flipped", ", ".join(map(str, r.flipped)) or "none")]
    if r.preflight is not None:
        rows.append(("preflight", json.dumps(r.preflight)))
    return rows


def to_markdown(reports: list[TargetReport], meta: dict) -> str:
    """The report as Markdown: per target its summary line, then a table per key (every value ``markdown_text``)."""
    md = markdown_text
    lines = ["# nnmark audit", "", md(" ".join(f"{k}: {v}" for k, v in meta.items())), ""]
    lines += _fleet_markdown(reports)
    for report in reports:
        lines += [f"## {md(report.target)}", "", f"**{md(summary_line(report))}**", ""]
        for r in report.keys:
            lines += [f"### {md(r.method or 'key')}: {md(r.decision)}", "", "| | |", "| --- | --- |"]
            lines += [f"| {md(name)} | {md(value)} |" for name, value in _key_rows(r)] + [""]
    return "\n".join(lines)


def to_json(reports: list[TargetReport], meta: dict) -> str:
    """The report as JSON: {"meta", "targets": [{target, summary, status, info, queries, keys: [...]}]}, and when
    the run's status is 2 also {"error": ``run.problem``, "type": "AuditError"}."""
    document = {"meta": meta, "targets": [{**report.to_dict(), "summary": summary_line(report)} for report in reports]}
    if why := problem(reports):
        document |= {"error": why, "type": AuditError.__name__}
    return json.dumps(document, indent=2, allow_nan=False)


def png_data_uri(image: torch.Tensor, px: int = THUMBNAIL_PX) -> str:
    """A (C, H, W) image in [0, 1] (C = 1 or 3) as a ``data:image/png;base64,...`` URI, scaled to ``px`` wide."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    picture = picture.resize((px, max(1, round(px * picture.height / picture.width))), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figures(r: KeyResult) -> str:
    """The flipped queries, each beside its source where the key has one."""
    figures = []
    for i, (query, source) in zip(r.flipped, r.thumbnails):
        images = "".join(f'<img alt="{alt} {i}" src="{png_data_uri(t)}">'
                         for alt, t in (("source", source), ("query", query)) if t is not None)
        figures.append(f"<figure>{images}<figcaption>#{i}</figcaption></figure>")
    return f'<div class="flipped">{"".join(figures)}</div>' if figures else ""


def _css_class(status: int) -> str:
    """The style of a status: 0 pass, 1 fail, 2 error."""
    return ("pass", "fail", "error")[status]


def _key_status(r: KeyResult) -> int:
    return 2 if r.passed is None else 0 if r.passed else 1


def to_html(reports: list[TargetReport], meta: dict) -> str:
    """The report as one self-contained HTML page (inline CSS, images as data: URIs)."""
    esc = html.escape
    body = [f"<h1>nnmark audit</h1><p>{esc(' '.join(f'{k}: {v}' for k, v in meta.items()))}</p>", _fleet_html(reports)]
    for i, report in enumerate(reports):
        body.append(f'<section class="target" id="target-{i}"><h2>{esc(report.target)}</h2>'
                    f'<p class="summary {_css_class(report.status())}">{esc(summary_line(report))}</p>')
        for r in report.keys:
            rows = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in _key_rows(r))
            body.append(f'<section class="key"><h3 class="{_css_class(_key_status(r))}">{esc(r.method or "key")}: '
                        f"{esc(r.decision)}</h3><table>{rows}</table>{_figures(r)}</section>")
        body.append("</section>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>nnmark audit</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


class ReportError(NnmarkError):
    """A report file cannot be written."""


WRITERS = {".md": to_markdown, ".json": to_json, ".html": to_html}


def write_report(path: str | os.PathLike, reports: list[TargetReport], meta: dict) -> None:
    """Write the report in the format named by ``path``'s suffix (.md, .json, .html), atomically."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITERS:
        raise ArgumentError(f"report {path}: use a .md, .json or .html file name")
    try:
        atomic_write_bytes(path, WRITERS[suffix](reports, meta).encode("utf-8"))
    except OSError as e:
        raise ReportError(f"report {path}: cannot write it: {e.strerror or e}") from None
