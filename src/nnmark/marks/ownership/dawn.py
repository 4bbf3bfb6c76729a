"""DAWN: the prediction API watermarks what a thief extracts through it (Szyller, Atli, Marchal, Asokan).

Paper: "DAWN: Dynamic Adversarial Watermarking of Neural Networks" (ACM Multimedia 2021, arXiv:1906.00830).
Access: the owner serves the model through ``DawnOracle`` (``nnmark serve --dawn-record``); a key is made from
what it recorded; the suspect is asked *labels only*. It protects the API, not the weights: a thief who holds the
weights never sees a watermarked answer.

Steps (symbols of the paper: F the model, K_w the watermarking key, r_w the watermark rate, W the watermark set):
    1. ``watermark_draw``: for a query x, h = HMAC-SHA256(K_w, x) over x's float32 bytes (K_w derived from the
       owner's secret, ``watermark_key``). x joins W when the first 64 bits of h, read as u in [0, 1), fall below
       r_w. Its answer is then F_w(x) = (F(x) + 1 + (the next 64 bits mod (K - 1))) mod K: a wrong label, drawn
       uniformly from the K - 1 others (up to a bias below K / 2^64), and the same each time x is asked.
    2. ``DawnOracle``: answers F(x), except on W, where it answers F_w(x) (a probability vector: the entries of
       F(x) and F_w(x) swapped, so F_w(x) is its top-1). Each answered member of W is appended to the ``Record``,
       signed shards in a folder.
    3. ``create`` (once a suspect turns up): n distinct recorded inputs drawn by ``seed`` become the key, with
       F_w(x) as the expected label and F(x) kept beside it; inputs the model no longer labels F(x) are dropped.
    4. ``verify``: the suspect's labels s on the key; m = #{s = F_w(x)} (hits), D = #{s != F(x)} (departures);
       p = P[Bin(D, 1/(K-1)) >= m]; "match" iff p < alpha.

The false-claim bound is exact, not fitted: a model that never saw the API's answers is independent of K_w, so
wherever it departs from F(x) its label equals F_w(x) with probability exactly 1/(K-1), independently across
distinct inputs (HMAC as a pseudo-random function); given D, m ~ Bin(D, 1/(K-1)). No calibration models are
needed. The key's inputs are distinct, since a repeated input would count one chance twice.

Choices (the paper's full text was not at hand; this follows its published description and the SoK toolbox of
Lukas et al.):

- The paper verifies by the accuracy on W against a threshold, with |W| sized for a 2^-64 false claim;
  here the exact conditional binomial above decides, at ``ALPHA`` = 2^-64 by default. A hit needs a departure,
  so m <= D; where the suspect never departs (the victim's own weights), p = 1 and the verdict is "no match".
- x is hashed as the float32 bytes the API received; the toolbox hashes a binarised internal embedding instead,
  so that near-identical queries share a decision. Identical queries get identical answers either way; a thief
  who perturbs each query gets fresh decisions, r_w of them watermarked all the same.
- F_w(x) is uniform over the K - 1 other classes, as the paper says; the toolbox shuffles the classes the model
  finds plausible, which hides the change better but breaks the exact null (an independent model picks a
  plausible class far more often than 1/(K-1)).
- The owner's own keys, asked of the served API (verify, audit, watch), would read a watermarked answer as a
  change of the model: their queries and canaries are exempt (``exempt_digests``, ``nnmark serve --dawn-exempt``).
  A thief cannot use this: the exempt inputs are the owner's secret keys' own.
- Clients: the paper records each API client's watermarked queries apart, which tells which client stole. Here
  the draw depends on x alone (one K_w for all clients), so clients who compare their answers to one input find
  them equal and cannot spot W that way; each shard names the client it answered (``DawnOracle.for_client``,
  ``nnmark serve --clients-file``), and ``create(client=...)`` keys the inputs that client alone asked. An input
  two clients both asked tells neither apart and is left out of both clients' keys (kept in the key of all, and
  in the key of the two together, ``client="a,b"``, for a thief with several accounts).
- The cost: answers change on a fraction r_w of the queries, so the served accuracy drops by about r_w (a changed
  answer was right with the model's accuracy; on Fashion-MNIST at r_w = 0.005, 0.60 points on 5,000 test images).

Example::

    served = DawnOracle(TorchOracle(model, (1, 28, 28)), secret, record=Record(folder, secret))
    ...                                  # the API answers through ``served``; a thief extracts a copy
    key = dawn.create(TorchOracle(model, (1, 28, 28)), folder, n=100, secret=secret)
    verdict = dawn.verify(LabelsOracle(TorchOracle(suspect, (1, 28, 28))), key)
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nnmark import keys
from nnmark.errors import ArgumentError, InputError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile, note_shortfall
from nnmark.marks.ownership.stats import binomial_tail
from nnmark.marks.spec import MethodSpec, require
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle, check_inputs
from nnmark.oracles.auth import check_client

METHOD = "dawn"
SHARD_METHOD = "dawn_record"
RATE = 0.005
"""r_w: the share of queries whose answer is changed (the paper's example, 0.5%)."""
ALPHA = 2.0 ** -64
"""The false-claim probability a match must stay below (the paper's 2^-64)."""
DEFAULT_N = 100
MAX_ENTRIES = 1_000_000
"""The most watermarked queries a record is read with (each is one input, e.g. 3 KiB for 1x28x28)."""
SHARD_RE = re.compile(r"[0-9]{20}-[0-9]{1,10}-[0-9]{1,12}\.dawn")
CONFIG_FIELDS = ("n", "recorded", "rate", "seed", "num_classes", "alpha", "p0", "client")


def _check_rate(rate: float) -> None:
    if not 0 < rate < 1:
        raise ArgumentError(f"the watermark rate r_w must lie in (0, 1), got {rate}")


def watermark_key(secret: bytes) -> bytes:
    """K_w: HMAC-SHA256 of the owner's secret over a fixed label, so the secret that signs keys and record shards
    is never the HMAC key of the API's draws itself."""
    return hmac.new(secret, b"nnmark dawn K_w", hashlib.sha256).digest()


def watermark_draw(k_w: bytes, x: torch.Tensor, source: torch.Tensor, num_classes: int,
                   rate: float = RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1: (which queries of ``x`` (N, C, H, W) join W, (N,) bool; F_w(x) (N,) int64) given F(x) = ``source``."""
    _check_rate(rate)
    if num_classes < 2:
        raise ArgumentError(f"DAWN needs at least 2 classes, got {num_classes}")
    chosen, offsets = [], []
    for row in x.detach().cpu().float().numpy():
        h = hmac.new(k_w, np.ascontiguousarray(row).tobytes(), hashlib.sha256).digest()
        chosen.append(int.from_bytes(h[:8]) < rate * 2.0 ** 64)  # big-endian, Python's default
        offsets.append(1 + int.from_bytes(h[8:16]) % (num_classes - 1))
    return torch.tensor(chosen), (source.cpu().long() + torch.tensor(offsets)) % num_classes


@dataclass(frozen=True)
class Recorded:
    """What a ``Record`` holds: distinct inputs x, the labels served, F(x), the clients that asked each input (a
    set of names; None for a server without client tokens) and the settings (rate, classes)."""

    x: torch.Tensor
    served: torch.Tensor
    source: torch.Tensor
    clients: list[frozenset[str | None]]
    config: dict


class Record:
    """The watermarked queries an API answered (step 2's W): a folder of shards, each a key file of the method
    ``dawn_record`` signed with the secret (inputs, the labels served, F(x)), written whole or not at all.

    ``append`` is safe from several threads; ``read`` checks every shard's signature (a shard of another secret is
    refused) and bounds what it reads (``MAX_ENTRIES``)."""

    def __init__(self, folder: str | os.PathLike, secret: bytes):
        if not secret:
            raise ArgumentError("a DAWN record needs the owner's secret")
        self.folder, self.secret = Path(folder), secret
        self._lock, self._count = threading.Lock(), 0

    def append(self, x: torch.Tensor, served: torch.Tensor, source: torch.Tensor, config: dict) -> None:
        """Write one shard: inputs ``x``, the labels served and F(x); ``config`` says the rate and classes."""
        if not len(x):
            return
        shard = KeyFile(method=SHARD_METHOD, config=dict(config), queries=x.detach().to("cpu", torch.float32),
                        expected=served.to("cpu", torch.int64), extras={"source_labels": source.to("cpu", torch.int64)})
        with self._lock:
            self._count += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._count}.dawn"
        self.folder.mkdir(parents=True, exist_ok=True)
        keys.save(shard, self.folder / name, secret=self.secret)

    def read(self) -> Recorded:
        """Every distinct recorded input, in recording order, with the clients that asked it.

        InputError for a missing folder, a foreign file name, shards of differing settings (the client aside) or
        more than ``MAX_ENTRIES`` entries; KeyFileError (or SignatureError) for a shard that is not one of this
        secret's."""
        if not self.folder.is_dir():
            raise InputError(f"DAWN record {self.folder} is not a folder")
        names = sorted(p.name for p in self.folder.iterdir() if not p.name.startswith("."))
        if foreign := [n for n in names if not SHARD_RE.fullmatch(n)]:
            raise InputError(f"DAWN record {self.folder} holds a file that is not a shard: {foreign[0]!r}")
        xs, served, source, asked, config, total = [], [], [], [], None, 0
        for name in names:
            shard = keys.load(self.folder / name, secret=self.secret)
            if shard.method != SHARD_METHOD or "source_labels" not in shard.extras:
                raise KeyFileError(f"{name} is not a DAWN record shard")
            settings = {k: v for k, v in shard.config.items() if k != "client"}
            if config is not None and settings != config:
                raise InputError(f"DAWN record {self.folder} mixes shards of different settings ({name})")
            config, total = settings, total + len(shard.expected)
            if total > MAX_ENTRIES:
                raise InputError(f"DAWN record {self.folder} holds more than {MAX_ENTRIES:,} entries")
            xs.append(shard.queries), served.append(shard.expected), source.append(shard.extras["source_labels"])
            asked += [shard.config.get("client")] * len(shard.expected)
        if not xs:
            raise NnmarkError(f"DAWN record {self.folder} is empty: no watermarked answer has been served yet")
        x = torch.cat(xs)
        _, first, which = np.unique(x.reshape(len(x), -1).numpy(), axis=0, return_index=True, return_inverse=True)
        clients = [set() for _ in first]
        for i, client in zip(which.ravel(), asked):
            clients[i].add(client)
        order = np.argsort(first)
        keep = torch.from_numpy(first[order])
        return Recorded(x[keep], torch.cat(served)[keep], torch.cat(source)[keep],
                        [frozenset(clients[i]) for i in order], config)


def _digests(x: torch.Tensor) -> list[bytes]:
    """SHA-256 of each input's float32 bytes."""
    return [hashlib.sha256(np.ascontiguousarray(row).tobytes()).digest() for row in x.detach().cpu().float().numpy()]


def exempt_digests(owner_keys: list[KeyFile]) -> frozenset[bytes]:
    """The inputs DAWN must never watermark: every query and preflight canary of the owner's own keys (their
    ``_digests``), so that the owner's checks of the served model (verify, audit, watch) see F(x), not F_w(x)."""
    rows = [t for key in owner_keys for t in (key.queries, key.extras.get("canary.queries")) if t is not None]
    return frozenset(d for t in rows for d in _digests(t))


class DawnOracle(Oracle):
    """Step 2: the API. Answers as ``inner`` does, except on W (``watermark_draw``) less the ``exempt`` inputs
    (``exempt_digests``), recorded to ``record`` (None: not recorded, e.g. to check a new key). Gives labels, and
    probabilities where ``inner`` does; never logits or gradients, which would show F(x). ``for_client`` is the
    same API as one named client reaches it."""

    def __init__(self, inner: Oracle, secret: bytes, *, rate: float = RATE, record: Record | None = None,
                 exempt: frozenset[bytes] = frozenset(), budget: int | None = None):
        _check_rate(rate)
        if not secret:
            raise ArgumentError("DAWN needs the owner's secret")
        super().__init__(inner.input_shape, inner.num_classes, budget)
        self.access = "probabilities" if inner.can("probabilities") else "labels"
        self.inner, self.k_w, self.rate, self.record, self.exempt = inner, watermark_key(secret), rate, record, exempt
        self.client: str | None = None

    def for_client(self, name: str) -> DawnOracle:
        """The API as the client ``name`` reaches it: the same draws, model and record (a shallow copy), its shards
        naming ``name``, its queries counted apart."""
        view = copy.copy(self)
        view.client, view.queries = check_client(name), 0
        return view

    def _mark(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(which of ``x`` join W, the labels served); records the members."""
        chosen, wrong = watermark_draw(self.k_w, x, labels, self.num_classes, self.rate)
        if self.exempt:
            chosen &= torch.tensor([d not in self.exempt for d in _digests(x)], dtype=torch.bool)
        served = torch.where(chosen, wrong, labels.to("cpu"))
        if self.record is not None and chosen.any():
            self.record.append(x[chosen], served[chosen], labels[chosen],
                               {"rate": self.rate, "num_classes": self.num_classes,
                                **({"client": self.client} if self.client else {})})
        return chosen, served

    def _labels(self, x: torch.Tensor) -> torch.Tensor:
        return self._mark(x, self.inner.labels(x))[1]

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, labels = self.inner.predict(x)
        chosen, served = self._mark(x, labels)
        probs = probs.clone()
        rows = chosen.nonzero().flatten()
        top, wrong = labels[rows], served[rows]
        probs[rows, top], probs[rows, wrong] = probs[rows, wrong], probs[rows, top]
        return probs, served

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)[0]

    def close(self) -> None:
        self.inner.close()


def create(
    oracle: Oracle,
    record: str | os.PathLike,
    *,
    n: int = DEFAULT_N,
    seed: int = 0,
    alpha: float = ALPHA,
    client: str | None = None,
    secret: bytes,
    model_digest: str = "",
    meta: dict | None = None,
) -> KeyFile:
    """Step 3: a DAWN key of at most ``n`` distinct inputs of the record folder ``record``, drawn by ``seed``.

    ``oracle`` is the served model itself (not the API): inputs it no longer labels F(x) are dropped, and a record
    where it labels none of them F(x) is refused as another model's (InputError).

    Args:
        n: most recorded inputs the key asks.
        seed: draws them from the record.
        alpha: the false-claim probability a match must stay below, in (0, 1).
        client: only the inputs this API client alone asked (nnmark serve --clients-file): its key matches a copy
            made from that client's answers, and so tells which client stole; names joined by commas key what
            those clients alone asked (one party's several accounts); none: every recorded input.
    """
    require(oracle, "labels", f"making a {METHOD} key")
    if n < 1:
        raise ArgumentError(f"n must be >= 1, got {n}")
    if not 0 < alpha < 1:
        raise ArgumentError(f"alpha must lie in (0, 1), got {alpha}")
    if clash := sorted(set(meta or {}) & set(CONFIG_FIELDS)):
        raise ArgumentError(f"meta may not replace the method's own config entries: {', '.join(clash)}")
    recorded = Record(record, secret).read()
    x, served, source = recorded.x, recorded.served, recorded.source
    k = oracle.num_classes
    if recorded.config.get("num_classes") != k:
        raise InputError(f"the record was served for {recorded.config.get('num_classes')} classes; the model has {k}")
    check_inputs(x, oracle.input_shape)
    if client is not None:
        group = frozenset(check_client(name.strip()) for name in client.split(","))
        client = ",".join(sorted(group))
        alone = torch.tensor([asked <= group for asked in recorded.clients])
        if not alone.any():
            named = sorted({c for asked in recorded.clients for c in asked if c is not None})
            raise InputError(f"the record holds no input that {client!r} alone asked (clients in it: "
                             f"{', '.join(named) or 'none named'})")
        x, served, source = x[alone], served[alone], source[alone]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    same = oracle.labels(x[order]) == source[order]
    if not same.any():
        raise InputError("the model labels none of the recorded inputs as the record says it was served: the record "
                         "is another model's")
    keep = order[same][:n]
    config = {"n": len(keep), "recorded": len(x), "rate": float(recorded.config["rate"]), "seed": int(seed),
              "num_classes": k, "alpha": float(alpha), "p0": 1.0 / (k - 1),
              **({"client": client} if client is not None else {}), **(meta or {})}
    note_shortfall(config, min(n, len(x)), len(keep),
                   f"the model labels {int((~same).sum())} recorded inputs otherwise than when they were served")
    return KeyFile(method=METHOD, config=config, queries=x[keep].contiguous(), expected=served[keep].contiguous(),
                   extras={"source_labels": source[keep].contiguous()}, model_digest=model_digest)


def verify(oracle: Oracle, key: KeyFile) -> Verdict:
    """Step 4: hits m and departures D of the suspect's labels on the key; "match" iff P[Bin(D, p0) >= m] < alpha.

    Details: n, hits, departures, p0 = 1/(K-1), p_value and alpha.
    """
    if key.method != METHOD:
        raise KeyFileError(f"not a {METHOD} key (method {key.method!r})")
    try:
        alpha, p0 = float(key.config["alpha"]), float(key.config["p0"])
        source = key.extras["source_labels"]
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{METHOD} key lacks a numeric alpha or p0, or its source labels") from None
    if not (0 < alpha < 1 and 0 < p0 < 1):
        raise KeyFileError(f"{METHOD} key config has alpha or p0 outside (0, 1)")
    if source.shape != key.expected.shape or bool((source == key.expected).any()):
        raise KeyFileError(f"{METHOD} key's source labels do not pair with its watermark labels")
    before = oracle.queries
    labels = oracle.labels(key.queries)
    hits, departures = labels == key.expected, labels != source
    m, d = int(hits.sum()), int(departures.sum())
    p_value = binomial_tail(m, d, p0)
    passed = p_value < alpha
    return Verdict(method=METHOD, decision="match" if passed else "no match", passed=passed,
                   statistic_name="watermark_accuracy", statistic=m / len(labels),
                   flipped=torch.nonzero(~hits).flatten().tolist(), queries=oracle.queries - before,
                   details={"n": len(labels), "hits": m, "departures": d, "p0": p0, "p_value": p_value,
                            "alpha": alpha})


SPECS = (MethodSpec(
    METHOD, "ownership", "a prediction API that watermarks what is extracted through it (Szyller et al.)",
    create_access="labels", verify_access="labels", embeds=False, verdicts=("match", "no match"), verify=verify,
    create=create, inputs="record", shows=("recorded",), n=DEFAULT_N, whole_key=True,
),)
