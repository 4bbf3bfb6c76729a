"""The baselines Yin et al. compare DBI against, in the same key format and with the same verify.

- "natural" (the paper's "non-fragile"): unmodified test images, labelled by the model.
- "random": uniform-noise images in [0, 1], labelled by the model.

Access: labels to make and to verify. Expected labels are the model's own answers, not the ground
truth, so an untouched model always verifies intact.
"""

from __future__ import annotations

import torch

from nnmark.keys import KeyFile, check_query_count
from nnmark.marks.integrity.common import verify_labels
from nnmark.marks.spec import MethodSpec
from nnmark.oracles import Oracle, check_inputs

verify = verify_labels
DEFAULT_N = 100


def natural(oracle: Oracle, samples: torch.Tensor, *, model_digest: str = "", meta: dict | None = None) -> KeyFile:
    """Key of natural samples x with y = argmax f(x)."""
    check_inputs(samples, oracle.input_shape)
    x = samples.float().contiguous()
    return KeyFile(
        method="natural",
        config={"n": len(x), **(meta or {})},
        queries=x,
        expected=oracle.labels(x),
        model_digest=model_digest,
    )


def random_noise(oracle: Oracle, n: int = DEFAULT_N, *, seed: int = 0, model_digest: str = "",
                 meta: dict | None = None) -> KeyFile:
    """Key of n uniform-noise images U[0, 1]^(C, H, W) drawn from ``seed``, with y = argmax f(x).

    Args:
        n: number of query samples.
        seed: draws the images.
    """
    check_query_count(n, "n")
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *oracle.input_shape), generator=gen)
    return KeyFile(
        method="random",
        config={"n": n, "seed": seed, **(meta or {})},
        queries=x,
        expected=oracle.labels(x),
        model_digest=model_digest,
    )


SPECS = tuple(
    MethodSpec(name, "integrity", summary, create_access="labels", verify_access="labels", embeds=False,
               verdicts=("intact", "tampered"), verify=verify, create=create, inputs=inputs)
    for name, summary, create, inputs in (
        ("natural", "baseline: natural test images labelled by the model", natural, "natural"),
        ("random", "baseline: uniform-noise images labelled by the model", random_noise, "none"),
    )
)
