"""Every benchmark figure, drawn from the points a benchmark module prepares; each returns PNG bytes.

The modules compute what to draw (JSON-ready lists, no matplotlib); this module alone draws, with the
non-interactive Agg backend chosen once, here, before pyplot is imported.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PERCENT_LIMITS = (-2, 102)
"""y range of the panels that show a percentage."""
TAB20 = 20
"""Colours in matplotlib's "tab20" map, cycled over the watermarks of one panel."""


def _png(fig, dpi: int) -> bytes:
    """``fig`` as PNG bytes at ``dpi``; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _percent_panel(ax, title: str, xlabel: str, ylabel: str) -> None:
    """Labels, a 0-100 % y range and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(*PERCENT_LIMITS)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def detection_vs_pruning(curves: dict[str, tuple[list[float], dict[str, list[float]]]]) -> bytes:
    """Gao et al.'s Fig. 3 layout: one panel per case (name -> pruned weights in %, key -> pair detection in %),
    one line per key, log x."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (name, (xs, lines)) in zip(axes[0], curves.items()):
        for label, ys in lines.items():
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        _percent_panel(ax, name, "pruned weights (%)", "pair detection (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig, dpi=100)


def success_curves(panels: list[list[dict]]) -> bytes:
    """Wen et al.'s curves: a grid of panels (rows of dicts with title, xlabel, x, lines, accuracy).

    Each line (label, y, dashed, lost) is a watermark's success (%), dashed for an ablation, a cross at each
    ``lost`` (x, y) point where it was not found; ``accuracy`` (label, y) is drawn dotted after the first line.
    """
    fig, axes = plt.subplots(len(panels), len(panels[0]), figsize=(11, 4 * len(panels)), squeeze=False)
    for ax, panel in ((axes[i][j], p) for i, row in enumerate(panels) for j, p in enumerate(row)):
        for n, line in enumerate(panel["lines"]):
            drawn, = ax.plot(panel["x"], line["y"], marker="o", ms=3, label=line["label"],
                             color=plt.get_cmap("tab20")(n % TAB20), linestyle="--" if line["dashed"] else "-")
            if line["lost"]:
                ax.scatter(*zip(*line["lost"]), marker="x", s=30, color=drawn.get_color(), zorder=3)
            if n == 0:
                ax.plot(panel["x"], panel["accuracy"]["y"], color="black", linestyle=":",
                        label=panel["accuracy"]["label"])
        _percent_panel(ax, panel["title"], panel["xlabel"], "%")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig, dpi=110)


def boundary_steps(cases: list[dict]) -> bytes:
    """Schlögl et al.'s Fig. 5 layout: local and remote steps per kept sample (box plots per model), and PSNR
    against local steps; each case holds arch, local_steps, remote_steps and psnr_values."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [c["arch"] for c in cases]
    axes[0].boxplot([c["local_steps"] or [0] for c in cases], tick_labels=labels)
    axes[0].set_title("local steps per kept sample")
    axes[1].boxplot([c["remote_steps"] or [0] for c in cases], tick_labels=labels)
    axes[1].set_title("remote steps per kept sample")
    for c in cases:
        axes[2].scatter(c["local_steps"], c["psnr_values"], s=10, label=c["arch"])
    axes[2].set_xlabel("local steps")
    axes[2].set_ylabel("PSNR (dB)")
    axes[2].set_title("transparency vs complexity")
    axes[2].legend()
    fig.tight_layout()
    return _png(fig, dpi=110)


FINGERPRINT_PANEL = (4.4, 4)
"""Width and height (inches) of each panel of ``fingerprint_panels``."""


def fingerprint_panels(bars: dict, curves: list[dict], differences: list[dict]) -> bytes:
    """Yang et al.'s Fig. 3 and Fig. 7 panels in one row, query accuracies in %.

    ``bars`` (title, x, keys: label -> ys): grouped bars, one per key at each x; each of ``curves`` (title, x
    tick labels, keys: label -> ys, accuracy: the models' test accuracy, dashed black): one line per key; each of
    ``differences`` (title, xlabel, x, y): the query-accuracy difference in percentage points.
    """
    n = 1 + len(curves) + len(differences)
    fig, axes = plt.subplots(1, n, figsize=(FINGERPRINT_PANEL[0] * n, FINGERPRINT_PANEL[1]))
    width = 0.8 / len(bars["keys"])
    for i, (label, ys) in enumerate(bars["keys"].items()):
        axes[0].bar([x + (i - (len(bars["keys"]) - 1) / 2) * width for x in range(len(bars["x"]))], ys, width,
                    label=label)
    axes[0].set_xticks(range(len(bars["x"])), bars["x"])
    axes[0].set_title(bars["title"])
    for ax, curve in zip(axes[1:], curves):
        for label, ys in curve["keys"].items():
            ax.plot(curve["x"], ys, marker="o", label=label)
        ax.plot(curve["x"], curve["accuracy"], "k--", label="test accuracy")
        ax.set_title(curve["title"])
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[: 1 + len(curves)]:
        ax.set_ylim(0, 105)
        ax.set_ylabel("query accuracy (%)")
    axes[0].legend(loc="lower left")
    if curves:
        axes[1].legend(loc="lower left")
    for ax, panel in zip(axes[1 + len(curves):], differences):
        ax.plot(panel["x"], panel["y"], marker="o")
        ax.set_xticks(panel["x"])
        ax.set_ylim(-5, 105)
        ax.set_title(panel["title"])
        ax.set_ylabel("query accuracy difference (pp)")
        ax.set_xlabel(panel["xlabel"])
    fig.tight_layout()
    return _png(fig, dpi=80)


SCORE_COLUMNS = 5
"""Panels per row of ``ownership_scores``."""


def ownership_scores(panels: list[dict]) -> bytes:
    """One panel per method, ``SCORE_COLUMNS`` to a row: each independent model's statistic (grey, left) and each
    copy's (right, labelled).

    ``panels``: title, negatives (values), positives (name -> value).
    """
    cols = min(len(panels), SCORE_COLUMNS)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        ax.scatter([0] * len(panel["negatives"]), panel["negatives"], color="grey", label="independent")
        names = list(panel["positives"])
        ax.scatter(range(1, len(names) + 1), list(panel["positives"].values()), color="tab:red", label="copy")
        ax.set_xticks(range(len(names) + 1), ["independent", *names], rotation=90, fontsize=6)
        ax.set_title(panel["title"])
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    return _png(fig, dpi=80)
