"""The answer a verifier gives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    """Outcome of asking a model a key file's queries.

    Attributes:
        method: the key's method name.
        decision: e.g. "intact" / "tampered".
        passed: True when the check passed (the CLI exits 0), False when it failed (exit 1).
        statistic_name: what the decision rests on (e.g. "change_rate").
        statistic: its value.
        flipped: indices of the queries whose answer differs from the expected one.
        queries: queries spent on this verification.
        details: anything else a method reports (per-sample numbers, thresholds, p-values).
    """

    method: str
    decision: str
    passed: bool
    statistic_name: str
    statistic: float
    flipped: list[int] = field(default_factory=list)
    queries: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)
