"""Sequential decisions: ask a key's queries in a seeded random order, in batches, and stop once the answer is certain.

One function per purpose, each called after every batch with what the method's own verifier says about the
queries asked so far. Each states its error bound:

- integrity (``integrity_decision``): exact, no error spent. The label marks (DBI, natural, random, AID)
  say TAMPERED when any query's label flips and the pairs mark when any pair has a changed member, so one
  counted flip among the asked queries is a flip of the whole key. INTACT needs every query: none of these
  statistics allows less, since any query not asked could be the one that flips.
- ownership (``ownership_decision``): MATCH when the one-sided mixture e-value of the match indicators
  against the larger of the method's null p0 and its threshold reaches 1/alpha, or when even all remaining
  queries missing would leave the full key a match; NO MATCH when the e-value of the misses against the
  method's threshold (the alternative) reaches 1/alpha, or when even all remaining queries matching could not
  reach the full key's decision. By Ville's inequality the chance of ever claiming MATCH for a model whose
  per-query match rate is at or below max(p0, threshold) is at most alpha, at every stopping time and
  whatever the batch sizes; likewise for NO MATCH on a model whose rate is >= the threshold. The curtailed
  decisions are exact (the full key decides the same). The MATCH claim is tested against the threshold too,
  not the null alone: the whole key needs the rate at the threshold as well as a small p-value, and a model
  between the two (a LeNet-5 distilled from an independent VGG-11 answers 39-43 % of MetaFinger's queries
  as the source, against its calibrated p0 ~ 0.15 and threshold 0.5) is one the whole key does not claim;
  an e-value against p0 alone claimed such models early, once a lucky prefix passed the threshold, in 3 of
  6 (model, query order) runs of ``nnmark bench ownership``. IPGuard's p0 = 1/K is reported but, by its own
  account, far below how often independent models agree on boundary points: its threshold decides.
- telltale (``telltale_decision``): stop once at most one environment of the key stays consistent with every
  answer so far. No probability bound: the remaining queries could still rule that environment out (an
  environment the key does not know); the decision is the one the asked queries support.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import betainc, betaln

from nnmark.errors import ArgumentError
from nnmark.marks.ownership.stats import binomial_tail

DEFAULT_ALPHA = 1e-3
"""The error bound of an ownership claim (MATCH or NO MATCH) under early stopping."""
DEFAULT_BATCH_SIZE = 8
"""Queries asked per batch before the decision is checked again."""
_MAX_LOG = 700.0
"""The largest log e-value reported as a float (exp(700) ~ 1e304)."""


@dataclass
class Step:
    """A sequential decision after one batch.

    Attributes:
        decided: whether asking more queries can stop.
        passed: when decided, whether the check passes (intact, match); None for telltale, where the method's
            verifier says which environment answered.
        rule: which rule decided (e.g. "first flip", "e-value", "curtailed", "whole key").
        e_value: the e-value of the claim made (ownership, rule "e-value"), else None.
    """

    decided: bool
    passed: bool | None = None
    rule: str = ""
    e_value: float | None = None


def query_order(n: int, seed: int, group: int = 1) -> torch.Tensor:
    """A seeded random order of the n key indices that keeps each run of ``group`` consecutive indices together.

    ``group=2`` keeps the two members of a sensitive-sample pair in one batch, next to each other.
    """
    if n < 1 or group < 1 or n % group:
        raise ArgumentError(f"cannot order {n} queries in groups of {group}")
    units = torch.randperm(n // group, generator=torch.Generator().manual_seed(seed))
    return (units[:, None] * group + torch.arange(group)).flatten()


def batches(order: torch.Tensor, batch_size: int, group: int = 1) -> list[torch.Tensor]:
    """The prefixes of ``order`` asked after each batch: batch_size queries more each (rounded up to whole groups)."""
    if batch_size < 1:
        raise ArgumentError(f"batch size must be >= 1, got {batch_size}")
    step = math.ceil(batch_size / group) * group
    return [order[:end] for end in range(step, len(order) + step, step)]


def log_mixture_e_value(successes: int, trials: int, p0: float) -> float:
    """log E_t of the one-sided Beta-mixture test martingale for 'success rate > p0'.

    E_t = integral over q in [p0, 1] of prod_i q^X_i (1-q)^(1-X_i) / (p0^X_i (1-p0)^(1-X_i)) dq / (1 - p0):
    a mixture of likelihood-ratio martingales, each with mean 1 when X_i ~ Bernoulli(p0) i.i.d. and at most
    1 when the rate is below p0 (q >= p0), so P[sup_t E_t >= 1/alpha] <= alpha (Ville). Closed form with
    k successes of t: B(k+1, t-k+1) (1 - I_p0(k+1, t-k+1)) / ((1 - p0) p0^k (1-p0)^(t-k)).
    """
    if not (0 < p0 < 1) or not (0 <= successes <= trials):
        raise ArgumentError(f"need 0 < p0 < 1 and 0 <= successes <= trials, got {p0}, {successes}, {trials}")
    a, b = successes + 1, trials - successes + 1
    upper = 1.0 - float(betainc(a, b, p0))
    if upper <= 0:
        return -math.inf
    return (float(betaln(a, b)) + math.log(upper) - math.log1p(-p0)
            - successes * math.log(p0) - (trials - successes) * math.log1p(-p0))


def anytime_p_value(successes: int, trials: int, p0: float) -> float:
    """min(1, 1/E_t) of ``log_mixture_e_value``: a p-value for 'rate > p0' valid at any stopping time."""
    return math.exp(-max(log_mixture_e_value(successes, trials, p0), 0.0))


def integrity_decision(flips: int, asked: int, n: int) -> Step:
    """Stop at the first counted flip (exact: the full key is tampered too); INTACT only once all n are asked."""
    if flips:
        return Step(True, False, "first flip")
    if asked >= n:
        return Step(True, True, "whole key")
    return Step(False)


def _full_key_matches(hits: int, n: int, p0: float, threshold: float, max_p_value: float | None) -> bool:
    """The method's own rule on the whole key: rate >= threshold and, when given, P[Bin(n, p0) >= hits] < max_p."""
    return hits / n >= threshold and (max_p_value is None or binomial_tail(hits, n, p0) < max_p_value)


def match_null(p0: float, threshold: float, max_p_value: float | None) -> float:
    """The rate a MATCH claim is tested against: the threshold when the rate alone decides, else the larger of the
    null p0 and the threshold (the whole key needs both the rate and the p-value; module docstring)."""
    return threshold if max_p_value is None else max(p0, threshold)


def ownership_decision(hits: int, asked: int, n: int, *, p0: float, threshold: float, max_p_value: float | None,
                       alpha: float = DEFAULT_ALPHA) -> Step:
    """Match (passed) / no match after ``asked`` of n queries with ``hits`` matches, or undecided (module docstring).

    Args:
        hits: queries answered as the key expects, among those asked.
        asked: queries asked so far; n: the key's size.
        p0: the method's null, the match rate of an independent model.
        threshold: the method's least match rate of a match.
        max_p_value: the method's bound on the binomial p-value of the whole key, or None (rate rule alone:
            the e-value for MATCH then tests against ``threshold``, else against max(p0, threshold)).
        alpha: the bound on a false claim under early stopping.
    """
    if not 0 < alpha < 1:
        raise ArgumentError(f"alpha must lie in (0, 1), got {alpha}")
    if asked >= n:
        matched = _full_key_matches(hits, n, p0, threshold, max_p_value)
        return Step(True, matched, "whole key")
    if _full_key_matches(hits, n, p0, threshold, max_p_value):
        return Step(True, True, "curtailed")
    if not _full_key_matches(hits + n - asked, n, p0, threshold, max_p_value):
        return Step(True, False, "curtailed")
    bound = math.log(1 / alpha)
    misses = asked - hits
    null = match_null(p0, threshold, max_p_value)
    if 0 < null < 1:
        log_e = log_mixture_e_value(hits, asked, null)
        if log_e >= bound:  # implies a rate so far above the null, so at or above the threshold
            return Step(True, True, "e-value", math.exp(min(log_e, _MAX_LOG)))
    if 0 < threshold < 1:
        log_e = log_mixture_e_value(misses, asked, 1 - threshold)
        if log_e >= bound:  # implies a rate so far below the threshold
            return Step(True, False, "e-value", math.exp(min(log_e, _MAX_LOG)))
    return Step(False)


def telltale_decision(consistent: list[str], asked: int, n: int) -> Step:
    """Stop once at most one environment is consistent with every answer so far (or the whole key is asked)."""
    if len(consistent) == 1:
        return Step(True, rule="one environment left")
    if not consistent:
        return Step(True, rule="no environment left")
    if asked >= n:
        return Step(True, rule="whole key")
    return Step(False)
