"""IPGuard: data points near the source model's classification boundary as its fingerprint (Cao, Jia, Gong).

Paper: "IPGuard: Protecting Intellectual Property of Deep Neural Network Classifiers by
Fingerprinting their Classification Boundary" (AsiaCCS 2021, arXiv:1910.12903). The baseline of
MetaFinger (Yang et al., IJCAI 2022), sec. 5.
Access: logits and their input gradient to *create* the key (white box); the suspect is asked
*labels only* to verify.

Fingerprinting data points: each start x0 gets a label i and a runner-up j != i, and x moves on
the logits g(x) of the source model to minimise (eq. ``boundary_loss``)

    L(x) = ReLU(g_j(x) - g_i(x) + k) + ReLU(max_{t != i, j} g_t(x) - g_j(x)),

which is 0 exactly when x is labelled i, its logit leads g_j by at least k, and j is the runner-up:
x sits on class i's side of the i/j boundary, about k logits from it. A small k makes points
that only models with nearly the same boundary label i (unique, fragile); a larger k makes them
robust and less unique. Verification: the suspect's matching rate (the share of points it labels
as the source did); "match" (pirated; ``passed``, CLI exit 0) when the rate >= ``threshold``.

Symbols and defaults: k = 3.0 (logits), Adam on x at lr 0.01, at most 1000 iterations, x clipped
to [0, 1] after each step; threshold 0.75; n = every start that converges.

Choices and gaps (the paper's full text was not at hand; this follows its published description):

- labels: i and j are drawn uniformly at random per start from a seeded generator (i != j), so the
  points spread over all pairs of classes; the starts are the caller's images (natural or noise).
- the loss is written with i the *winning* label; the paper names the pair the other way round.
- each point stops moving at the first iteration where L(x) = 0 (it is frozen there), so it stays
  about k from the boundary instead of drifting deeper; points that never reach L = 0 are dropped.
- null and p-value: the p-value P[Bin(n, p0) >= hits] is reported (not part of the decision) under
  p0 = 1/K by default (an independent model labels each point as a uniformly random class); pass
  ``p0`` to ``create`` for a calibrated null. Boundary points transfer between models trained on
  the same task far more than chance, so the threshold, not the p-value, decides.
- k = 3 and threshold 0.75: k is in logit units, so it depends on the model's logit scale (the
  paper tunes it per data set). On mnist5k with LeNet-5 (logits of order 10), 100 points from
  training images: k = 0.1 / 1 / 3 / 10 give matching rates FTAL 0.55 / 0.72 / 1.0 / 1.0 and
  independently trained LeNet-5s 0.13-0.19 / 0.22-0.29 / 0.46-0.53 / 0.95-0.97. k = 3 separates
  derived from independent models best; 0.75 lies between the two groups, but not far from the
  independent side: in the full ``nnmark bench ownership-fingerprint`` run independent LeNet-5s
  reach 0.34-0.78 (one of six above 0.75), other architectures 0.13-0.26.

Example::

    key = ipguard.create(TorchOracle(model, (1, 28, 28)), ds.train.x[:100], k=3.0)
    verdict = ipguard.verify(LabelsOracle(TorchOracle(suspect, (1, 28, 28))), key)
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from nnmark.errors import ArgumentError, InputError, KeyFileError, NnmarkError
from nnmark.keys import KeyFile, note_shortfall
from nnmark.marks.ownership.stats import match_verdict
from nnmark.marks.spec import MethodSpec, require
from nnmark.marks.verdict import Verdict
from nnmark.oracles import Oracle, check_inputs

METHOD = "ipguard"
DEFAULT_K = 3.0
DEFAULT_LR = 0.01
DEFAULT_ITERATIONS = 1000
DEFAULT_THRESHOLD = 0.75
CONFIG_FIELDS = ("n", "starts", "converged", "k", "lr", "iterations", "optimizer", "seed", "num_classes", "threshold",
                 "p0")


def boundary_loss(logits: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: float) -> torch.Tensor:
    """L = ReLU(g_j - g_i + k) + ReLU(max_{t != i, j} g_t - g_j) per row of logits g (N, K); i, j (N,) labels.

    0 iff label i leads the runner-up j by at least k. Needs K >= 3 (a third class to keep below j).
    """
    if logits.dim() != 2 or logits.shape[1] < 3:
        raise ArgumentError(f"need logits (N, K >= 3), got shape {tuple(logits.shape)}")
    if i.shape != (logits.shape[0],) or j.shape != i.shape or bool((i == j).any()):
        raise ArgumentError("i and j must be (N,) label tensors with i != j everywhere")
    rows = torch.arange(len(logits))
    g_i, g_j = logits[rows, i], logits[rows, j]
    others = logits.clone()
    others[rows, i] = float("-inf")
    others[rows, j] = float("-inf")
    return torch.relu(g_j - g_i + k) + torch.relu(others.max(dim=1).values - g_j)


def draw_pairs(n: int, num_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label i and runner-up j != i for each of n points, uniform over ordered pairs of distinct classes."""
    i = torch.randint(num_classes, (n,), generator=generator)
    j = (i + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    return i, j


def find_boundary_points(
    oracle: Oracle,
    x0: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    *,
    k: float = DEFAULT_K,
    lr: float = DEFAULT_LR,
    iterations: int = DEFAULT_ITERATIONS,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``boundary_loss`` over x from ``x0`` with Adam (lr), clipping to [0, 1]; (x, done mask).

    One forward/backward for all unfinished points per iteration; a point is frozen at the first
    iteration its loss is 0 (``done``). Stops early once every point is done.
    """
    if iterations < 0 or not lr > 0 or k < 0:
        raise ArgumentError(f"need iterations >= 0, lr > 0 and k >= 0, got {iterations}, {lr}, {k}")
    x = x0.detach().clone().float()
    done = torch.zeros(len(x), dtype=torch.bool)
    param = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    for _ in tqdm(range(iterations), desc="ipguard", unit="itr", disable=not progress, leave=False):
        live = (~done).nonzero().flatten()
        loss, grad = oracle.gradient(lambda g, a, b: boundary_loss(g, a, b, k), x[live], on="logits",
                                     per_sample=(i[live], j[live]))
        finished = loss <= 0
        done[live[finished]] = True
        if done.all():
            break
        full = torch.zeros_like(x)
        full[live] = grad
        full[done] = 0.0
        opt.zero_grad(set_to_none=True)
        param.grad = full
        opt.step()
        with torch.no_grad():
            param.clamp_(0.0, 1.0)
            param[done] = x[done]  # frozen points stay where their loss first reached 0
            x = param.detach().clone()
    live = (~done).nonzero().flatten()
    if iterations > 0 and len(live):  # the last step's points, not yet scored
        loss, _ = oracle.gradient(lambda g, a, b: boundary_loss(g, a, b, k), x[live], on="logits",
                                     per_sample=(i[live], j[live]))
        done[live[loss <= 0]] = True
    return x, done


def create(
    oracle: Oracle,
    x0: torch.Tensor,
    *,
    n: int | None = None,
    k: float = DEFAULT_K,
    lr: float = DEFAULT_LR,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    p0: float | None = None,
    model_digest: str = "",
    meta: dict | None = None,
    progress: bool = False,
) -> KeyFile:
    """Make an IPGuard key: a boundary point from each start in ``x0`` (N, C, H, W) in [0, 1]; keep <= n converged.

    The expected labels are the source's own labels of the points (= i). The starts are kept as the
    extra tensor "sources", the drawn runner-up labels j as "runner_up". Raises NnmarkError when no
    point converges (use more iterations or a smaller k).

    Args:
        n: most points kept (default: every converged one).
        k: logit margin of each point's label over its runner-up class (small: unique but fragile).
        lr: Adam learning rate on the inputs.
        iterations: Adam iterations at most.
        seed: draws the runner-up classes.
        threshold: least matching rate of a match.
        p0: the matching rate an unrelated model reaches by chance (default: 1/K).
    """
    require(oracle, "gradients", f"making an {METHOD} key")
    if not isinstance(x0, torch.Tensor) or x0.dim() != 4:
        raise InputError(f"x0 must be an (N, C, H, W) tensor, got {getattr(x0, 'shape', type(x0).__name__)}")
    check_inputs(x0, oracle.input_shape)
    if n is not None and n < 1:
        raise ArgumentError(f"n must be >= 1 or None, got {n}")
    if not 0 <= threshold <= 1 or (p0 is not None and not 0 <= p0 <= 1):
        raise ArgumentError(f"need threshold and p0 in [0, 1], got {threshold}, {p0}")
    if clash := sorted(set(meta or {}) & set(CONFIG_FIELDS)):
        raise ArgumentError(f"meta may not replace the method's own config entries: {', '.join(clash)}")
    num_classes = oracle.num_classes
    i, j = draw_pairs(len(x0), num_classes, torch.Generator().manual_seed(seed))
    x, done = find_boundary_points(oracle, x0, i, j, k=k, lr=lr, iterations=iterations, progress=progress)
    labels = oracle.labels(x)
    ok = done & (labels == i)
    if not ok.any():
        raise NnmarkError(f"no IPGuard point of {len(x0)} reached the boundary loss 0; "
                          "use more iterations or a smaller k")
    keep = ok.nonzero().flatten()[:n]
    config = {
        "n": len(keep), "starts": len(x0), "converged": int(ok.sum()), "k": float(k), "lr": float(lr),
        "iterations": int(iterations), "optimizer": "adam", "seed": int(seed), "num_classes": num_classes,
        "threshold": float(threshold), "p0": float(1.0 / num_classes if p0 is None else p0),
    }
    config.update(meta or {})
    note_shortfall(config, len(x0) if n is None else min(n, len(x0)), len(keep),
                   f"{len(x0) - int(ok.sum())} of {len(x0)} starts did not reach the boundary loss 0 within "
                   f"iterations={iterations}; use more iterations or a smaller k")
    return KeyFile(method=METHOD, config=config, queries=x[keep].contiguous(), expected=labels[keep].contiguous(),
                   extras={"sources": x0[keep].float().contiguous(), "runner_up": j[keep].contiguous()},
                   model_digest=model_digest)


def verify(oracle: Oracle, key: KeyFile) -> Verdict:
    """Matching rate of the suspect's labels on the key; "match" iff it is >= the key's threshold.

    Details: hits, n, the threshold, p0 and the binomial p-value P[Bin(n, p0) >= hits].
    """
    if key.method != METHOD:
        raise KeyFileError(f"not an {METHOD} key (method {key.method!r})")
    try:
        threshold, p0 = float(key.config["threshold"]), float(key.config["p0"])
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{METHOD} key config lacks a numeric threshold or p0") from None
    if not (0 <= threshold <= 1 and 0 <= p0 <= 1):
        raise KeyFileError(f"{METHOD} key config has threshold/p0 outside [0, 1]")
    before = oracle.queries
    hits_mask = oracle.labels(key.queries) == key.expected
    return match_verdict(key.method, hits_mask, oracle.queries - before, statistic_name="matching_rate", p0=p0,
                         threshold=threshold)


SPECS = (MethodSpec(
    METHOD, "ownership", "IPGuard points a logit margin k from the classification boundary (Cao et al.)",
    create_access="gradients", verify_access="labels", embeds=False, verdicts=("match", "no match"), verify=verify,
    create=create, inputs="samples", shows=("converged",),
),)
