"""How much of a key a round reveals: the random subset it asks, and the share of the key ever sent to a target.

An endpoint that logs every request learns each query it is sent. With ``k`` of a key's ``n`` queries drawn at
random each round, after ``N`` rounds it has seen on average ``n * (1 - (1 - k/n) ** N)`` distinct queries
(``expected_share``); the sequential audit stops early, so fewer are sent when a key decides before its subset's
end. A key that would pass ``max_share`` on a target is refused there (``ExposureRefused``) unless allowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from nnmark.audit import run as audit_run
from nnmark.errors import NnmarkError
from nnmark.keys import KeyFile

DEFAULT_SAMPLE = 32
"""Queries of each key asked per round (0: the whole key)."""
DEFAULT_WARN = 0.5
DEFAULT_MAX = 0.8


class ExposureRefused(NnmarkError):
    """Asking a key again would send a target more of it than the hard bound allows."""


@dataclass(frozen=True)
class Limits:
    """Queries per key per round (``sample``, 0 the whole key), the share past which a warning is given, the share
    no round may pass unless ``allow``."""

    sample: int = DEFAULT_SAMPLE
    warn: float = DEFAULT_WARN
    max: float = DEFAULT_MAX
    allow: bool = False


def expected_share(n: int, k: int, rounds: int) -> float:
    """The expected share of an n-query key seen after ``rounds`` rounds of k random queries each."""
    k = n if k <= 0 else min(k, n)
    return 1 - (1 - k / n) ** rounds


def subset(key: KeyFile, sample: int, rng: random.Random) -> torch.Tensor:
    """A random subset of ``sample`` query indices (in whole groups: a sensitive-sample pair stays together),
    sorted; every index when ``sample`` is 0 or at least the key's size."""
    n = len(key.expected)
    group = audit_run.GROUPS.get(key.method, 1)
    groups = n // group
    take = groups if sample <= 0 else min(groups, max(1, sample // group))
    chosen = sorted(rng.sample(range(groups), take))
    return torch.tensor([g * group + j for g in chosen for j in range(group)], dtype=torch.long)


def check(exposed: set[int], idx: torch.Tensor, n: int, limits: Limits) -> float:
    """The share of the key sent once ``idx`` is asked too; ``ExposureRefused`` past ``limits.max`` unless allowed."""
    share = len(exposed | set(idx.tolist())) / n
    if share > limits.max and not limits.allow:
        raise ExposureRefused(f"asking it could reveal {share:.0%} of the key, past --exposure-max "
                              f"{limits.max:.0%}: rotate in a fresh key, or lower --sample (or --allow-exposure)")
    return share


def sent_indices(key: KeyFile, idx: torch.Tensor, sent: list[str]) -> list[int]:
    """The key indices among ``idx`` whose inputs went to the target (matched by the SHA-256 the audit's recording
    oracle keeps of each input sent)."""
    digests = set(sent)
    return [i for i in idx.tolist() if audit_run.tensor_digest(key.queries[i].float()) in digests]
