"""What every benchmark shares: parameters by mode, mean ± std cells, and atomic JSON + Markdown output."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

from nnmark._io import atomic_write_bytes

ARCH_NAMES = {"lenet5": "LeNet-5", "resnet20": "ResNet-20"}
"""How the Markdown and the figures name the architectures the benchmarks train."""


def parameters(full: dict, quick_params: dict, *, quick: bool, seeds: int | None) -> dict:
    """The run's parameters: the quick or full set, with the seed count overridden when given."""
    p = dict(quick_params if quick else full)
    p["seeds"] = seeds or p["seeds"]
    return p


def command(name: str, *, quick: bool, seeds: int | None) -> str:
    """The command line that reproduces a run."""
    return f"nnmark bench {name}" + (" --quick" if quick else "") + (f" --seeds {seeds}" if seeds else "")


def jsonable(v):
    """``v`` with every tuple, however deep, turned into a list (what its JSON reads back as)."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def recipe_digest(recipe: dict) -> str:
    """The first 16 hex digits of SHA-256 of ``recipe``'s JSON (keys sorted): the name a cached result takes."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def source_digest() -> str:
    """SHA-256 of nnmark's own source (every ``.py`` file of the package, by relative path): what a cached result
    computed by this code is valid for."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def header(name: str, p: dict, *, quick: bool, seeds: int | None) -> dict:
    """The fields every result starts with: the reproducing command, the date and the parameters."""
    return {"command": command(name, quick=quick, seeds=seeds), "date": today(), "params": jsonable(p)}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'m ± s' of ``values`` times ``scale`` (just 'm' for one value)."""
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def write(out_dir: str | Path, stem: str, result: dict, markdown: str, png: bytes | None = None) -> Path:
    """Write ``stem``.json, ``stem``.md (and ``stem``.png when given) to ``out_dir`` atomically; returns the
    Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if png is not None:
        atomic_write_bytes(out / f"{stem}.png", png)
    atomic_write_bytes(out / f"{stem}.json", json.dumps(result, indent=1).encode())
    md = out / f"{stem}.md"
    atomic_write_bytes(md, markdown.encode())
    return md


def today() -> str:
    return time.strftime("%Y-%m-%d")


def table(headers: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table: a header row, its rule, one line per row (cells as given, str() of each).

    ``align``: one letter per column from the left, "r" for a right-aligned column; the rest align left.
    """
    rule = "".join("---:|" if a == "r" else "---|" for a in align.ljust(len(headers), "l"))
    lines = ["| " + " | ".join(headers) + " |", "|" + rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, *blocks: str, level: int = 2) -> str:
    """A Markdown section: a heading of ``level``, then each block (paragraph, table), blank lines between."""
    return "\n\n".join(["#" * level + " " + title, *blocks])


def document(*blocks: str) -> str:
    """Markdown blocks (paragraphs, tables, sections) with blank lines between, ending with a newline."""
    return "\n\n".join(blocks) + "\n"
