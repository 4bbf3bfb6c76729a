"""The minimal-perturbation limit of boundary samples, and refinement of iNNformant samples toward it.

A boundary sample must reach a decision boundary, so no boundary sample of a source image x0 can
be closer to it (in L2, i.e. have a higher PSNR) than the closest boundary point. DeepFool
(Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016, https://arxiv.org/abs/1511.04599) finds a small L2 perturbation r that
reaches it; its PSNR is the ceiling for any boundary sample of x0 (an estimate: DeepFool finds a
small perturbation, not always the smallest).

Access: white box (gradients) for :func:`deepfool` and :func:`sign_minimal`; labels of every
environment for :func:`refine` and :func:`line_search`.

Symbols and defaults (DeepFool, Algorithm 2): f_k(x) = z_k(x) - z_y0(x) for the logits z and the
source label y0; w_k = grad_x f_k; per step the class l = argmin_{k != y0} |f_k| / ||w_k||_2 and
r_i = |f_l| / ||w_l||_2^2 * w_l; x_i = clip(x0 + (1 + overshoot) * sum r_i, 0, 1); overshoot = 0.02,
max_iter = 50. Inputs (N, C, H, W) in [0, 1].

Choices:
- All K - 1 gradients w_k of a step come from one batched forward/backward of the N samples
  repeated K times (N*K queries per step).
- DeepFool's overshoot crosses the boundary a little; :func:`deepfool` then bisects the segment
  x0 -> x_i (``bisect_steps`` times) for the point nearest x0 that still has another label, so the
  returned samples sit on the boundary (the limit), not past it.
- :func:`sign_minimal` is the FGSM-like counterpart: the smallest eps (bisection) with which
  x0 + eps * sign(grad m(x0)) changes the label, m the logit margin of y0; it shows what a sign step,
  as in iNNformant's eq. 2, costs in L2 against the gradient direction.
- :func:`line_search` searches the line x0 -> b through a boundary point b (e.g. DeepFool's): it
  bisects each environment's own label change t_e along the line and takes the first (last)
  environment to change if it changes before (after) every other one does, i.e. a point that
  singles it out at about the PSNR of b (the paper's future work: a better base algorithm).
- :func:`refine` moves a boundary sample s toward its source x0 while it singles out the same
  environment: bisection back along the segment x0 -> s (keeping every environment's label), and
  line searches on lines from x0 through points between the DeepFool point and s; PSNR never drops
  (a result with a lower PSNR than s is never returned).
- Both re-ask all their results in one batch (as a verifier will) and fall back to the input sample
  (refine) or to failure (line_search) where the property does not hold then.

Example::

    limit = minimal.deepfool(oracle, sources)                # limit.samples sit on the boundary
    refined = minimal.refine(env_oracles, sources, key.queries, through=limit.samples)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnmark.errors import ArgumentError
from nnmark.marks.telltale.innformant import margin, singled_out
from nnmark.metrics import psnr
from nnmark.oracles import Oracle, check_inputs


@dataclass
class MinimalResult:
    """Per sample: samples (N, C, H, W) float32, success (N,) bool (label changed), iterations (N,) int64,
    l2 (N,) float64 = ||samples - x0||_2."""

    samples: torch.Tensor
    success: torch.Tensor
    iterations: torch.Tensor
    l2: torch.Tensor


def _along(x0: torch.Tensor, d: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 + t * d per sample (t (N,) float64), computed in float64, clipped to [0, 1], stored as float32."""
    return (x0.double() + t[:, None, None, None] * d.double()).clamp(0, 1).float()


def boundary_on_segment(oracle: Oracle, x0: torch.Tensor, x1: torch.Tensor, original: torch.Tensor,
                        steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection on x0 + t (x1 - x0): (the point nearest x0 found whose label is not ``original``, its t).

    Needs ``original`` at x0 and another label at x1 (rows where x1 keeps ``original`` get t = 1).
    One batched labels call per step.
    """
    d = x1.double() - x0.double()
    lo = torch.zeros(len(x0), dtype=torch.float64)
    hi = torch.ones(len(x0), dtype=torch.float64)
    for _ in range(steps):
        mid = (lo + hi) / 2
        flipped = oracle.labels(_along(x0, d, mid)) != original
        hi = torch.where(flipped, mid, hi)
        lo = torch.where(flipped, lo, mid)
    return _along(x0, d, hi), hi


def deepfool(oracle: Oracle, x: torch.Tensor, *, overshoot: float = 0.02, max_iter: int = 50,
             bisect_steps: int = 40, original: torch.Tensor | None = None) -> MinimalResult:
    """DeepFool (L2, multi-class) for a whole batch, then bisection back onto the boundary.

    ``original``: y0 (default: the oracle's labels of ``x``). A sample whose label has not changed after
    ``max_iter`` steps fails (its sample is the last iterate).
    """
    check_inputs(x, oracle.input_shape)
    if overshoot < 0 or max_iter < 1 or bisect_steps < 0:
        raise ArgumentError("overshoot must be >= 0, max_iter >= 1, bisect_steps >= 0")
    x0 = x.detach().float()
    n, k = len(x0), oracle.num_classes
    original = oracle.labels(x0) if original is None else original
    r_total = torch.zeros_like(x0, dtype=torch.float64)
    current = x0.clone()
    iterations = torch.zeros(n, dtype=torch.int64)
    success = torch.zeros(n, dtype=torch.bool)
    classes = torch.arange(k).repeat(n)
    for _ in range(max_iter):
        active = torch.nonzero(~success).flatten()
        if not len(active):
            break
        rows = active.repeat_interleave(k)
        seen: list[torch.Tensor] = []

        def f(z, kk, y0):  # f_k = z_k - z_y0 for the row's class k
            seen.append(z.detach().cpu())
            return z.gather(1, kk[:, None]).squeeze(1) - z.gather(1, y0[:, None]).squeeze(1)

        _, w = oracle.gradient(f, current[rows], on="logits", per_sample=(classes[: len(rows)], original[rows]))
        z = torch.cat(seen)[::k].double()  # the logits of each active sample
        labels = z.argmax(dim=1)
        flipped = labels != original[active]
        success[active[flipped]] = True
        going = ~flipped
        if not going.any():
            break
        act = active[going]
        z = z[going]
        w = w.double().view(len(active), k, -1)[going]
        fk = z - z.gather(1, original[act][:, None])  # (m, K), <= 0 while the label is y0
        norms = w.norm(dim=2).clamp_min(1e-12)
        dist = fk.abs() / norms
        dist.scatter_(1, original[act][:, None], float("inf"))
        best = dist.argmin(dim=1)
        f_l = fk.gather(1, best[:, None]).squeeze(1).abs()
        w_l = w[torch.arange(len(act)), best]
        n_l = norms.gather(1, best[:, None]).squeeze(1)
        r = (f_l + 1e-6) / n_l**2  # DeepFool adds a small constant (1e-4 there) so a zero margin still moves
        r_total[act] += (r[:, None] * w_l).view(-1, *x0.shape[1:])
        current[act] = (x0[act].double() + (1 + overshoot) * r_total[act]).clamp(0, 1).float()
        iterations[act] += 1
    else:
        success = oracle.labels(current) != original
    samples = current.clone()
    done = torch.nonzero(success).flatten()
    if len(done) and bisect_steps:
        samples[done], _ = boundary_on_segment(oracle, x0[done], current[done], original[done], bisect_steps)
    l2 = (samples.double() - x0.double()).flatten(1).norm(dim=1)
    return MinimalResult(samples, success, iterations, l2)


def sign_minimal(oracle: Oracle, x: torch.Tensor, *, steps: int = 40,
                 original: torch.Tensor | None = None) -> MinimalResult:
    """The smallest eps (bisection in [0, 1]) for which clip(x0 + eps * sign(grad m(x0))) changes the label.

    A sample whose label does not change even at eps = 1 fails (its sample is x0). ``iterations`` is
    the number of bisection steps.
    """
    check_inputs(x, oracle.input_shape)
    x0 = x.detach().float()
    original = oracle.labels(x0) if original is None else original
    _, grad = oracle.gradient(margin, x0, on="logits", per_sample=(original,))
    far = _along(x0, -grad.double().sign(), torch.ones(len(x0), dtype=torch.float64))
    success = oracle.labels(far) != original
    samples = x0.clone()
    done = torch.nonzero(success).flatten()
    if len(done):
        samples[done], _ = boundary_on_segment(oracle, x0[done], far[done], original[done], steps)
    l2 = (samples.double() - x0.double()).flatten(1).norm(dim=1)
    return MinimalResult(samples, success, torch.full((len(x0),), steps if steps else 0), l2)


def _env_labels(env_oracles: dict[str, Oracle], x: torch.Tensor) -> torch.Tensor:
    return torch.stack([o.labels(x) for o in env_oracles.values()], dim=1)


def refine(env_oracles: dict[str, Oracle], sources: torch.Tensor, samples: torch.Tensor, *,
           through: torch.Tensor | None = None, mix: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75),
           steps: int = 40) -> torch.Tensor:
    """Boundary samples moved toward their sources, each still singling out the environment it singled out.

    Two searches, the higher PSNR wins per sample:
    - back along the path: bisection on t in x0 + t (s - x0); t = 1 (s) has the environments' labels L(s);
      a midpoint with the same labels becomes the new upper end, any other answer the lower end;
    - toward the limit (with ``through``, e.g. DeepFool's boundary points b): :func:`line_search` on the
      lines from x0 through 2 (b_l - x0), b_l = (1 - l) b + l s for each l in ``mix`` (all lines of all
      samples in one batch), keeping a point only if it singles out the same environment as s.
    Returns (N, C, H, W) float32; a row whose result has a lower PSNR than s, or stops singling out that
    environment when all results are asked together (as a verifier asks), is s itself.
    """
    for o in env_oracles.values():
        check_inputs(samples, o.input_shape)
        check_inputs(sources, o.input_shape)
    if sources.shape != samples.shape or steps < 0 or (through is not None and through.shape != samples.shape):
        raise ArgumentError("sources, samples (and through) must have the same shape; steps must be >= 0")
    x0, s = sources.detach().float(), samples.detach().float()
    want = _env_labels(env_oracles, s)
    own = singled_out(want)
    d = s.double() - x0.double()
    lo = torch.zeros(len(s), dtype=torch.float64)
    hi = torch.ones(len(s), dtype=torch.float64)
    for _ in range(steps):
        mid = (lo + hi) / 2
        same = (_env_labels(env_oracles, _along(x0, d, mid)) == want).all(dim=1)
        hi = torch.where(same, mid, hi)
        lo = torch.where(same, lo, mid)
    out = _along(x0, d, hi)
    best = psnr(out, x0)
    if through is not None and mix:
        n, k = len(s), len(mix)
        lam = torch.tensor(mix, dtype=torch.float64).repeat(n)[:, None, None, None]
        rows = torch.arange(n).repeat_interleave(k)
        b = (1 - lam) * through[rows].double() + lam * s[rows].double()
        ends = (2 * b - x0[rows].double()).clamp(0, 1).float()
        original = next(iter(env_oracles.values())).labels(x0)
        cand, ok = line_search(env_oracles, x0[rows], ends, steps=steps, original=original[rows])
        quality = torch.full((n * k,), float("-inf"), dtype=torch.float64)
        idx = torch.nonzero(ok).flatten()
        if len(idx):
            same_env = singled_out(_env_labels(env_oracles, cand[idx])) == own[rows[idx]]
            idx = idx[same_env]
            quality[idx] = psnr(cand[idx], x0[rows[idx]])
        top, pick = quality.view(n, k).max(dim=1)
        better = top > best
        out[better] = cand.view(n, k, *s.shape[1:])[better, pick[better]]
    worse = psnr(out, x0) < psnr(s, x0)
    out[worse] = s[worse]
    while True:  # as a verifier asks: all in one batch, until stable
        lost = (singled_out(_env_labels(env_oracles, out)) != own) & (out != s).flatten(1).any(dim=1)
        if not lost.any():
            return out
        out[lost] = s[lost]


def line_search(env_oracles: dict[str, Oracle], sources: torch.Tensor, through: torch.Tensor, *,
                steps: int = 40, original: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundary samples on the lines x0 -> ``through`` (e.g. DeepFool's boundary points, extended 2x).

    For each environment e, bisection on t in [0, 1] finds its label change (lo_e keeps y0, hi_e does
    not; one labels call per environment and step). If the environment changing first does so before
    every other (hi_first < lo of all others), x(hi_first) singles it out; else if the last one changes
    after every other (lo_last > hi of all others), x(lo_last) does. Returns (samples (N, C, H, W), success
    (N,) bool): success where the point singles out an environment when all successes are asked together.
    ``original``: y0 (default: the first environment's labels of ``sources``).
    """
    names = list(env_oracles)
    if len(names) < 2:
        raise ArgumentError("line_search needs at least two environments")
    for o in env_oracles.values():
        check_inputs(sources, o.input_shape)
        check_inputs(through, o.input_shape)
    x0 = sources.detach().float()
    d = through.detach().double() - x0.double()
    n, m = len(x0), len(names)
    original = env_oracles[names[0]].labels(x0) if original is None else original
    lo = torch.zeros(n, m, dtype=torch.float64)
    hi = torch.ones(n, m, dtype=torch.float64)
    end = _env_labels(env_oracles, _along(x0, d, torch.ones(n, dtype=torch.float64)))
    crosses = (end != original[:, None]).all(dim=1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        for j, o in enumerate(env_oracles.values()):
            flipped = o.labels(_along(x0, d, mid[:, j])) != original
            hi[:, j] = torch.where(flipped, mid[:, j], hi[:, j])
            lo[:, j] = torch.where(flipped, lo[:, j], mid[:, j])
    first = hi.argmin(dim=1)
    last = lo.argmax(dim=1)
    rows = torch.arange(n)
    lo_others = lo.clone()
    lo_others[rows, first] = float("inf")
    hi_others = hi.clone()
    hi_others[rows, last] = float("-inf")
    first_ok = hi[rows, first] < lo_others.min(dim=1).values
    last_ok = lo[rows, last] > hi_others.max(dim=1).values
    t = torch.where(first_ok, hi[rows, first], lo[rows, last])
    samples = _along(x0, d, t)
    success = crosses & (first_ok | last_ok)
    while success.any():  # as a verifier asks: all in one batch, until stable
        idx = torch.nonzero(success).flatten()
        ok = singled_out(_env_labels(env_oracles, samples[idx])) >= 0
        if ok.all():
            break
        success[idx[~ok]] = False
    return samples, success
