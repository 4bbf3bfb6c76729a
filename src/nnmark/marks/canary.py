"""Preflight canaries: a verdict on a changed model, never on a mis-described endpoint.

A verdict of TAMPERED or NOT MINE must mean that the model changed, not that the wire format is wrong (inputs
normalised twice or not at all, NHWC read as NCHW, probabilities taken for logits); and a model changed so much
that nothing of the keyed one is left must still get its verdict. So the canaries test named hypotheses.

At key creation ``attach`` stores a few canaries in the key: natural images the model labels right with high
confidence (top probability >= ``MIN_CONFIDENCE``) and far from any boundary, with their labels and probability
rows (the keyed reading), and, where the keyed model runs here (``Oracle.seen_through``), the rows it answers
under each known misreading (``misreadings``: pixel scale and dtype, each usual normalisation applied or left
out, NCHW / NHWC swapped). These are stored, not recomputed at verification, because verification has no keyed
model to ask. Probabilities read as logits (a softmax applied twice) are the softmax of the keyed rows, computed
at verification; logits read as probabilities never get this far (``endpoint.read_answer`` refuses values
outside [0, 1], naming --output-kind logits).

At verification ``preflight`` asks the canaries first. A reading *fits* when the answers differ from its stored
answers on at most ``MAX_DISAGREEMENT`` of the labels and, with probabilities, by at most ``MAX_LOG_SHIFT``
mean |change of log p|. A misreading counts only where the canaries tell it from the keyed reading (rows more
than twice those bounds apart), so no answer fits both. Then:

- a misreading fits and the keyed reading does not fit as well: an endpoint stops with ``EndpointMismatch``
  naming the misreading and the flag that fixes it; a local model (no endpoint format to get wrong) gets a note,
  and its verdict stands;
- the keyed reading fits: a note, and the method's verdict (fine-tuned, pruned, quantized copies land here);
- no reading fits: the model differs (another model, a heavy fine-tune, random weights); the method gives its
  verdict, with a note that an endpoint format nnmark does not know would look the same.

A label-only endpoint is judged on labels, so misreadings that relabel no canary are tested on probes: a few of
the key's own queries that they relabel and a few they keep, with the labels the misread keyed model gives
them. Keys without stored misread rows (made by earlier releases, or from a model that cannot be asked misread
inputs) fall back to the earlier rule on an endpoint: answers that fit no reading stop with "different model or
wrong endpoint format", since nothing tells the two apart; on a local model the verdict stands.

Example::

    key = canary.attach(key, TorchOracle(model, (1, 28, 28)), pool.x, pool.y)
    note = canary.preflight(suspect_oracle, key)     # EndpointMismatch, or a one-line note
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from nnmark.errors import ArgumentError, EndpointMismatch, KeyFileError
from nnmark.keys import KeyFile
from nnmark.oracles import EndpointOracle, Oracle

PREFIX = "canary."
"""Every canary extra's name starts with this: they belong to the whole key, not to its queries one by one."""
QUERIES, LABELS, PROBABILITIES = "canary.queries", "canary.labels", "canary.probabilities"
READINGS = "canary.readings"
"""The keyed model's rows under each misreading of the key config's "canary_readings": (canaries, M, K)."""
PROBE_INDEX, PROBE_LABELS = "canary.probe_index", "canary.probe_labels"
PROBES_EACH = 8
"""Key queries kept per misreading that no canary tells: up to this many it relabels and this many it keeps."""
MIN_PROBES = 4
MISREAD_MATCH = 0.75
"""A label-only endpoint whose answers on a misreading's probes match the misread labels this often is misread."""
CANARY_COUNT = 8
MIN_CANARIES = 4
MIN_CONFIDENCE = 0.99
MAX_DISAGREEMENT = 0.25
"""The largest share of canaries an answer may label otherwise than a reading and still fit it."""
LOG_FLOOR = 1e-12
"""Probabilities are compared as log max(p, LOG_FLOOR)."""
MAX_LOG_SHIFT = 0.75
"""The largest mean |change of log p| over the canaries' rows that still fits a reading. Measured on the test
LeNet-5 / MNIST against the keyed reading: 0.03 after a fine-tune (lr 1e-4, 100 steps), 0.05 int8, 0.24 pruned
30 %; 1.2 after a fine-tune at lr 1e-2 for 300 steps, 1.9 for a LeNet-5 trained with another seed, 16 for random
weights; the misreadings sit 2.6 to 23 from the keyed rows."""
NORMALIZATIONS = {1: ("MNIST", (0.1307,), (0.3081,)), 3: ("ImageNet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
"""The usual per-channel (mean, std) of 1- and 3-channel images; 0.5 / 0.5 is tried for any."""
KEYED = "keyed"
SOFTMAX_TWICE = "softmax_twice"
HINT = "check --normalize / --layout / --input-dtype / --output-kind"
NO_CANARIES = ("this key has no canaries (made before preflight checks, or its model labelled no natural image with "
               "the confidence canaries need): the endpoint's format was not checked")


@dataclass(frozen=True)
class Misreading:
    """A known way to mis-describe an endpoint: what the model then sees of the pixels x it was meant to see
    (``transform``; None for an output misreading), in words, and the flag that fixes it."""

    words: str
    flag: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def misreadings(channels: int) -> dict[str, Misreading]:
    """The known input misreadings of ``channels``-channel images, by the id keys store: 0-255 pixels taken as
    [0, 1] and the reverse, each usual normalisation applied where the model does not expect it or left out where
    it does, and (3 channels) NCHW and NHWC swapped."""
    out = {"scaled_up_255": Misreading("its inputs are 0-255 pixels it takes as [0, 1]", "--input-dtype",
                                       lambda x: x * 255),
           "scaled_down_255": Misreading("its inputs are [0, 1] pixels it takes as 0-255", "--input-dtype",
                                         lambda x: x / 255)}
    usual = [NORMALIZATIONS[channels]] if channels in NORMALIZATIONS else []
    for name, mean, std in (*usual, ("0.5", (0.5,), (0.5,))):
        m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
        tag = name.lower().replace(".", "")
        out[f"normalised_{tag}"] = Misreading(f"its inputs are normalised with {name} statistics it does not "
                                              "expect", "--normalize", lambda x, m=m, s=s: (x - m) / s)
        out[f"unnormalised_{tag}"] = Misreading(f"its inputs are not normalised with the {name} statistics it "
                                                "expects", "--normalize", lambda x, m=m, s=s: x * s + m)
    if channels == 3:
        out["nchw_as_nhwc"] = Misreading("its NCHW inputs are read as NHWC", "--layout",
                                         lambda x: x.reshape(len(x), x.shape[2], x.shape[3], 3).permute(0, 3, 1, 2))
        out["nhwc_as_nchw"] = Misreading("its NHWC inputs are read as NCHW", "--layout",
                                         lambda x: x.permute(0, 2, 3, 1).reshape(x.shape))
    return out


def described(name: str, channels: int) -> Misreading:
    """The misreading a key names ``name`` (an id, or the words an earlier release stored)."""
    if name == SOFTMAX_TWICE:
        return Misreading("its probabilities are read as logits (a softmax applied twice)", "--output-kind")
    return misreadings(channels).get(name) or Misreading(f"its inputs are {name}", HINT.removeprefix("check "))


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

    When ``oracle`` can show its model other inputs (``Oracle.seen_through``, a local module), the key also keeps
    the model's rows under each of the ``misreadings`` (``READINGS``, ids in the config's "canary_readings"), and
    canaries are preferred that the misreadings relabel, so that a label-only endpoint too is caught
    mis-described; the config lists under "canaries_tell" the misreadings whose labels tell them apart (``_told``),
    and the others, with probes among the key's queries, under "canaries_untold".

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
    seen = {}
    if oracle.can("internals"):
        seen = {name: oracle.seen_through(m.transform).probabilities(pool_x)
                for name, m in misreadings(pool_x.shape[1]).items()}
    telling = torch.stack([r.argmax(dim=1) != y for r in seen.values()]).sum(dim=0) if seen else None
    idx = select(p, y, n, telling)
    if len(idx) < MIN_CANARIES:
        raise ArgumentError(f"only {len(idx)} of {len(pool_x)} pool images are labelled right with confidence >= "
                            f"{MIN_CONFIDENCE}; canaries need {MIN_CANARIES}: give a larger pool")
    extras = {QUERIES: pool_x[idx].float().contiguous(), LABELS: y[idx].contiguous(),
              PROBABILITIES: p[idx].float().contiguous()}
    if not seen:
        return replace(key, extras={**key.extras, **extras})
    extras[READINGS] = torch.stack([r[idx] for r in seen.values()], dim=1).float().contiguous()
    tell = [name for name, r in seen.items() if _told(r[idx], None, y[idx])]
    untold = [name for name in seen if name not in tell]
    config = {**key.config, "canary_readings": list(seen), "canaries_tell": tell}
    if untold and torch.equal(oracle.labels(key.queries), key.expected):
        probes, probe_labels = _probes(key, oracle, untold)
        extras.update({PROBE_INDEX: probes, PROBE_LABELS: probe_labels})
        config["canaries_untold"] = untold
    return replace(key, extras={**key.extras, **extras}, config=config)


def _probes(key: KeyFile, oracle: Oracle, untold: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """For misreadings no canary tells (a model robust to them on clean images), key queries as probes: up to
    ``PROBES_EACH`` each relabels and as many each keeps: (indices (m,), the misread labels (len(untold), m)).
    Fragile queries flip under a misreading to labels the keyed model predicts, under tampering to others; the
    kept ones tell a misreading (they keep their labels) from a change that flips everything."""
    fns = misreadings(key.queries.shape[1])
    seen = torch.stack([oracle.seen_through(fns[name].transform).labels(key.queries) for name in untold])
    idx = sorted({int(i) for row in seen != key.expected for side in (row, ~row)
                  for i in side.nonzero().flatten()[:PROBES_EACH]})
    index = torch.tensor(idx, dtype=torch.int64)
    return index, seen[:, index].contiguous()


def _share(hits: torch.Tensor) -> float:
    return hits.double().mean().item() if len(hits) else 1.0


def _probe_misreadings(oracle: Oracle, key: KeyFile) -> list[str]:
    """The misreadings whose probes a label-only endpoint answers as the misread keyed model does: at least
    ``MISREAD_MATCH`` of at least ``MIN_PROBES`` probes it relabels, and as many of those it keeps (keys of
    earlier releases may have none); asks the probe queries."""
    index, misread = key.extras[PROBE_INDEX], key.extras[PROBE_LABELS]
    untold = key.config.get("canaries_untold", [])
    if index.dim() != 1 or misread.shape != (len(untold), len(index)) or len(index) == 0 \
            or int(index.max()) >= len(key.expected) or int(index.min()) < 0:
        raise KeyFileError("the key's canary probes are malformed")
    answers = oracle.labels(key.queries[index])
    found = []
    for name, labels in zip(untold, misread):
        moved = labels != key.expected[index]
        if int(moved.sum()) >= MIN_PROBES and _share(answers[moved] == labels[moved]) >= MISREAD_MATCH \
                and _share(answers[~moved] == labels[~moved]) >= MISREAD_MATCH:
            found.append(name)
    return found


def _canaries(key: KeyFile) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, y, rows = (key.extras.get(name) for name in (QUERIES, LABELS, PROBABILITIES))
    if y is None or rows is None or q.dim() != 4 or y.shape != (len(q),) or rows.dim() != 2 or len(rows) != len(q) \
            or len(q) < MIN_CANARIES or y.dtype != torch.int64:
        raise KeyFileError("the key's canaries are incomplete or malformed")
    return q, y, rows


def _readings(key: KeyFile, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stored misreadings' rows (N, K) by id, and probabilities read as logits (the keyed rows' softmax)."""
    names, stored = key.config.get("canary_readings", []), key.extras.get(READINGS)
    if stored is None:
        return {SOFTMAX_TWICE: torch.softmax(rows.double(), dim=1)}
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) \
            or stored.shape != (len(rows), len(names), rows.shape[1]) or not stored.is_floating_point():
        raise KeyFileError("the key's canary readings are malformed")
    return {**{name: stored[:, i] for i, name in enumerate(names)}, SOFTMAX_TWICE: torch.softmax(rows.double(), 1)}


def _shift(p: torch.Tensor, rows: torch.Tensor) -> float:
    """Mean |change of log p| from ``rows`` to ``p``."""
    return (p.double().clamp_min(LOG_FLOOR).log() - rows.double().clamp_min(LOG_FLOOR).log()).abs().mean().item()


def _told(rows: torch.Tensor, keyed_rows: torch.Tensor | None, keyed_labels: torch.Tensor) -> bool:
    """Whether the canaries tell a misreading's ``rows`` from the keyed reading, so that no answer fits both: by
    labels (more than twice the allowed disagreements apart), or, given ``keyed_rows``, by probabilities (more than
    twice ``MAX_LOG_SHIFT`` apart)."""
    relabelled = int((rows.argmax(dim=1) != keyed_labels).sum())
    return relabelled > 2 * math.floor(MAX_DISAGREEMENT * len(rows)) or \
        (keyed_rows is not None and _shift(rows, keyed_rows) > 2 * MAX_LOG_SHIFT)


@dataclass(frozen=True)
class _Fit:
    """How the answers fit one reading: canaries labelled otherwise, and (with probabilities) the mean shift."""

    differ: int
    shift: float

    def fits(self, n: int) -> bool:
        return self.differ <= math.floor(MAX_DISAGREEMENT * n) and self.shift <= MAX_LOG_SHIFT

    def rank(self) -> tuple[float, int]:
        return self.shift, self.differ


def _fit(p: torch.Tensor | None, y: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> _Fit:
    return _Fit(int((y != labels).sum()), 0.0 if p is None else _shift(p, rows))


def over_endpoint(oracle: Oracle) -> bool:
    """Whether ``oracle`` asks an endpoint (an ``EndpointOracle``, itself or behind wrappers, which keep the oracle
    they ask as ``inner``): only an endpoint has a format to mis-describe."""
    while isinstance(oracle, Oracle):
        if isinstance(oracle, EndpointOracle):
            return True
        oracle = getattr(oracle, "inner", None)
    return False


def _misread(names: list[str], channels: int, endpoint: bool) -> str:
    """``EndpointMismatch`` naming the misreadings ``names`` and their flags on an endpoint; a note on a local model."""
    readings = [described(name, channels) for name in names]
    words = ", or when ".join(m.words for m in readings)
    flags = " / ".join(dict.fromkeys(m.flag for m in readings))
    if endpoint:
        raise EndpointMismatch(f"endpoint answers as the keyed model does when {words}: check {flags}")
    return (f"preflight: the canaries are answered as the keyed model answers when {words}; a local model has no "
            f"endpoint format to get wrong, so its verdict stands")


def preflight(oracle: Oracle, key: KeyFile, *, endpoint: bool | None = None) -> str:
    """Ask the key's canaries; a one-line note, or ``EndpointMismatch`` when an endpoint answers as the keyed model
    does under a known misreading (see the module docstring for the rule).

    ``endpoint``: whether the answers come through an endpoint format that can be wrong (default:
    ``over_endpoint(oracle)``); a local model's verdict always stands."""
    if QUERIES not in key.extras:
        return NO_CANARIES
    q, expected, rows = _canaries(key)
    n, channels = len(q), q.shape[1]
    endpoint = over_endpoint(oracle) if endpoint is None else endpoint
    p, y = oracle.predict(q) if oracle.can("probabilities") else (None, oracle.labels(q))
    keyed = _fit(p, y, rows, expected)
    others = {name: _fit(p, y, r, r.argmax(dim=1)) for name, r in _readings(key, rows).items()
              if _told(r, None if p is None else rows, expected)}
    better = [name for name, f in sorted(others.items(), key=lambda item: item[1].rank())
              if f.fits(n) and not (keyed.fits(n) and keyed.rank() <= f.rank())]
    if better:
        return _misread(better, channels, endpoint)
    what = f"answers {keyed.differ} of {n} canaries differently" + \
        ("" if p is None else f", mean |change of log p| {keyed.shift:.2g}")
    if not keyed.fits(n):
        if endpoint and READINGS not in key.extras:
            raise EndpointMismatch(f"endpoint {what}: different model or wrong endpoint format (this key keeps no "
                                   f"answers to misread inputs to tell which); {HINT}")
        return (f"preflight: the canaries fit no known reading of the keyed model ({what}): the model differs"
                + ("; an endpoint format nnmark does not know would look the same" if endpoint else ""))
    if p is None and PROBE_INDEX in key.extras and (found := _probe_misreadings(oracle, key)):
        return _misread(found, channels, endpoint)
    note = f"preflight: {n - keyed.differ} of {n} canaries answered as the keyed model does"
    if p is None:
        tell = key.config.get("canaries_tell", [])
        note += f" (labels only: they tell {len(tell)} common misreadings)" if tell else \
            " (labels only: a mis-described endpoint may still pass them)"
    return note
