"""What the label-comparison integrity marks share: Algorithm 2 of Yin et al."""

from __future__ import annotations

import torch

from nnmark.keys import KeyFile
from nnmark.marks.verdict import Verdict
from nnmark.metrics import change_rate
from nnmark.oracles import Oracle


def verify_labels(oracle: Oracle, key: KeyFile) -> Verdict:
    """Integrity verification (Algorithm 2): TAMPERED when any query's label differs from y'.

    Needs labels only. Reports ChangeRate (eq. 5) and the flipped indices.
    """
    before = oracle.queries
    observed = oracle.labels(key.queries)
    flipped = torch.nonzero(observed != key.expected).flatten().tolist()
    return Verdict(
        method=key.method,
        decision="tampered" if flipped else "intact",
        passed=not flipped,
        statistic_name="change_rate",
        statistic=change_rate(key.expected, observed),
        flipped=flipped,
        queries=oracle.queries - before,
        details={"n": len(key.expected)},
    )
