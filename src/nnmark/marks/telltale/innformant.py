"""iNNformant: boundary samples as telltale watermarks (Schlögl, Kupek, Böhme).

Paper: "iNNformant: Boundary Samples as Telltale Watermarks", IH&MMSec 2021,
https://doi.org/10.1145/3437880.3460411.
Access: a white-box local oracle (gradients) and, per candidate environment (the paper's
microarchitectures, MAs), labels and probabilities; gradients from an environment when it gives
them, else from the local model. Verification and identification need labels only.

A natural image x is moved to the decision boundary with a modified i-FGSM (eq. 2) on the cheap
local oracle (local phase), then refined with the environments' answers until one environment gives
a label no other gives (remote phase, Algorithm 1, 1 vs n). The key holds these boundary samples and
the label each environment gives; a suspect's labels name the environment it runs in.

Symbols and defaults (paper): delta_conf = gap between the two highest probabilities; alpha = 1e-4
local, 2e-4 remote; target = 1e-6 (ideally 1e-7); local_max = 2000; remote_max = 500. Inputs
(N, C, H, W) in [0, 1].

Choices where the paper leaves room:
- m(x) (eq. 2) is the logit margin of the original label y0, m = z_y0 - max_{k != y0} z_k: positive
  while the label is y0, zero on its boundary. c = -1 while the current label is y0 (descend m, toward
  the boundary) and +1 once it is not (ascend m, back toward it), so c * sign(grad m) always points
  at the boundary. y0 is the local model's label of the source, not the dataset label (the paper's
  "misclassified"), so a source the model gets wrong still works.
- The stall rule: "predictions identical in two consecutive steps" is read as "the same label", and
  the step scale s doubles (capped at ``max_scale``) each step the label stays the same and resets to
  1 when it changes; the step is c * delta_conf * alpha * s * sign(grad m), delta_conf always the
  current one. In the remote phase "the same" means every environment's label is unchanged; the
  rule applies there too (without it a step of delta_conf * alpha ~ 1e-10 does not move a float32
  pixel at all).
- Every step is clipped to [0, 1].
- ``direction="l2"`` (not in the paper, its future work) steps along grad m / ||grad m||_2 instead of
  sign(grad m). Sign steps find the L-infinity-closest boundary point, which spreads the perturbation
  over every pixel; on LeNet-5/mnist5k float32 vs float64 (50 test images) the median PSNR rises from
  20.1 dB (sign) to 23.2 dB, about the 23.5 dB a DeepFool-style minimal L2 perturbation needs to reach
  any boundary of the same images (the ceiling), at the same success rate (72%).
- Remote target (Algorithm 1 lines 8-14): group environments by label, take the smallest group (ties:
  the one holding the earliest environment in the given order); all in one group: the environment
  with the smallest delta_conf; else the group's environment with the second highest delta_conf (a
  group of one ends the search). Its label sets c, its delta_conf the step, its gradient of m the
  direction; an environment without gradients (ONNX Runtime, an HTTP endpoint) contributes its
  label and delta_conf, and the gradient comes from the local white-box model at the same x. With two
  environments this is the paper's 1 vs 1 case: the same label on both (flipped on neither or on
  both) -> approach the nearer boundary (smaller delta_conf); different labels -> done.
- Labels are what ``oracle.labels`` answers (what a verifier sees); delta_conf comes from
  ``oracle.probabilities``. A remote step therefore costs 2 queries per environment and sample plus
  one gradient query.
- Labels of a float32 model can depend on the batch a sample sits in (LeNet-5 logits differ by up
  to ~3e-6 between batches of 1 and 50 here) and boundary samples sit ~1e-7 from a boundary, so ``create`` re-asks every environment the kept
  samples in one batch, as a verifier will, and keeps only those that still single out an
  environment (repeated until stable); those answers are the ones recorded.

Example::

    oracles = {name: envs.get(name).oracle(model, (1, 28, 28)) for name in ("float32", "float64")}
    key = innformant.create(oracles["float32"], oracles, data.test.x[:50])
    consistent, table = innformant.identify(envs.get("float64").oracle(model, (1, 28, 28)), key)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from nnmark.errors import ArgumentError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile, note_shortfall
from nnmark.marks.spec import MethodSpec, require
from nnmark.marks.verdict import Verdict
from nnmark.metrics import psnr
from nnmark.oracles import Oracle, check_inputs

METHOD = "innformant"
LOCAL_ALPHA = 1e-4
"""alpha of the local phase (eq. 2 step scale)."""
REMOTE_ALPHA = 2e-4
"""alpha of the remote phase."""
TARGET = 1e-6
"""The local phase stops once delta_conf is below this."""
LOCAL_MAX = 2000
"""Local-phase steps at most."""
REMOTE_MAX = 500
"""Remote-phase steps at most."""
Direction = Literal["sign", "l2"]
DEFAULT_DIRECTION: Direction = "sign"
DEFAULT_SOURCES = 50
"""Natural images a key starts from (the CLI's --n)."""
UNKNOWN = "unknown environment"
DIFFERENT_MODEL = "different model"
MAX_SCALE = 2.0**32
EXTRAS = ("env_labels", "sources", "source_labels", "source_index", "local_steps", "remote_steps", "psnr")
"""The extra tensors every iNNformant key holds."""


def delta_conf(p: torch.Tensor) -> torch.Tensor:
    """delta_conf: the gap between the two highest probabilities of each row of (N, K)."""
    top = p.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def margin(logits: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """m(x) = z_y0 - max_{k != y0} z_k per row of logits (N, K), y0 = ``original`` (N,)."""
    own = logits.gather(1, original[:, None]).squeeze(1)
    others = logits.scatter(1, original[:, None], float("-inf"))
    return own - others.max(dim=1).values


def correctness_sign(labels: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """c: -1 where the current label is the original one (descend m), +1 where it is not (ascend m)."""
    return torch.where(labels == original, -1.0, 1.0)


def stall_scale(scale: torch.Tensor, same: torch.Tensor, max_scale: float = MAX_SCALE) -> torch.Tensor:
    """The stall rule: s doubles (at most ``max_scale``) where the prediction stayed the same, else resets to 1."""
    return torch.where(same, (scale * 2).clamp(max=max_scale), torch.ones_like(scale))


def step_direction(grad: torch.Tensor, direction: Direction = DEFAULT_DIRECTION) -> torch.Tensor:
    """The direction of a step from grad_x m(x) (N, C, H, W), float64.

    "sign": sign(grad), eq. 2 as printed. "l2": grad / ||grad||_2 * sqrt(C*H*W), the gradient direction
    scaled to the L2 norm of a full sign vector, so alpha means the same per-pixel RMS step; it reaches the
    boundary along the steepest L2 path (the paper's future work: a better base algorithm for PSNR).
    """
    g = grad.double()
    if direction == "sign":
        return g.sign()
    if direction == "l2":
        norm = g.flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        return g / norm[:, None, None, None] * g[0].numel() ** 0.5
    raise ArgumentError("direction must be 'sign' or 'l2'")


def boundary_step(x, grad, c, delta, alpha: float, scale, direction: Direction = DEFAULT_DIRECTION) -> torch.Tensor:
    """Eq. 2 with the stall scale: x <- clip(x + c * delta_conf * alpha * s * sign(grad_x m(x)), 0, 1).

    ``direction="l2"`` replaces sign(grad) by :func:`step_direction`'s "l2". Computed in float64, stored
    as float32.
    """
    size = (c * delta * alpha * scale).to(torch.float64)
    return (x.double() + size[:, None, None, None] * step_direction(grad, direction)).clamp(0.0, 1.0).to(x.dtype)


def _margin_gradient(oracle: Oracle, x: torch.Tensor, original: torch.Tensor):
    """One forward/backward: (grad_x m(x), logits) for the batch ``x``."""
    seen: list[torch.Tensor] = []

    def loss(logits, y0):  # called once per micro-batch of the oracle's
        seen.append(logits.detach().cpu())
        return margin(logits, y0)

    _, grad = oracle.gradient(loss, x, on="logits", per_sample=(original,))
    return grad, torch.cat(seen)


@dataclass
class PhaseResult:
    """Per-sample outcome of a phase: samples (N, C, H, W), steps (N,) int64, success (N,) bool."""

    samples: torch.Tensor
    steps: torch.Tensor
    success: torch.Tensor


def local_phase(
    oracle: Oracle,
    x: torch.Tensor,
    *,
    alpha: float = LOCAL_ALPHA,
    target: float = TARGET,
    local_max: int = LOCAL_MAX,
    original: torch.Tensor | None = None,
    direction: Direction = DEFAULT_DIRECTION,
    max_scale: float = MAX_SCALE,
    progress: bool = False,
) -> PhaseResult:
    """Local phase of Algorithm 1 (lines 2-5) for a whole batch on a white-box oracle.

    Each step is one forward/backward of all samples still running: predict, stop a sample whose
    delta_conf < ``target`` (success), else take the step of eq. 2 with its own stall scale s.
    ``original`` are the y0 labels (default: the oracle's labels of ``x``). At most ``local_max`` steps.
    ``direction``: "sign" (eq. 2) or "l2" (see :func:`step_direction`). delta_conf and the label come from
    the logits of the step's own forward pass (softmax in float64), so a step costs one query per sample.
    """
    check_inputs(x, oracle.input_shape)
    if alpha <= 0 or target <= 0 or local_max < 0 or direction not in ("sign", "l2"):
        raise ArgumentError("alpha and target must be > 0, local_max >= 0, direction 'sign' or 'l2'")
    x = x.detach().float().clone()
    n = len(x)
    original = oracle.labels(x) if original is None else original
    steps = torch.zeros(n, dtype=torch.int64)
    success = torch.zeros(n, dtype=torch.bool)
    scale = torch.ones(n, dtype=torch.float64)
    previous = torch.full((n,), -1, dtype=torch.int64)
    active = torch.arange(n)
    for i in tqdm(range(local_max + 1), desc="innformant local", disable=not progress, leave=False):
        grad, logits = _margin_gradient(oracle, x[active], original[active])
        delta = delta_conf(torch.softmax(logits.double(), dim=1))
        labels = logits.argmax(dim=1)
        close = delta < target
        success[active[close]] = True
        keep = ~close
        if i == local_max or not keep.any():
            break
        active, grad, delta, labels = active[keep], grad[keep], delta[keep], labels[keep]
        scale[active] = stall_scale(scale[active], labels == previous[active], max_scale)
        previous[active] = labels
        c = correctness_sign(labels, original[active])
        x[active] = boundary_step(x[active], grad, c, delta, alpha, scale[active], direction)
        steps[active] += 1
    return PhaseResult(x, steps, success)


def _answers(env_oracles: dict[str, Oracle], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every environment's labels (N, n) and delta_conf (N, n) for the batch ``x``."""
    labels = torch.stack([o.labels(x) for o in env_oracles.values()], dim=1)
    delta = torch.stack([delta_conf(o.probabilities(x).double()) for o in env_oracles.values()], dim=1)
    return labels, delta


def singled_out(labels: torch.Tensor) -> torch.Tensor:
    """Per row of environment labels (N, n): the first environment whose label no other gives, else -1."""
    counts = (labels[:, :, None] == labels[:, None, :]).sum(dim=2)
    unique = counts == 1
    first = unique.int().argmax(dim=1)
    return torch.where(unique.any(dim=1), first, torch.full_like(first, -1))


def target_environment(labels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 lines 8-14 per row: the environment whose boundary to approach next.

    Smallest label group g (ties: the group of the earliest environment); |g| = n: the environment with
    the smallest delta_conf; else g's environment with the second highest delta_conf.
    """
    n = labels.shape[1]
    counts = (labels[:, :, None] == labels[:, None, :]).sum(dim=2)
    first_smallest = (counts == counts.min(dim=1, keepdim=True).values).int().argmax(dim=1)
    group = labels == labels.gather(1, first_smallest[:, None])
    second = delta.masked_fill(~group, float("-inf")).topk(min(2, n), dim=1).indices[:, -1]
    return torch.where(counts.min(dim=1).values == n, delta.argmin(dim=1), second)


def remote_phase(
    local_oracle: Oracle,
    env_oracles: dict[str, Oracle],
    x: torch.Tensor,
    *,
    alpha: float = REMOTE_ALPHA,
    remote_max: int = REMOTE_MAX,
    original: torch.Tensor | None = None,
    direction: Direction = DEFAULT_DIRECTION,
    max_scale: float = MAX_SCALE,
    progress: bool = False,
) -> PhaseResult:
    """Remote phase of Algorithm 1 (lines 6-15, 1 vs n) for a whole batch.

    Each step asks every environment all samples still running (labels and probabilities), stops a sample
    for which some environment gives a label no other gives (success), and moves the others by eq. 2
    toward the boundary of their :func:`target_environment`, with the gradient of m from that environment
    (one batched call per environment targeted) or, where it gives none, from ``local_oracle``.
    ``original``: the y0 labels for c (default: the local oracle's labels of ``x``); ``direction`` as in
    :func:`local_phase`.
    """
    if len(env_oracles) < 2:
        raise ArgumentError("the remote phase needs at least two environments")
    for name, o in env_oracles.items():
        require(o, "probabilities", f"the remote phase in environment {name!r}")
        check_inputs(x, o.input_shape)
    require(local_oracle, "gradients", "the local phase")
    if alpha <= 0 or remote_max < 0 or direction not in ("sign", "l2"):
        raise ArgumentError("alpha must be > 0, remote_max >= 0, direction 'sign' or 'l2'")
    x = x.detach().float().clone()
    n = len(x)
    original = local_oracle.labels(x) if original is None else original
    oracles = list(env_oracles.values())
    steps = torch.zeros(n, dtype=torch.int64)
    success = torch.zeros(n, dtype=torch.bool)
    scale = torch.ones(n, dtype=torch.float64)
    previous = torch.full((n, len(oracles)), -1, dtype=torch.int64)
    active = torch.arange(n)
    for i in tqdm(range(remote_max + 1), desc="innformant remote", disable=not progress, leave=False):
        labels, delta = _answers(env_oracles, x[active])
        found = singled_out(labels) >= 0
        success[active[found]] = True
        keep = ~found
        if i == remote_max or not keep.any():
            break
        active, labels, delta = active[keep], labels[keep], delta[keep]
        r = target_environment(labels, delta)
        grad = torch.empty_like(x[active])
        for e in r.unique().tolist():
            rows = r == e
            source = oracles[e] if oracles[e].can("gradients") else local_oracle
            grad[rows], _ = _margin_gradient(source, x[active[rows]], original[active[rows]])
        scale[active] = stall_scale(scale[active], (labels == previous[active]).all(dim=1), max_scale)
        previous[active] = labels
        label_r = labels.gather(1, r[:, None]).squeeze(1)
        delta_r = delta.gather(1, r[:, None]).squeeze(1)
        c = correctness_sign(label_r, original[active])
        x[active] = boundary_step(x[active], grad, c, delta_r, alpha, scale[active], direction)
        steps[active] += 1
    return PhaseResult(x, steps, success)


def confirm(env_oracles: dict[str, Oracle], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the samples that single out an environment when asked together, as a verifier asks them.

    Re-asks the kept batch until no sample drops out. Returns (kept indices into ``x``, labels (k, n)).
    """
    keep = torch.arange(len(x))
    while len(keep):
        labels = torch.stack([o.labels(x[keep]) for o in env_oracles.values()], dim=1)
        ok = singled_out(labels) >= 0
        if ok.all():
            return keep, labels
        keep = keep[ok]
    return keep, torch.empty(0, len(env_oracles), dtype=torch.int64)


def create(
    local_oracle: Oracle,
    env_oracles: dict[str, Oracle],
    sources: torch.Tensor,
    *,
    reference: str | None = None,
    local_alpha: float = LOCAL_ALPHA,
    remote_alpha: float = REMOTE_ALPHA,
    target: float = TARGET,
    local_max: int = LOCAL_MAX,
    remote_max: int = REMOTE_MAX,
    direction: Direction = DEFAULT_DIRECTION,
    model_digest: str = "",
    meta: dict | None = None,
    progress: bool = False,
) -> KeyFile:
    """Make an iNNformant key: boundary samples from ``sources`` that single out one of ``env_oracles``.

    ``reference`` is the licensed environment (default: the first of ``env_oracles``); its labels are the
    key's expected labels. ``direction``: "sign" (the paper) or "l2" (higher PSNR, see
    :func:`step_direction`). Extras: "env_labels" (N, n) int64 in the config's "environments" order,
    "sources" and "source_labels" (y0, the local model's labels), "source_index", "local_steps",
    "remote_steps", "psnr" (dB against the source). ``NnmarkError`` when no source gave a boundary sample.

    Args:
        reference: the licensed environment (default: the first one).
        local_alpha: alpha of the local phase's steps.
        remote_alpha: alpha of the remote phase's steps.
        target: stop the local phase once delta_conf is below this.
        local_max: local-phase steps at most.
        remote_max: remote-phase steps at most.
        direction: sign: the paper's step; l2: normalised-gradient step (higher PSNR).
    """
    check_inputs(sources, local_oracle.input_shape)
    names = list(env_oracles)
    reference = names[0] if reference is None else reference
    if reference not in env_oracles:
        raise ArgumentError(f"reference {reference!r} is not one of the environments {names}")
    original = local_oracle.labels(sources)
    local = local_phase(local_oracle, sources, alpha=local_alpha, target=target, local_max=local_max,
                        original=original, direction=direction, progress=progress)
    remote = remote_phase(local_oracle, env_oracles, local.samples, alpha=remote_alpha, remote_max=remote_max,
                          original=original, direction=direction, progress=progress)
    found = torch.nonzero(remote.success).flatten()
    kept, env_labels = confirm(env_oracles, remote.samples[found]) if len(found) else (found, None)
    if not len(kept):
        raise NnmarkError(f"no boundary sample found from {len(sources)} sources; try more sources, "
                          "a larger local_max/remote_max, or environments that differ more")
    index = found[kept]
    queries = remote.samples[index].contiguous()
    config = {
        "environments": names, "reference": reference, "local_alpha": local_alpha, "remote_alpha": remote_alpha,
        "target": target, "local_max": int(local_max), "remote_max": int(remote_max), "n_sources": len(sources),
        "direction": direction, "n": len(index), **(meta or {}),
    }
    note_shortfall(config, len(sources), len(index),
                   f"{len(sources) - len(found)} sources gave no boundary sample within local_max={local_max} and "
                   f"remote_max={remote_max}, {len(found) - len(kept)} did not single out one environment when "
                   "asked together; give more sources or raise local_max/remote_max")
    return KeyFile(
        method=METHOD,
        config=config,
        queries=queries,
        expected=env_labels[:, names.index(reference)].contiguous(),
        extras={
            "env_labels": env_labels.contiguous(),
            "sources": sources[index].float().contiguous(),
            "source_labels": original[index].contiguous(),
            "source_index": index.contiguous(),
            "local_steps": local.steps[index].contiguous(),
            "remote_steps": remote.steps[index].contiguous(),
            "psnr": psnr(queries, sources[index]).contiguous(),
        },
        model_digest=model_digest,
    )


def _env_labels(key: KeyFile) -> tuple[list[str], torch.Tensor]:
    """The key's environment names and their recorded labels (N, n); ``KeyFileError`` if malformed."""
    names = key.config.get("environments")
    if key.method != METHOD or not isinstance(names, list):
        raise KeyFileError(f"not an {METHOD} key (method {key.method!r})")
    missing = [name for name in EXTRAS if name not in key.extras]
    if missing:
        raise KeyFileError(f"{METHOD} key lacks the extra tensors {missing}")
    env_labels = key.extras["env_labels"]
    if env_labels.dtype != torch.int64 or tuple(env_labels.shape) != (len(key.queries), len(names)):
        raise KeyFileError(f"env_labels must be int64 of shape ({len(key.queries)}, {len(names)})")
    if key.config.get("reference") not in names:
        raise KeyFileError(f"reference {key.config.get('reference')!r} is not one of {names}")
    return names, env_labels


def match(observed: torch.Tensor, key: KeyFile) -> tuple[list[str], dict[str, int]]:
    """(environments whose recorded labels all equal ``observed``, environment -> number of equal labels)."""
    names, env_labels = _env_labels(key)
    counts = (observed[:, None] == env_labels).sum(dim=0)
    table = {name: int(c) for name, c in zip(names, counts)}
    return [name for name in names if table[name] == len(observed)], table


def report(key: KeyFile) -> list[dict]:
    """Per boundary sample: source index, PSNR (dB), local and remote steps, each environment's label, and
    the environments it singles out (those whose label no other environment gives)."""
    names, env_labels = _env_labels(key)
    rows = []
    for i, labels in enumerate(env_labels.tolist()):
        rows.append({
            "sample": i,
            "source_index": int(key.extras["source_index"][i]),
            "psnr": float(key.extras["psnr"][i]),
            "local_steps": int(key.extras["local_steps"][i]),
            "remote_steps": int(key.extras["remote_steps"][i]),
            "labels": dict(zip(names, labels)),
            "singles_out": [name for name, label in zip(names, labels) if labels.count(label) == 1],
        })
    return rows


def identify(oracle: Oracle, key: KeyFile) -> tuple[list[str], dict[str, int]]:
    """Ask ``oracle`` the key's boundary samples (one batch, labels only) and name the environments it matches.

    Returns (the environments whose recorded labels all match, in key order; match table: environment ->
    number of samples whose label matches that environment's).
    """
    _env_labels(key)
    return match(oracle.labels(key.queries), key)


def verify(oracle: Oracle, key: KeyFile) -> Verdict:
    """Identify the environment behind ``oracle``; passed when it is consistent with the key's reference.

    Needs labels only. decision: the consistent environment (several joined by " or " when the key cannot
    tell them apart); with none, "different model" when fewer than half of the key's natural source images
    keep their recorded label (asked in a second call), else "unknown environment". statistic: the share of
    boundary samples answered as the reference environment answers; flipped: those that are not.
    """
    _env_labels(key)
    before = oracle.queries
    observed = oracle.labels(key.queries)
    consistent, table = match(observed, key)
    natural = (oracle.labels(key.extras["sources"]) == key.extras["source_labels"]).double().mean().item()
    reference = key.config["reference"]
    if consistent:
        decision = " or ".join(consistent)
    else:
        decision = DIFFERENT_MODEL if natural < 0.5 else UNKNOWN
    n = len(key.expected)
    return Verdict(
        method=METHOD,
        decision=decision,
        passed=reference in consistent,
        statistic_name="reference_match_rate",
        statistic=table[reference] / n,
        flipped=torch.nonzero(observed != key.expected).flatten().tolist(),
        queries=oracle.queries - before,
        details={"n": n, "consistent": consistent, "match_table": table, "natural_agreement": natural,
                 "reference": reference},
    )


def summary(key: KeyFile) -> dict:
    """What ``nnmark mark innformant`` reports: samples found, their median PSNR (dB), and per environment how
    many samples single it out."""
    rows = report(key)
    psnrs = sorted(r["psnr"] for r in rows)
    return {"found": len(rows), "psnr_median_db": psnrs[len(psnrs) // 2],
            "singles_out": {name: sum(name in r["singles_out"] for r in rows) for name in key.config["environments"]}}


SPECS = (MethodSpec(
    METHOD, "telltale", "iNNformant boundary samples whose labels tell execution environments apart",
    create_access="gradients", verify_access="labels", embeds=False, verdicts=("reference", "other"), verify=verify,
    create=create, inputs="environments", describe=summary, n=DEFAULT_SOURCES, example="--envs float32,float64",
    # one batch in an audit too: the samples sit ~1e-7 from a boundary, where a float32 model's answer can change
    # with the batch (measured: a digits LeNet-5 key asked one sample per batch named float32 "float64" for one of
    # three query orders)
    whole_key=True,
),)
