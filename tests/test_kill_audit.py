"""The audit's decision and exit-status functions on hand-made verdicts and results (fast: mutation-tested)."""

import pytest

from nnmark.audit import run
from nnmark.audit import sequential as seq
from nnmark.marks.verdict import Verdict

RULE = {"p0": 0.1, "threshold": 0.5, "max_p_value": 1e-3}
"""A match-verdict rule (``stats.match_verdict``'s details)."""
WATERMARK = {"null": 0.1, "min_success": 0.5, "alpha": 1e-3}
"""The same rule as a watermark verdict names it (``stats.watermark_verdict``'s details)."""


def _verdict(method, passed, flipped=(), **details):
    return Verdict(method, "x", passed, "s", 0.0, flipped=list(flipped), details=details)


def _result(name, passed, decision="x", note=""):
    return run.KeyResult(name, "", "dbi", "integrity", run.ERROR if passed is None else decision, passed, 10,
                         note=note)


def _report(*passed, error="", target="t"):
    return run.TargetReport(target, {}, [_result(f"k{i}.key", p, note=f"why {i}") for i, p in enumerate(passed)],
                            error)


def test_integrity_is_intact_only_after_the_whole_key_and_tampered_at_the_first_flip():
    intact = _verdict("dbi", True)
    assert not run.decide(run.INTEGRITY, intact, 99, 100, 1e-3).decided
    step = run.decide(run.INTEGRITY, intact, 100, 100, 1e-3)
    assert step.decided and step.passed is True
    step = run.decide(run.INTEGRITY, _verdict("dbi", False, [3]), 8, 100, 1e-3)
    assert step.decided and step.passed is False


def test_telltale_stops_when_one_environment_is_left_or_the_key_is_asked():
    two = _verdict("innformant", True, consistent=["cpu", "gpu"])
    assert not run.decide(run.TELLTALE, two, 8, 20, 1e-3).decided
    assert run.decide(run.TELLTALE, two, 20, 20, 1e-3).decided
    assert run.decide(run.TELLTALE, _verdict("innformant", True, consistent=["cpu"]), 8, 20, 1e-3).decided


@pytest.mark.parametrize("passed", [True, False])
def test_a_whole_key_method_keeps_its_own_verdict(passed):
    step = run.decide(run.OWNERSHIP, _verdict("sac", passed), 5, 10, 1e-3)
    assert step.decided and step.passed is passed and step.rule == "whole key"


@pytest.mark.parametrize("details", [RULE, WATERMARK])
def test_ownership_counts_the_unflipped_queries_as_matches_under_either_naming_of_the_rule(details):
    below = run.decide(run.OWNERSHIP, _verdict("zhang", True, range(11), **details), 20, 20, 1e-3)
    assert below.decided and below.passed is False  # 9 of 20 < the threshold, whatever the verifier said
    above = run.decide(run.OWNERSHIP, _verdict("zhang", False, range(10), **details), 20, 20, 1e-3)
    assert above.decided and above.passed is True  # 10 of 20 = the threshold, p-value ~7e-6 < 1e-3
    early = run.decide(run.OWNERSHIP, _verdict("zhang", True, **details), 24, 1000, 1e-3)
    assert early.decided and early.passed is True and early.rule == "e-value"
    assert not run.decide(run.OWNERSHIP, _verdict("zhang", True, **details), 24, 1000, 1e-30).decided


@pytest.mark.parametrize("details", [{**RULE, "p0": 0.5}, {**WATERMARK, "null": 0.5}])
def test_ownership_needs_the_p_value_bound_as_well_as_the_rate(details):
    step = run.decide(run.OWNERSHIP, _verdict("zhang", True, range(8), **details), 20, 20, 1e-3)
    assert step.decided and step.passed is False  # 12 of 20 >= 0.5, but P[Bin(20, 0.5) >= 12] ~ 0.25


def test_the_ownership_p_value_is_the_whole_keys_once_asked_else_anytime_valid():
    v = _verdict("zhang", True, [0, 1], p_value=0.0123, **RULE)
    assert run._ownership_p_value(v, 20, 20) == 0.0123
    early = run._ownership_p_value(v, 10, 20)  # against the larger of p0 and the threshold
    assert early == seq.anytime_p_value(8, 10, RULE["threshold"]) and 0 < early < 1
    high_null = _verdict("zhang", True, [0, 1], **{**RULE, "p0": 0.6})
    assert run._ownership_p_value(high_null, 10, 20) == seq.anytime_p_value(8, 10, 0.6)
    rate_only = _verdict("zhang", True, [0, 1], threshold=0.5, p0=0.1)
    assert run._ownership_p_value(rate_only, 10, 20) == seq.anytime_p_value(8, 10, 0.5)
    watermark = _verdict("zhang", True, **{**WATERMARK, "min_success": 0.05})
    assert run._ownership_p_value(watermark, 10, 20) == seq.anytime_p_value(10, 10, 0.1)


def test_a_target_passes_only_when_every_key_passed():
    assert _report(True, True).status() == 0 and _report(True, True).problem() == ""
    assert _report(True, False).status() == 1 and _report(False).problem() == ""


def test_a_target_with_an_error_or_nothing_checked_has_status_2_and_says_why():
    mixed = _report(True, None, None)
    assert mixed.status() == 2 and mixed.problem() == "2 of 3 keys failed, first k1.key: why 1"
    assert _report(False, None).status() == 2
    assert _report(None).problem() == f"1 of 1 keys failed, first k0.key: why 0; {run.NOTHING_CHECKED}"
    assert _report().problem() == run.NOTHING_CHECKED and _report().status() == 2
    stopped = _report(True, error="connection refused")
    assert stopped.status() == 2 and stopped.problem() == "connection refused"


def test_the_run_exits_with_its_worst_target_and_names_the_first_with_a_problem():
    assert run.exit_status([_report(True), _report(True)]) == 0
    assert run.exit_status([_report(True), _report(False), _report(True)]) == 1
    assert run.exit_status([_report(False), _report(None), _report(True)]) == 2
    assert run.exit_status([]) == 2 and run.problem([]) == f"no target: {run.NOTHING_CHECKED}"
    assert run.problem([_report(True), _report(False)]) == ""
    one = [_report(True), _report(target="a", error="gone")]
    assert run.problem(one) == "a: gone"
    assert run.problem([*one, _report(target="b")]) == "a: gone (and 1 more targets)"
    three = [_report(True), _report(target="a", error="gone"), _report(None, target="b"), _report(target="c")]
    assert run.problem(three) == "a: gone (and 2 more targets)"
