"""The p-values behind ownership decisions: the binomial tail over a key's queries, the Student-t predictive tail
over the calibration models the owner trains; and the verdicts built from them."""

from __future__ import annotations

import math

import torch
from scipy.special import bdtrc, stdtr

from nnmark.errors import ArgumentError, NnmarkError
from nnmark.marks.verdict import Verdict


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), exact (scipy's regularised incomplete beta, accurate far into the tail).

    The one-sided p-value of observing ``k`` or more agreements out of ``n`` queries when each agrees
    with probability ``p`` under the null (an independent model). ``k <= 0`` gives 1.0.
    """
    if isinstance(k, bool) or isinstance(n, bool) or not (isinstance(k, int) and isinstance(n, int)):
        raise ArgumentError(f"k and n must be integers, got {k!r} and {n!r}")
    if n < 0 or k > n:
        raise ArgumentError(f"need 0 <= n and k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ArgumentError(f"p must lie in [0, 1], got {p}")
    if k <= 0:
        return 1.0
    return float(bdtrc(k - 1, n, p))  # P[X > k - 1]; scipy.special, not scipy.stats (~0.4 s to import)


def normal_fit(values: list[float]) -> tuple[float, float]:
    """(mean mu_hat, sample standard deviation s) of K >= 2 calibration values; NnmarkError when they have no
    spread (no null can be fitted to them)."""
    k = len(values)
    if k < 2:
        raise ArgumentError(f"calibration needs at least 2 independent models, got {k}")
    if max(values) == min(values):
        raise NnmarkError("the calibration models' values have no spread, so no false-claim bound can be fitted; "
                          "use other calibration models")
    mean = math.fsum(values) / k
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (k - 1))


def predictive_tail(x: float, mean: float, std: float, k: int) -> float:
    """P[X <= x] for a new draw X of the normal that K calibration values of mean ``mean`` and sample standard
    deviation ``std`` were drawn from, both its parameters unknown: X = mu_hat + s sqrt(1 + 1/K) T_{K-1} (Student's t
    with K - 1 degrees of freedom: the t pays for a spread estimated from few models)."""
    return float(stdtr(k - 1, (x - mean) / (std * math.sqrt(1 + 1 / k))))


def match_verdict(
    method: str,
    hits_mask: torch.Tensor,
    queries: int,
    *,
    statistic_name: str,
    p0: float,
    threshold: float,
    max_p_value: float | None = None,
    **details,
) -> Verdict:
    """The ownership verdict from which key queries the suspect answered as expected (``hits_mask`` (n,) bool).

    "match" (passed) iff the rate hits / n >= ``threshold`` and, when ``max_p_value`` is given, the
    one-sided p-value P[Bin(n, p0) >= hits] < ``max_p_value``. Details: n, hits, p0, p_value, the
    threshold(s) and ``details``; ``flipped`` lists the queries answered otherwise.
    """
    hits, n = int(hits_mask.sum()), len(hits_mask)
    rate, p_value = hits / n, binomial_tail(hits, n, p0)
    passed = rate >= threshold and (max_p_value is None or p_value < max_p_value)
    limits = {"threshold": threshold} if max_p_value is None else {"threshold": threshold, "max_p_value": max_p_value}
    return Verdict(
        method=method,
        decision="match" if passed else "no match",
        passed=passed,
        statistic_name=statistic_name,
        statistic=rate,
        flipped=torch.nonzero(~hits_mask).flatten().tolist(),
        queries=queries,
        details={"n": n, "hits": hits, "p0": p0, "p_value": p_value, **limits, **details},
    )


def watermark_verdict(
    method: str,
    hits: torch.Tensor,
    queries: int,
    *,
    null: float,
    min_success: float,
    alpha: float,
    **details,
) -> Verdict:
    """The watermark verdict from which triggers the suspect answered as the key expects (``hits`` (n,) bool).

    Success s = k / n; "watermarked" (passed) iff s >= ``min_success`` and P[Bin(n, null) >= k] < ``alpha``.
    Details: n, successes, null, p_value, min_success, alpha and ``details``.
    """
    k, n = int(hits.sum()), len(hits)
    p_value = binomial_tail(k, n, null)
    found = k / n >= min_success and p_value < alpha
    return Verdict(
        method=method,
        decision="watermarked" if found else "not watermarked",
        passed=found,
        statistic_name="success_rate",
        statistic=k / n,
        flipped=torch.nonzero(~hits).flatten().tolist(),
        queries=queries,
        details={"n": n, "successes": k, **details, "null": null, "p_value": p_value, "min_success": min_success,
                 "alpha": alpha},
    )
