"""The benchmark reports: the shared Markdown helpers, and the committed docs/benchmarks files, which full runs
wrote, against what each module's render and figure make of the committed JSON today."""

import importlib
import io
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch

from nnmark.bench import common

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
COMMITTED_TORCH = "2.13.0+cpu"
"""The torch the committed reports name (render writes the running torch's version)."""
REPORTS = ("dbi", "integrity", "coupled", "innformant", "sources", "metafinger")
FIGURES = ("integrity", "coupled", "innformant", "metafinger")
HELDOUT = {"dbi": "dbi-heldout-groupnorm_gelu", "integrity": "integrity-heldout-groupnorm_gelu"}
"""Module -> the stem of its committed run on the held-out model (``--model nnmark.bench.heldout:groupnorm_gelu``)."""


def test_table_aligns_the_columns_it_is_told_and_left_aligns_the_rest():
    md = common.table(["model", "n", "note"], [["lenet5", 3, None]], align="lr")
    assert md.splitlines() == ["| model | n | note |", "|---|---:|---|", "| lenet5 | 3 | None |"]
    assert common.table(["a", "b"], []).splitlines()[1] == "|---|---|"


def test_sections_and_documents_put_one_blank_line_between_blocks():
    inner = common.section("Case", "| a |", level=3)
    assert common.document("# T", common.section("S", "text", inner)) == "# T\n\n## S\n\ntext\n\n### Case\n\n| a |\n"


@pytest.mark.parametrize("module_name, stem", [(s, s) for s in REPORTS] + list(HELDOUT.items()))
def test_committed_report_is_what_render_writes_from_its_json(module_name, stem, monkeypatch):
    monkeypatch.setattr(torch, "__version__", COMMITTED_TORCH)
    module = importlib.import_module(f"nnmark.bench.{module_name}")
    result = json.loads((DOCS / f"{stem}.json").read_text())
    assert module.render(result).split() == (DOCS / f"{stem}.md").read_text().split()


@pytest.mark.parametrize("module_name, stem", [(s, s) for s in FIGURES] + [("integrity", HELDOUT["integrity"])])
def test_committed_figure_has_the_size_figure_draws_from_its_json(module_name, stem):
    module = importlib.import_module(f"nnmark.bench.{module_name}")
    png = module.figure(json.loads((DOCS / f"{stem}.json").read_text()))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert drawn.shape == matplotlib.image.imread(DOCS / f"{stem}.png").shape
