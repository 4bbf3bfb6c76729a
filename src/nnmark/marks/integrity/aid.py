"""AID: edge-points that sit on the decision boundary and activate many hidden neurons (Aramoon, Chen, Qu).

Paper: "AID: Attesting the Integrity of Deep Neural Networks", DAC 2021, pp. 19-24.
Access: the model's internals to make the key (``TorchOracle.module_inputs``: forward hooks on its
model's activation modules, ``ACTIVATIONS``); labels only to verify (``verify_labels``, Algorithm 2 of Yin et al.).

The published description (the DAC abstract, and Gao et al.'s summary of AID as a baseline):
AID generates test cases called *edge-points* that reveal, from the top-1 label alone, whether a
model was compromised; they lie near the decision boundary and activate as many neurons as
possible, so a change to any part of the network moves some of them across the boundary. Gao et
al. run it with lr = 1e-3 (1e-1 on VGG16) and at most 10,000 iterations, and note that it
"traverses all neurons", which makes it slower than DBI.

Gaps filled here (the full paper text was not available to us; these are our choices):

- Edge-point loss, per sample: L(x) = g(x) + beta * c(x), minimised over x by Adam (lr, itr), with x
  clipped to [0, 1] after each step, starting from the caller's samples x0 (like DBI).
- Boundary term g(x) = z_(1) - z_(2), the gap between the two largest logits (0 on the boundary
  between the two most likely classes).
- Hidden neurons: every element of the input of every activation module (the pre-activation a_j;
  one neuron per unit of a fully connected layer and per position of a feature map). The paper's
  networks use ReLU; nnmark also hooks the activations that, like it, switch a unit on above 0
  (``ACTIVATIONS``: ReLU6, LeakyReLU, ELU, GELU, SiLU, Mish), so models of any of them can be keyed with
  the same notion of an active neuron. Activations applied functionally (``torch.relu``, e.g. after a
  ResNet block's sum) are not seen.
- Neuron coverage (the reported statistic): cov(x) = mean over layers of the fraction of that
  layer's neurons with a_j > t (t = ``threshold``, default 0: the unit is switched on).
- Coverage term c(x) = mean over layers of mean_j max(0, t - a_j): a hinge that pushes inactive
  neurons up and is 0 once every neuron is active (a differentiable stand-in for -cov(x)). Layers
  weigh equally, whatever their width. beta = ``DEFAULT_BETA`` = 10 (the paper's weight is not
  published): on LeNet-5/mnist5k, 300 iterations from training images take the mean coverage from
  0.47 to 0.52 with beta = 0, 0.53 with 1, 0.57 with 20, while g falls from 7.8 to about 0.01 for each.
- Expected labels y' = argmax of the logits, asked once with all queries in one batch, as verify
  asks them.

Arguments (paper defaults as Gao et al. run it): lr = 1e-3, itr = 10,000. Inputs (N, C, H, W) in [0, 1].

Example::

    key = aid.create(TorchOracle(model, (1, 28, 28)), data.train.x[:150], itr=2000)
    verdict = aid.verify(LabelsOracle(TorchOracle(suspect, (1, 28, 28))), key)
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from nnmark.errors import ArgumentError, ModelError
from nnmark.keys import KeyFile
from nnmark.marks.integrity.common import verify_labels
from nnmark.marks.spec import MethodSpec, require
from nnmark.oracles import Oracle, check_inputs

METHOD = "aid"
PAPER_LR = 1e-3
PAPER_ITR = 10_000
MIN_ITR = 1
"""The fewest iterations of a key worth writing: with 0 the queries are the unmodified sources."""
DEFAULT_BETA = 10.0
ACTIVE = 0.0
"""t: a neuron is active when its pre-activation exceeds t (0: the unit is switched on)."""
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish)
"""The activation modules whose inputs are the hidden neurons: each is (about) zero below 0 and the identity above,
so a_j > 0 means the unit is on, as for the paper's ReLU."""
verify = verify_labels


def boundary_gap(logits: torch.Tensor) -> torch.Tensor:
    """g(x) = z_(1) - z_(2), the top-2 logit gap, per row of (N, K) logits."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def neuron_coverage(pre: list[torch.Tensor], threshold: float = ACTIVE) -> torch.Tensor:
    """cov(x): mean over layers of the fraction of neurons with a_j > t, per sample (N,)."""
    return torch.stack([(a > threshold).double().mean(dim=1) for a in pre]).mean(dim=0)


def coverage_loss(pre: list[torch.Tensor], threshold: float = ACTIVE) -> torch.Tensor:
    """c(x): mean over layers of mean_j max(0, t - a_j), per sample (N,); 0 when every neuron is active."""
    return torch.stack([(threshold - a).clamp_min(0).mean(dim=1) for a in pre]).mean(dim=0)


def edge_loss(logits: torch.Tensor, pre: list[torch.Tensor], beta: float, threshold: float = ACTIVE) -> torch.Tensor:
    """L(x) = g(x) + beta * c(x) per sample."""
    return boundary_gap(logits) + beta * coverage_loss(pre, threshold)


def find_edge_points(
    oracle: Oracle,
    x0: torch.Tensor,
    *,
    lr: float,
    itr: int,
    beta: float,
    threshold: float,
    progress: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Adam on x from x0 minimising L(x), clipped to [0, 1] after each step; one gradient call per iteration.

    Returns (x, trace): trace["coverage"] and trace["gap"] are the batch means of cov(x) and g(x) before
    each iteration and, last, after the final one; trace["final_coverage"] and trace["final_gap"] the
    per-sample values (N,) after the final one.
    """
    x = x0.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    trace: dict = {"coverage": [], "gap": []}
    with oracle.module_inputs(ACTIVATIONS) as hidden:
        if not hidden.modules:
            names = ", ".join(a.__name__ for a in ACTIVATIONS)
            raise ModelError(f"AID needs hidden activations: the model has no activation module to hook ({names})")
        cov, gap = [], []

        def loss_fn(logits: torch.Tensor) -> torch.Tensor:
            pre = hidden.take()
            cov.append(neuron_coverage(pre, threshold).detach())
            gap.append(boundary_gap(logits).detach())
            return edge_loss(logits, pre, beta, threshold)

        def record() -> tuple[torch.Tensor, torch.Tensor]:
            c, g = torch.cat(cov), torch.cat(gap)
            trace["coverage"].append(c.mean().item())
            trace["gap"].append(g.double().mean().item())
            cov.clear()
            gap.clear()
            return c, g

        for _ in tqdm(range(itr), desc="aid", unit="itr", disable=not progress, leave=False):
            _, x.grad = oracle.gradient(loss_fn, x.detach(), on="logits")
            record()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        oracle.gradient(loss_fn, x.detach(), on="logits")
        trace["final_coverage"], trace["final_gap"] = record()
    return x.detach(), trace


def create(
    oracle: Oracle,
    x0: torch.Tensor,
    *,
    itr: int = PAPER_ITR,
    lr: float = PAPER_LR,
    beta: float = DEFAULT_BETA,
    threshold: float = ACTIVE,
    model_digest: str = "",
    meta: dict | None = None,
    progress: bool = False,
) -> KeyFile:
    """Make an AID key: edge-points x' from ``x0`` and their labels y' = argmax f(x').

    Needs an oracle with access to the model's internals (AccessError otherwise; ModelError when its model
    has no ``ACTIVATIONS`` module).
    The sources are kept as the extra tensor "sources", the per-sample coverage cov(x') as "coverage".

    Args:
        itr: Adam iterations on the inputs.
        lr: Adam learning rate on the inputs.
        beta: weight of the neuron-coverage term.
        threshold: a neuron is active when its pre-activation exceeds this.
    """
    require(oracle, "internals", "making an AID key")
    check_inputs(x0, oracle.input_shape)
    if not (lr > 0 and beta >= 0 and itr >= MIN_ITR):
        raise ArgumentError(f"need lr > 0, beta >= 0 and itr >= {MIN_ITR} (with no iteration the queries are the "
                            f"unmodified sources), got lr={lr}, beta={beta}, itr={itr}")
    edge, trace = find_edge_points(oracle, x0, lr=lr, itr=int(itr), beta=beta, threshold=threshold, progress=progress)
    config = {
        "itr": int(itr), "lr": float(lr), "beta": float(beta), "threshold": float(threshold), "n": len(edge),
        "coverage_start": trace["coverage"][0], "coverage_end": trace["coverage"][-1],
        "gap_start": trace["gap"][0], "gap_end": trace["gap"][-1], **(meta or {}),
    }
    return KeyFile(
        method=METHOD,
        config=config,
        queries=edge.float().contiguous(),
        expected=oracle.labels(edge),
        extras={"sources": x0.float().contiguous(), "coverage": trace["final_coverage"].float().contiguous(),
                "gap": trace["final_gap"].float().contiguous()},
        model_digest=model_digest,
    )


SPECS = (MethodSpec(
    METHOD, "integrity", "AID edge-points on the boundary that activate many hidden neurons (Aramoon et al.)",
    create_access="internals", verify_access="labels", embeds=False, verdicts=("intact", "tampered"), verify=verify,
    create=create, inputs="samples", shows=("coverage_start", "coverage_end"),
),)
