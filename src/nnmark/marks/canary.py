"""Preflight canaries: never a verdict on an endpoint that is not shaped as the key expects.

A verdict of TAMPERED or NOT MINE must mean that the model changed, not that the wire format is wrong
(inputs normalised twice or not at all, NHWC read as NCHW, probabilities taken for logits). At key
creation ``attach`` stores a few canaries in the key: natural images the model labels right with high
confidence (top probability >= ``MIN_CONFIDENCE``) and far from any boundary (the largest log-probability
margins, one class after another), with their labels and probability rows. At verification ``preflight``
asks them first. A fine-tuned, pruned or quantized copy still answers them as the keyed model did, so
it goes on to its verdict; an endpoint that answers more than ``MAX_DISAGREEMENT`` of them with another
label or with flat rows (top probability < ``FLAT_TOP``, as a softmax of probabilities or a uniform answer
gives), or whose probability rows moved away from the stored ones (mean |change of log p| >
``MAX_LOG_SHIFT``, as inputs normalised on the wrong side give), stops with ``EndpointMismatch`` and a
one-line diagnosis. Such answers can also come from
a different model (or an attack strong enough to break natural images), so the message says "different
model or wrong endpoint format" rather than deciding which.

Example::

    key = canary.attach(key, TorchOracle(model, (1, 28, 28)), pool.x, pool.y)
    note = canary.preflight(suspect_oracle, key)     # EndpointMismatch, or a one-line note
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch

from nnmark.errors import ArgumentError, EndpointMismatch, KeyFileError
from nnmark.keys import KeyFile
from nnmark.oracles import Oracle

QUERIES, LABELS, PROBABILITIES = "canary.queries", "canary.labels", "canary.probabilities"
PROBE_INDEX, PROBE_LABELS = "canary.probe_index", "canary.probe_labels"
PROBES_EACH = 8
"""Key queries kept per misreading that no canary tells: the ones it relabels (see ``attach``)."""
MIN_PROBES = 4
MISREAD_MATCH = 0.75
"""A label-only endpoint whose answers on a misreading's probes match the misread labels this often is misread."""
CANARY_COUNT = 8
MIN_CANARIES = 4
MIN_CONFIDENCE = 0.99
MAX_DISAGREEMENT = 0.25
"""The largest share of canaries an endpoint may answer otherwise and still be verified."""
FLAT_TOP = 0.5
"""An answer row whose top probability is below this does not look like the keyed model's."""
LOG_FLOOR = 1e-12
"""Probabilities are compared as log max(p, LOG_FLOOR)."""
MAX_LOG_SHIFT = 0.75
"""The largest mean |change of log p| over the canaries' rows. Measured on the test LeNet-5 / MNIST: 0.03
after a fine-tune (lr 1e-4, 100 steps), 0.04 int8, 0.24 pruned 30 %; 1.2 for pixels normalised with the
MNIST mean/std (and clipped) that the server did not expect, 12 for normalised inputs sent as pixels."""
NORMALIZATIONS = {1: ((0.1307,), (0.3081,)), 3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
"""The usual per-channel (mean, std) of 1- and 3-channel images (MNIST, ImageNet); (0.5, 0.5) is tried for any."""
HINT = "check --normalize / --layout / --input-dtype / --output-kind"
NO_CANARIES = "this key has no canaries (made before preflight checks): the endpoint's format was not checked"


def misreadings(channels: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """What a model in pixel space sees when an endpoint is mis-described, by description: inputs normalised that it
    takes as pixels, pixels that it takes as normalised inputs, 0-255 pixels for [0, 1], channels interleaved
    (NHWC read as NCHW; 3 channels)."""
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"0-255 pixels sent as [0, 1]": lambda x: x * 255}
    for mean, std in (NORMALIZATIONS.get(channels), ((0.5,) * channels, (0.5,) * channels)):
        if mean is None:
            continue
        m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
        out[f"normalised with {mean[0]:g}, {std[0]:g}... though not expected"] = lambda x, m=m, s=s: (x - m) / s
        out[f"pixels sent where {mean[0]:g}, {std[0]:g}... normalisation is expected"] = lambda x, m=m, s=s: x * s + m
    if channels == 3:
        out["NHWC read as NCHW"] = lambda x: x.permute(0, 2, 3, 1).reshape(x.shape)
    return out


def select(p: torch.Tensor, y: torch.Tensor, n: int, telling: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of up to ``n`` canaries: labelled ``y`` with top probability >= ``MIN_CONFIDENCE``, by how many
    misreadings relabel them (``telling`` (N,), most first), then by decreasing log-probability margin (top-1
    minus top-2), taking one per class in turn."""
    top2 = p.double().clamp_min(1e-300).log().topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    ok = (p.argmax(dim=1) == y) & (p.max(dim=1).values >= MIN_CONFIDENCE)
    score = margin if telling is None else telling.double() * 1e6 + margin.clamp(0, 1e5)
    order = [int(i) for i in torch.argsort(score, descending=True, stable=True) if ok[i]]
    taken: dict[int, int] = {}
    ranked = []  # (how many of its class come before it, its margin rank, index)
    for pos, i in enumerate(order):
        c = int(y[i])
        ranked.append((taken.get(c, 0), pos, i))
        taken[c] = taken.get(c, 0) + 1
    return torch.tensor([i for _, _, i in sorted(ranked)[:n]], dtype=torch.int64)


def attach(key: KeyFile, oracle: Oracle, pool_x: torch.Tensor, pool_y: torch.Tensor, n: int = CANARY_COUNT) -> KeyFile:
    """``key`` with ``n`` canaries from the natural images ``pool_x`` (labels ``pool_y``) in its extras.

    When ``oracle`` can show its model other inputs (``Oracle.seen_through``, a local module), canaries are
    preferred that the ``misreadings`` relabel, so that a label-only endpoint too is caught mis-described; the
    key's config lists under "canaries_tell" the misreadings that relabel more than ``MAX_DISAGREEMENT`` of them.

    Args:
        key: the new key (made from the model behind ``oracle``).
        oracle: the keyed model, with probability access.
        pool_x: natural images (N, C, H, W) in [0, 1], e.g. the test split.
        pool_y: their true labels (N,).
        n: how many canaries (at least ``MIN_CANARIES``).

    Raises ``ArgumentError`` when fewer than ``MIN_CANARIES`` pool images qualify.
    """
    if n < MIN_CANARIES or len(pool_x) != len(pool_y):
        raise ArgumentError(f"canaries need n >= {MIN_CANARIES} and one label per pool image")
    p, _ = oracle.predict(pool_x)
    y = pool_y.to(torch.int64)
    relabelled = {}
    if oracle.can("internals"):
        relabelled = {name: oracle.seen_through(f).labels(pool_x) != y
                      for name, f in misreadings(pool_x.shape[1]).items()}
    telling = torch.stack(list(relabelled.values())).sum(dim=0) if relabelled else None
    idx = select(p, y, n, telling)
    if len(idx) < MIN_CANARIES:
        raise ArgumentError(f"only {len(idx)} of {len(pool_x)} pool images are labelled right with confidence >= "
                            f"{MIN_CONFIDENCE}; canaries need {MIN_CANARIES}: give a larger pool")
    extras = {QUERIES: pool_x[idx].float().contiguous(), LABELS: pool_y[idx].to(torch.int64).contiguous(),
              PROBABILITIES: p[idx].float().contiguous()}
    tell = [name for name, r in relabelled.items() if int(r[idx].sum()) > math.floor(MAX_DISAGREEMENT * len(idx))]
    untold = [name for name in relabelled if name not in tell]
    config = {**key.config, "canaries_tell": tell}
    if untold and torch.equal(oracle.labels(key.queries), key.expected):
        probes, probe_labels = _probes(key, oracle, untold)
        extras.update({PROBE_INDEX: probes, PROBE_LABELS: probe_labels})
        config["canaries_untold"] = untold
    return replace(key, extras={**key.extras, **extras}, config=config)


def _probes(key: KeyFile, oracle: Oracle, untold: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """For misreadings no natural canary tells (a model robust to them on clean images), the key's own queries
    they relabel, up to ``PROBES_EACH`` each: (indices (m,), the misread labels (len(untold), m)). Fragile queries
    flip under a misreading to labels the keyed model predicts, under tampering to others."""
    fns = misreadings(key.queries.shape[1])
    seen = torch.stack([oracle.seen_through(fns[name]).labels(key.queries) for name in untold])
    idx = sorted({int(i) for row in seen != key.expected for i in row.nonzero().flatten()[:PROBES_EACH]})
    index = torch.tensor(idx, dtype=torch.int64)
    return index, seen[:, index].contiguous()


def _check_probes(oracle: Oracle, key: KeyFile) -> None:
    """``EndpointMismatch`` when a label-only endpoint answers the probes of a misreading as the keyed model
    misreading its inputs would (``MISREAD_MATCH`` of at least ``MIN_PROBES`` probes); asks the probe queries."""
    index, misread = key.extras[PROBE_INDEX], key.extras[PROBE_LABELS]
    untold = key.config.get("canaries_untold", [])
    if index.dim() != 1 or misread.shape != (len(untold), len(index)) or len(index) == 0 \
            or int(index.max()) >= len(key.expected) or int(index.min()) < 0:
        raise KeyFileError("the key's canary probes are malformed")
    answers = oracle.labels(key.queries[index])
    for name, labels in zip(untold, misread):
        relabelled = labels != key.expected[index]
        if int(relabelled.sum()) >= MIN_PROBES and \
                (answers[relabelled] == labels[relabelled]).double().mean().item() >= MISREAD_MATCH:
            raise EndpointMismatch(f"endpoint answers the key as the keyed model does when its inputs are {name}: "
                                   f"different model or wrong endpoint format; {HINT}")


def _canaries(key: KeyFile) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, y, rows = (key.extras.get(name) for name in (QUERIES, LABELS, PROBABILITIES))
    if y is None or rows is None or q.dim() != 4 or y.shape != (len(q),) or rows.dim() != 2 or len(rows) != len(q) \
            or len(q) < MIN_CANARIES or y.dtype != torch.int64:
        raise KeyFileError("the key's canaries are incomplete or malformed")
    return q, y, rows


def preflight(oracle: Oracle, key: KeyFile, *, same_model: bool = True) -> str:
    """Ask the key's canaries; a one-line note when they pass (or the key has none), else ``EndpointMismatch``.

    ``same_model=False`` (ownership keys, whose suspects are other models by design: an independently trained
    model must get a NO MATCH, not an error) checks labels and flat rows only, not how far the probabilities
    moved from the keyed model's: another model's calibration moves them far (measured on a clean LeNet-5
    against a watermarked one: mean |change of log p| 3.5)."""
    if QUERIES not in key.extras:
        return NO_CANARIES
    q, expected, rows = _canaries(key)
    n = len(q)
    allowed = math.floor(MAX_DISAGREEMENT * n)
    p, y = oracle.predict(q) if oracle.can("probabilities") else (None, oracle.labels(q))
    differ = int((y != expected).sum())
    what = f"answers {differ} of {n} canaries differently" if differ > allowed else None
    if what is None and p is not None:
        top = p.max(dim=1).values
        shift = (p.double().clamp_min(LOG_FLOOR).log() - rows.double().clamp_min(LOG_FLOOR).log()).abs().mean().item()
        if int((top < FLAT_TOP).sum()) > allowed:
            what = (f"gives flat probability rows for {int((top < FLAT_TOP).sum())} of {n} canaries (top "
                    f"{top.mean():.2f} on average, the keyed model's {rows.max(dim=1).values.mean():.3f})")
        elif same_model and not shift <= MAX_LOG_SHIFT:
            what = f"answers the canaries with probabilities far from the keyed model's (mean |change of log p| " \
                   f"{shift:.2g} > {MAX_LOG_SHIFT:g})"
    if what:
        raise EndpointMismatch(f"endpoint {what}: different model or wrong endpoint format; {HINT}")
    note = f"preflight: {n - differ} of {n} canaries answered as the keyed model does"
    if p is None and PROBE_INDEX in key.extras:
        _check_probes(oracle, key)
    if p is None:
        tell = key.config.get("canaries_tell", [])
        note += f" (labels only: they tell {len(tell)} common misreadings)" if tell else \
            " (labels only: a mis-described endpoint may still pass them)"
    return note
