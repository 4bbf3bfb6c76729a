"""The binomial tail p-value behind ownership decisions."""

from __future__ import annotations

from scipy.stats import binom


def binomial_tail(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), exact (scipy's survival function, accurate far into the tail).

    The one-sided p-value of observing ``k`` or more agreements out of ``n`` queries when each agrees
    with probability ``p`` under the null (an independent model). ``k <= 0`` gives 1.0.
    """
    if isinstance(k, bool) or isinstance(n, bool) or not (isinstance(k, int) and isinstance(n, int)):
        raise ValueError(f"k and n must be integers, got {k!r} and {n!r}")
    if n < 0 or k > n:
        raise ValueError(f"need 0 <= n and k <= n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n, p))
