"""Sensitive sample pairs: a fragile watermark that sandwiches a keyed decision boundary (Gao et al.).

Paper: "Fragile model watermark for integrity protection: leveraging boundary volatility and
sensitive sample-pairing" (Gao, Tang, Yin, Wu, Lu).
Access: input gradients of the logits to make the key; probabilities to verify (a black-box
endpoint that returns probability vectors verifies exactly as the white-box model does).

Stage 0 (Sec. 3.1): a secret per user gives an N x 2 linear layer W placed after the model's N
outputs (the "binary head"). Stage 1 (eq. 6): random pixels are optimised to minimise
combined_loss = lambda * variance(head output) - sum_i |output_i|, which brings them to the head's
boundary while keeping the activations large. Stage 2 (eq. 7): each sample then steps
x <- clip(x + alpha * sign(grad_x J(w, x, y)), 0, 1) until its binary label flips; the samples just
before and just after the crossing form a pair. Verification: a pair detects tampering when either
member changes its binary label.

Choices where the paper is silent:

- Head (stage 0): seed = first 8 bytes (little-endian) of HMAC-SHA256(secret, msg) with
  msg = b"nnmark.pairing.head/v1" + len(u) + u + N, u the UTF-8 user id, lengths and N as 8-byte
  little-endian integers; W ~ N(0, 1) of shape (2, N) in float64 from a ``torch.Generator`` with that
  seed, no bias, and each row minus its mean. Zero-sum rows make W @ log p = W @ z (log-softmax is
  z minus one shared constant), so the head decides the same on logits and on log-probabilities.
  W is never stored: verify re-derives it from the secret and the key's ``user_id``.
- Decision path: binary label = argmax of h = W @ log(max(p, 2**-149)) in float64, p the float32
  probabilities an endpoint returns; margin = h_1 - h_0 (label 1 iff margin > 0). The clamp
  replaces only probabilities that underflowed to exactly 0 in float32 (2**-149 is the smallest
  positive float32) so their log is finite. Key creation (crossing tests, expected labels) and
  verification both go through ``oracle.probabilities``.
- Gradients (stages 1 and 2) are taken on the logits (``on="logits"``), where h = W @ z exactly.
- variance(h) is torch's default (unbiased, over the 2 head outputs): (h_0 - h_1)^2 / 2.
- Activation term: eq. 6 sums over i = 1..N, the model's N logits, and the text maximises "the output
  logits" of "the final layer": ``activation_on="logits"`` (default) follows that; ``"head"`` sums
  |h_0| + |h_1| instead. lambda is not given by the paper; the default (``DEFAULT_LAMBDA``) was chosen
  on LeNet-5/MNIST so that stage 1 ends near the boundary.
- Stage 1 uses Adam (the paper names no optimiser) at lr = 1e-3, clips to [0, 1] after each step, and
  stops when the relative change of the summed batch loss stays below ``tol`` for ``patience``
  consecutive iterations, or after ``max_itr`` (paper: 10,000).
- Stage 2: J = cross-entropy of the head output against y, the sample's label after stage 1. Samples
  step together; each freezes once it has crossed; samples that do not cross within ``max_steps`` are
  dropped and counted.
- ``margin`` (not in the paper; 0 gives the paper's adjacent pair): the "before" member keeps
  stepping back (descending J) and the "after" member keeps stepping on (ascending J) until each has
  |margin| >= ``margin`` on its own side, so benign numerics (float64, oneDNN off, one sample per
  call, ONNX Runtime) do not flip it. A member that does not get there within ``max_steps`` drops its
  pair. Default ``DEFAULT_MARGIN`` = 1e-4, set by measurement (``nnmark bench integrity``): margin-0
  pairs of the untouched LeNet-5 flipped in every one of those environments (1-7 of 300 members per
  environment and seed), 1e-4 was the smallest margin with no false alarm in any of them, and it
  costs less detection than 1e-3 (after a lr-1e-6 fine-tune, 39% vs 0% of pairs).
- Expected labels are asked once more with all 2n queries in one batch, as verify asks them (float32
  outputs can depend on the batch); pairs whose members then agree are dropped and counted.

Arguments (paper defaults): lr = 1e-3, max_itr = 10,000, alpha = 1e-6 (1e-4 for VGG16); the paper
makes 150 pairs. Inputs (N, C, H, W) in [0, 1].

Example::

    key = pairing.create(TorchOracle(model, (1, 28, 28)), 150, secret=b"s3cret", user_id="alice")
    verdict = pairing.verify(ProbabilitiesOracle(TorchOracle(suspect, (1, 28, 28))), key, secret=b"s3cret")
"""

from __future__ import annotations

import hashlib
import hmac
import typing
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nnmark.errors import ArgumentError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile, check_query_count, note_shortfall
from nnmark.marks.spec import MethodSpec, require
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle

METHOD = "pairs"
HEAD_TAG = b"nnmark.pairing.head/v1"
PAPER_LR = 1e-3
PAPER_MAX_ITR = 10_000
PAPER_ALPHA = 1e-6
DEFAULT_LAMBDA = 10.0
DEFAULT_MAX_STEPS = 10_000
DEFAULT_MARGIN = 1e-4
PAPER_PAIRS = 150
DEFAULT_TOL = 1e-6
DEFAULT_PATIENCE = 20
Activation = Literal["logits", "head"]
ACTIVATIONS: tuple[Activation, ...] = typing.get_args(Activation)
DEFAULT_ACTIVATION: Activation = "logits"
SMALLEST_PROBABILITY = 2.0**-149
"""The smallest positive float32: probabilities that underflowed to 0 are clamped to it before the log."""


# --- stage 0: the per-user binary head -----------------------------------------------------------------


def _check_secret_and_user(secret: bytes, user_id: str) -> None:
    if not (isinstance(secret, (bytes, bytearray)) and secret):
        raise ArgumentError("secret must be non-empty bytes")
    if not (isinstance(user_id, str) and user_id):
        raise ArgumentError("user_id must be a non-empty string")


def head_seed(secret: bytes, user_id: str, num_classes: int) -> int:
    """The generator seed of a user's head: first 8 bytes of HMAC-SHA256(secret, tag | len(u) | u | N)."""
    _check_secret_and_user(secret, user_id)
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ArgumentError("num_classes must be an int >= 2")
    user = user_id.encode("utf-8")
    msg = HEAD_TAG + len(user).to_bytes(8, "little") + user + num_classes.to_bytes(8, "little")
    return int.from_bytes(hmac.new(bytes(secret), msg, hashlib.sha256).digest()[:8], "little")


def derive_head(secret: bytes, user_id: str, num_classes: int) -> torch.Tensor:
    """Stage 0: the user's N x 2 layer W, stored as (2, N) float64 with rows that sum to zero."""
    gen = torch.Generator().manual_seed(head_seed(secret, user_id, num_classes))
    w = torch.randn((2, num_classes), generator=gen, dtype=torch.float64)
    return w - w.mean(dim=1, keepdim=True)


def head_outputs(scores: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """h = W @ s for each row of (n, N) logits or log-probabilities s, as (n, 2) float64."""
    return scores.double() @ head.T


def log_probabilities(p: torch.Tensor) -> torch.Tensor:
    """log(max(p, 2**-149)) in float64: finite even where a float32 probability underflowed to 0."""
    return p.double().clamp_min(SMALLEST_PROBABILITY).log()


def binary_decision(p: torch.Tensor, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary labels (n,) int64 and margins h_1 - h_0 (n,) float64 from endpoint probabilities p (n, N)."""
    h = head_outputs(log_probabilities(p), head)
    margin = h[:, 1] - h[:, 0]
    return (margin > 0).long(), margin


def binary_labels(oracle: Oracle, head: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ask ``oracle`` the probabilities of x (counted queries) and return their binary labels and margins."""
    return binary_decision(oracle.probabilities(x), head)


# --- stage 1: approach the boundary with large activations (eq. 6) -------------------------------------


def combined_loss(logits: torch.Tensor, head: torch.Tensor, lam: float,
                  activation_on: Activation = DEFAULT_ACTIVATION) -> torch.Tensor:
    """Eq. 6 per sample: lambda * variance(h) - sum_i |output_i|; output = the N logits or the 2 head outputs."""
    h = head_outputs(logits, head)
    activation = logits.double() if activation_on == "logits" else h
    return lam * h.var(dim=1) - activation.abs().sum(dim=1)


def approach_boundary(
    oracle: Oracle,
    head: torch.Tensor,
    n: int,
    *,
    lam: float,
    lr: float,
    max_itr: int,
    tol: float,
    patience: int,
    activation_on: str,
    seed: int,
    progress: bool = False,
) -> tuple[torch.Tensor, int, list[float]]:
    """Stage 1: Adam on uniform random pixels (``seed``) minimising eq. 6, clipped to [0, 1] after each step.

    One ``oracle.gradient`` per iteration for all n samples. Stops after ``max_itr`` iterations or when
    |L_t - L_{t-1}| / |L_{t-1}| < ``tol`` for ``patience`` consecutive iterations (L = summed batch loss).
    Returns (x, iterations run, L before each iteration).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *oracle.input_shape), generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return combined_loss(logits, head, lam, activation_on)

    history: list[float] = []
    calm = 0
    itr = 0
    for itr in tqdm(range(1, max_itr + 1), desc="pairs stage 1", unit="itr", disable=not progress, leave=False):
        loss, grad = oracle.gradient(loss_fn, x.detach(), on="logits")
        total = loss.double().sum().item()
        if history:
            change = abs(total - history[-1]) / max(abs(history[-1]), 1e-12)
            calm = calm + 1 if change < tol else 0
        history.append(total)
        if calm >= patience:
            return x.detach(), itr - 1, history
        x.grad = grad
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return x.detach(), itr, history


# --- stage 2: cross the boundary in small signed steps (eq. 7) -----------------------------------------


def head_cross_entropy(logits: torch.Tensor, head: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """J(w, x, y) per sample: cross-entropy of the head output h = W @ z against the binary label y."""
    return F.cross_entropy(head_outputs(logits, head), y, reduction="none")


def _step(
    oracle: Oracle, head: torch.Tensor, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor, alpha: float
) -> torch.Tensor:
    """x <- clip(x + direction * alpha * sign(grad_x J(w, x, y)), 0, 1), one gradient call for the batch."""
    _, grad = oracle.gradient(lambda z, labels: head_cross_entropy(z, head, labels), x, on="logits", per_sample=(y,))
    return (x + direction.view(-1, 1, 1, 1) * alpha * grad.sign()).clamp_(0.0, 1.0)


def cross_boundary(
    oracle: Oracle, head: torch.Tensor, x: torch.Tensor, *, alpha: float, max_steps: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 2 (eq. 7): every sample ascends J against its own label y until its binary label flips.

    Batched over the samples that have not crossed yet: per step one gradient call and one probabilities
    call (the crossing is judged on the decision path verify uses). Returns (before, after, y, crossed, steps):
    the last sample with label y and the first with label 1 - y, y (n,), a mask of the samples that
    crossed within ``max_steps``, and the steps each took.
    """
    y, _ = binary_labels(oracle, head, x)
    before, after = x.clone(), x.clone()
    steps = torch.zeros(len(x), dtype=torch.int64)
    active = torch.ones(len(x), dtype=torch.bool)
    up = torch.ones(len(x))
    for _ in tqdm(range(max_steps), desc="pairs stage 2", unit="step", disable=not progress, leave=False):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        new = _step(oracle, head, after[idx], y[idx], up[idx], alpha)
        label, _ = binary_labels(oracle, head, new)
        before[idx] = after[idx]
        after[idx] = new
        steps[idx] += 1
        active[idx[label != y[idx]]] = False
    return before, after, y, ~active, steps


def widen_pairs(
    oracle: Oracle,
    head: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    margin: float,
    max_steps: int,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``margin`` option: move "before" back (descend J) and "after" on (ascend J) until |h_1 - h_0| >= margin.

    All 2n members step together; each freezes once it carries its target label (y for "before",
    1 - y for "after") with at least ``margin``. Returns (before, after, ok, steps): ok marks the pairs
    whose both members got there within ``max_steps``; steps (n,) is the larger of the two members' counts.
    """
    n = len(y)
    x = torch.cat([before, after])
    target = torch.cat([y, 1 - y])
    direction = torch.cat([-torch.ones(n), torch.ones(n)])
    steps = torch.zeros(2 * n, dtype=torch.int64)

    def done(label: torch.Tensor, m: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return (label == target[idx]) & (m.abs() >= margin)

    y2 = y.repeat(2)
    label, m = binary_labels(oracle, head, x)
    active = ~done(label, m, torch.arange(2 * n))
    for _ in tqdm(range(max_steps), desc="pairs margin", unit="step", disable=not progress, leave=False):
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        x[idx] = _step(oracle, head, x[idx], y2[idx], direction[idx], alpha)
        steps[idx] += 1
        label, m = binary_labels(oracle, head, x[idx])
        active[idx[done(label, m, idx)]] = False
    ok = ~(active[:n] | active[n:])
    return x[:n], x[n:], ok, torch.maximum(steps[:n], steps[n:])


# --- the key and its verification ---------------------------------------------------------------------


def final_labels(
    oracle: Oracle, head: torch.Tensor, queries: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The key's expected labels, asked as verify asks them: the whole (2n, C, H, W) batch in one call.

    A model's float32 outputs can depend on the batch they are computed in, so a pair that crossed in
    a smaller batch may not straddle the boundary here; such pairs are dropped and the rest asked
    again until every pair's members disagree. Returns (queries, labels, margins, kept pair mask (n,)).
    """
    pairs = queries.float().view(-1, 2, *queries.shape[1:])
    kept = torch.ones(len(pairs), dtype=torch.bool)
    while kept.any():
        q = pairs[kept].flatten(0, 1).contiguous()
        labels, margins = binary_labels(oracle, head, q)
        ok = labels[0::2] != labels[1::2]
        if ok.all():
            return q, labels, margins, kept
        kept[kept.nonzero().flatten()[~ok]] = False
    raise NnmarkError("no pair straddles the boundary when the key's queries are asked together")


def create(
    oracle: Oracle,
    n_pairs: int = PAPER_PAIRS,
    *,
    secret: bytes,
    user_id: str,
    lam: float = DEFAULT_LAMBDA,
    lr: float = PAPER_LR,
    max_itr: int = PAPER_MAX_ITR,
    tol: float = DEFAULT_TOL,
    patience: int = DEFAULT_PATIENCE,
    alpha: float = PAPER_ALPHA,
    max_steps: int = DEFAULT_MAX_STEPS,
    margin: float = DEFAULT_MARGIN,
    activation_on: Activation = DEFAULT_ACTIVATION,
    seed: int = 0,
    model_digest: str = "",
    progress: bool = False,
) -> KeyFile:
    """Make a "pairs" key: 2n queries, pair i at rows 2i ("before") and 2i + 1 ("after"), with their binary labels.

    Tries ``n_pairs`` stage-1 samples; pairs that do not cross (or do not reach ``margin``) within
    ``max_steps`` are dropped and counted in the config. Raises AccessError without gradients,
    ArgumentError for bad arguments and NnmarkError when no pair survives.

    Args:
        n_pairs: pairs to try (the paper: 150).
        secret: the owner's secret; with ``user_id`` it derives the secret binary head.
        user_id: whom the key is for; with the secret it derives the secret binary head.
        lam: lambda of eq. 6.
        lr: stage-1 Adam step.
        max_itr: stage-1 iterations at most.
        tol, patience: stage 1 stops once the loss changes by less than tol (relative) patience times in a row.
        alpha: stage-2 step (eq. 7).
        max_steps: stage-2 steps at most.
        margin: head margin each member keeps from the boundary (0: the paper's adjacent pair; the default is
            the smallest with no false alarm in other numeric environments).
        activation_on: the stage-1 loss on the logits or on the binary head's outputs.
        seed: chooses the random starting pixels.
    """
    require(oracle, "gradients", "making a pairs key")
    _check_secret_and_user(secret, user_id)
    check_query_count(n_pairs, "n_pairs", queries_each=2)
    if activation_on not in ACTIVATIONS:
        raise ArgumentError(f"activation_on must be one of {ACTIVATIONS}, got {activation_on!r}")
    if not (lam >= 0 and lr > 0 and alpha > 0 and margin >= 0 and tol >= 0):
        raise ArgumentError("need lam >= 0, lr > 0, alpha > 0, margin >= 0 and tol >= 0")
    if max_itr < 0 or max_steps < 1 or patience < 1:
        raise ArgumentError("need max_itr >= 0, max_steps >= 1 and patience >= 1")
    head = derive_head(secret, user_id, oracle.num_classes)
    x, itr, _ = approach_boundary(
        oracle, head, n_pairs, lam=lam, lr=lr, max_itr=max_itr, tol=tol, patience=patience,
        activation_on=activation_on, seed=seed, progress=progress,
    )
    before, after, y, ok, steps = cross_boundary(oracle, head, x, alpha=alpha, max_steps=max_steps, progress=progress)
    before, after, y, steps = before[ok], after[ok], y[ok], steps[ok]
    no_crossing = n_pairs - len(y)
    wide_steps = torch.zeros_like(steps)
    if margin > 0 and len(y):
        before, after, wide, wide_steps = widen_pairs(
            oracle, head, before, after, y, alpha=alpha, margin=margin, max_steps=max_steps, progress=progress
        )
        before, after, steps, wide_steps = before[wide], after[wide], steps[wide], wide_steps[wide]
    no_margin = n_pairs - no_crossing - len(steps)
    if len(steps) == 0:
        raise NnmarkError(f"no pair crossed the boundary within max_steps={max_steps}; raise max_steps or alpha")
    queries, expected, margins, kept = final_labels(oracle, head, torch.stack([before, after], dim=1).flatten(0, 1))
    steps, wide_steps = steps[kept], wide_steps[kept]
    config = {
        "user_id": user_id, "num_classes": oracle.num_classes, "lam": float(lam), "lr": float(lr),
        "max_itr": int(max_itr), "tol": float(tol), "patience": int(patience), "alpha": float(alpha),
        "max_steps": int(max_steps), "margin": float(margin), "activation_on": activation_on, "seed": int(seed),
        "n_pairs_requested": n_pairs, "n_pairs": len(steps), "dropped": n_pairs - len(steps),
        "dropped_no_crossing": no_crossing, "dropped_margin": no_margin,
        "dropped_batch": len(kept) - len(steps), "stage1_iterations": itr,
    }
    reasons = [(no_crossing, f"did not cross the boundary within max_steps={max_steps}"),
               (no_margin, f"did not reach margin {margin} within max_steps={max_steps}"),
               (len(kept) - len(steps), "changed label when the key's queries were asked together")]
    why = "; ".join(f"{count} {reason}" for count, reason in reasons if count)
    note_shortfall(config, n_pairs, len(steps), f"{why}; raise max_steps or alpha, or lower margin")
    return KeyFile(
        method=METHOD,
        config=config,
        queries=queries,
        expected=expected,
        extras={"margins": margins, "crossing_steps": steps, "margin_steps": wide_steps},
        model_digest=model_digest,
    )


def _check_key(key: KeyFile) -> str:
    """The key's user id; KeyFileError unless ``key`` is a well-formed pairs key."""
    if key.method != METHOD:
        raise KeyFileError(f"not a {METHOD} key: method is {key.method!r}")
    user_id = key.config.get("user_id")
    if not (isinstance(user_id, str) and user_id):
        raise KeyFileError("pairs key has no user_id in its config")
    if len(key.expected) % 2 or (key.expected > 1).any():
        raise KeyFileError("pairs key must hold an even number of queries with binary (0/1) expected labels")
    return user_id


def verify(oracle: Oracle, key: KeyFile, *, secret: bytes) -> Verdict:
    """TAMPERED when any pair has a member whose binary label differs from the key's; needs probabilities.

    Statistic: pair_detection_rate, the fraction of pairs with a changed member. The head is re-derived
    from ``secret``, the key's user id and ``oracle.num_classes`` (a wrong secret gives another head,
    under which the two members of a pair, a step apart, almost always share a label: every pair flips).
    """
    user_id = _check_key(key)
    made_for = key.config.get("num_classes", oracle.num_classes)
    if made_for != oracle.num_classes:
        raise KeyFileError(f"pairs key was made for a model with {made_for} classes; this one has {oracle.num_classes}")
    head = derive_head(secret, user_id, oracle.num_classes)
    before = oracle.queries
    observed, margins = binary_labels(oracle, head, key.queries)
    changed = observed != key.expected
    pair_changed = changed.view(-1, 2).any(dim=1)
    return Verdict(
        method=key.method,
        decision="tampered" if pair_changed.any() else "intact",
        passed=not pair_changed.any().item(),
        statistic_name="pair_detection_rate",
        statistic=pair_changed.double().mean().item(),
        flipped=changed.nonzero().flatten().tolist(),
        queries=oracle.queries - before,
        details={
            "n": len(key.expected),
            "n_pairs": len(pair_changed),
            "sample_change_rate": changed.double().mean().item(),
            "flipped_pairs": pair_changed.nonzero().flatten().tolist(),
            "flipped_samples": changed.nonzero().flatten().tolist(),
            "min_abs_margin": margins.abs().min().item(),
        },
    )


SPECS = (MethodSpec(
    METHOD, "integrity", "sensitive sample pairs around a secret per-user binary head (Gao et al.)",
    create_access="gradients", verify_access="probabilities", embeds=False, verdicts=("intact", "tampered"),
    verify=verify, keyed=True, create=create, inputs="none",
    describe=lambda key: {"pairs": key.config["n_pairs"], "dropped": key.config["dropped"]},
    example="--user-id alice",
),)
