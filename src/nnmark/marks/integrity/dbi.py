"""DBI: decision-based iterative fragile samples (Yin, Yin, Su, Zhang, Gao).

Paper: "Decision-based iterative fragile watermarking for model integrity verification".
Access: probabilities and their input gradient to make the key (only the model's probability
output enters the loss); labels only to verify.

Each training sample x is moved, one signed step of size eps per iteration, along the gradient of
the probability-weighted variance D(p) of the model's predicted distribution p = f_p(x; W), until
the distribution is nearly flat: the sample then sits at the decision boundary, and any change of
W moves its argmax.

Sign: the paper says it *minimises* D but prints eq. 4 / Algorithm 1 line 9 as
x' = x + eps * sign(grad_x D), which ascends D. nnmark descends (``direction="descent"``, the stated aim,
and the one that makes samples fragile); ``"ascent"`` follows the printed formula (the key records -1 or +1).
Each step is clipped to [0, 1] (the paper does not clip; its samples are images).

Arguments (paper defaults): eps = 1e-4 for MNIST-like (one-channel) data, 1e-5 for CIFAR-like
(three-channel) data; itr = 10,000. Inputs (N, C, H, W) in [0, 1].

Example::

    key = dbi.create(TorchOracle(model, (1, 28, 28)), data.train.x[:100], itr=2000)
    verdict = dbi.verify(LabelsOracle(TorchOracle(suspect, (1, 28, 28))), key)
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm.auto import tqdm

from nnmark.errors import ArgumentError
from nnmark.keys import KeyFile
from nnmark.marks.integrity.common import verify_labels
from nnmark.marks.spec import MethodSpec
from nnmark.metrics import sample_quality
from nnmark.oracles import Oracle, check_inputs

METHOD = "dbi"
PAPER_ITR = 10_000
MIN_ITR = 1
"""The fewest iterations of a key worth writing: with 0 the queries are the unmodified sources."""
Direction = Literal["descent", "ascent"]
DIRECTIONS: dict[str, int] = {"descent": -1, "ascent": 1}
"""The step's sign: descent minimises D(p) (the paper's aim), ascent follows eq. 4 as printed."""
DEFAULT_DIRECTION: Direction = "descent"
verify = verify_labels


def default_eps(input_shape: tuple[int, int, int]) -> float:
    """The paper's step: 1e-4 for MNIST-like (one channel), 1e-5 for CIFAR-like (three channels)."""
    return 1e-4 if input_shape[0] == 1 else 1e-5


def expectation(p: torch.Tensor) -> torch.Tensor:
    """E(p) = (sum_i p_i) / n, eq. 2; one value per row of (N, n)."""
    return p.sum(dim=1) / p.shape[1]


def variance_loss(p: torch.Tensor) -> torch.Tensor:
    """D(p) = sum_i (p_i - E(p))^2 p_i, eq. 3; one value per row of (N, n)."""
    return ((p - expectation(p)[:, None]) ** 2 * p).sum(dim=1)


def fragilize(
    oracle: Oracle,
    x: torch.Tensor,
    eps: float,
    itr: int,
    direction: int = -1,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1 for a whole batch: x' <- clip(x' + direction * eps * sign(grad_x' D(f_p(x'))), 0, 1), itr times.

    One forward/backward per iteration for all samples. Returns (x', D(f_p(x')) after the last step).
    """
    if direction not in (-1, 1):
        raise ArgumentError("direction must be -1 (descend D) or +1 (eq. 4 as printed)")
    if eps <= 0 or itr < 0:
        raise ArgumentError("eps must be > 0 and itr >= 0")
    x = x.detach().clone()
    for _ in tqdm(range(itr), desc="dbi", unit="itr", disable=not progress, leave=False):
        _, grad = oracle.gradient(variance_loss, x)
        x = (x + direction * eps * grad.sign()).clamp_(0.0, 1.0)
    loss = variance_loss(oracle.probabilities(x))
    return x, loss


def create(
    oracle: Oracle,
    sources: torch.Tensor,
    *,
    eps: float | None = None,
    itr: int = PAPER_ITR,
    direction: Direction = DEFAULT_DIRECTION,
    model_digest: str = "",
    meta: dict | None = None,
    progress: bool = False,
) -> KeyFile:
    """Make a DBI key: fragile samples x' from ``sources`` and their labels y' = argmax f_p(x').

    ``meta`` (e.g. the data spec and source indices) is kept in the key's config. The sources are kept
    as the extra tensor "sources" so PSNR/SSIM can be reported later. The config records ``direction`` as
    the step's sign, -1 (descent) or +1 (ascent).

    Args:
        eps: step size (default: 1e-4 one-channel, 1e-5 otherwise, the paper's).
        itr: iterations of Algorithm 1.
        direction: descent minimises D(p) (the paper's aim); ascent follows eq. 4 as printed.
    """
    if direction not in DIRECTIONS:
        raise ArgumentError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    check_inputs(sources, oracle.input_shape)
    if itr < MIN_ITR:
        raise ArgumentError(f"itr must be >= {MIN_ITR}, got {itr}: with no iteration the queries are the unmodified "
                            "sources (the natural method makes such keys)")
    eps = default_eps(oracle.input_shape) if eps is None else float(eps)
    sign = DIRECTIONS[direction]
    fragile, _ = fragilize(oracle, sources, eps, itr, sign, progress)
    labels = oracle.labels(fragile)
    config = {"eps": eps, "itr": int(itr), "direction": sign, "n": len(fragile), **(meta or {})}
    return KeyFile(
        method=METHOD,
        config=config,
        queries=fragile.float().contiguous(),
        expected=labels,
        extras={"sources": sources.float().contiguous()},
        model_digest=model_digest,
    )


SPECS = (MethodSpec(
    METHOD, "integrity", "DBI fragile samples whose predicted distribution is made flat (Yin et al.)",
    create_access="gradients", verify_access="labels", embeds=False, verdicts=("intact", "tampered"), verify=verify,
    create=create, inputs="samples", describe=lambda key: sample_quality(key.queries, key.extras["sources"]),
    example="--itr 3000",
),)
