"""The HMAC-chained audit log: every edit, deletion, insertion and reordering is found and named."""

import json

import pytest

from nnmark.audit import log as audit_log
from nnmark.audit.log import GENESIS, AuditLogError, append, verify_log
from nnmark.errors import SignatureError

SECRET = b"owner-secret"


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    macs = [append(path, {"run": i, "verdicts": [{"method": "dbi", "p": 0.5 * i}]}, SECRET) for i in range(4)]
    return path, macs


def _lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def _write(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_an_untouched_log_verifies_and_returns_the_last_mac(log):
    path, macs = log
    check = verify_log(path, SECRET)
    assert check.ok and check.records == 4 and check.last_mac == macs[-1] and check.bad_line is None
    assert [json.loads(line)["seq"] for line in _lines(path)] == [1, 2, 3, 4]
    assert "cannot show records cut from the end" in check.summary()


def test_a_wrong_secret_fails_at_the_first_record(log):
    path, _ = log
    check = verify_log(path, b"another")
    assert not check.ok and check.bad_line == 1 and check.records == 0 and check.last_mac == GENESIS


@pytest.mark.parametrize("record", range(4))
@pytest.mark.parametrize("where", [2, 10, 30, -3, -70])
def test_editing_one_byte_of_any_record_is_found_at_that_line(log, record, where):
    path, _ = log
    lines = _lines(path)
    line = bytearray(lines[record])
    line[where] = ord("x") if line[where] != ord("x") else ord("y")
    lines[record] = bytes(line)
    _write(path, lines)
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == record + 1 and check.records == record
    assert "edited" in check.reason


def test_changing_the_last_newline_is_not_taken_for_a_torn_line(log):
    path, _ = log
    data = path.read_bytes()
    path.write_bytes(data[:-1] + b"x")
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == 4 and check.torn_bytes == 0


@pytest.mark.parametrize("record", range(3))
def test_deleting_a_record_is_found_where_the_chain_breaks(log, record):
    path, _ = log
    lines = _lines(path)
    del lines[record]
    _write(path, lines)
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == record + 1
    assert f"#{record + 2} stands where #{record + 1} belongs" in check.reason


def test_swapping_two_records_is_found(log):
    path, _ = log
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(path, lines)
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == 2 and "deleted, inserted or moved" in check.reason


def test_inserting_a_record_from_another_log_is_found(log, tmp_path):
    path, _ = log
    other = tmp_path / "other.jsonl"
    append(other, {"run": 99}, SECRET)
    lines = _lines(path)
    lines.insert(2, _lines(other)[0])
    _write(path, lines)
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == 3


def test_a_torn_last_line_fails_unless_allowed_and_then_is_ignored_and_the_next_append_cuts_it(log):
    path, macs = log
    data = path.read_bytes()
    cut = data[: len(data) - 40]
    path.write_bytes(cut)
    strict = verify_log(path, SECRET)
    assert not strict.ok and strict.bad_line == 4 and strict.records == 3 and strict.last_mac == macs[2]
    assert strict.torn_bytes > 0 and "torn" in strict.reason and "cannot be verified" in strict.summary()
    check = verify_log(path, SECRET, allow_torn_tail=True)
    assert check.ok and check.records == 3 and check.last_mac == macs[2] and check.torn_bytes == strict.torn_bytes
    assert "torn" in check.summary() and "ignored" in check.summary()
    append(path, {"run": "after crash"}, SECRET)
    after = verify_log(path, SECRET)
    assert after.ok and after.records == 4 and after.torn_bytes == 0
    assert json.loads(_lines(path)[-1])["torn_tail_bytes"] == check.torn_bytes


def test_append_refuses_to_extend_a_broken_chain(log):
    path, _ = log
    lines = _lines(path)
    del lines[0]
    _write(path, lines)
    with pytest.raises(AuditLogError, match="line 1"):
        append(path, {"run": 5}, SECRET)


def test_no_secret_is_refused(tmp_path):
    with pytest.raises(SignatureError):
        append(tmp_path / "a.jsonl", {"run": 1}, b"")
    with pytest.raises(ValueError):
        append(tmp_path / "a.jsonl", {"mac": "x"}, SECRET)


def test_a_last_record_edited_then_cut_cannot_pass_as_verified(log):
    path, macs = log
    lines = _lines(path)
    lines[-1] = lines[-1].replace(b'"run":3', b'"run":9')
    path.write_bytes(b"".join(line + b"\n" for line in lines[:-1]) + lines[-1][:-30])
    strict = verify_log(path, SECRET)
    assert not strict.ok and strict.bad_line == 4 and "torn" in strict.reason
    allowed = verify_log(path, SECRET, allow_torn_tail=True)  # reported and ignored: the first 3 records decide
    assert allowed.ok and allowed.records == 3 and allowed.last_mac == macs[2] and allowed.torn_bytes > 0


def test_log_verify_exits_1_on_a_torn_tail_and_0_with_allow_torn_tail(log, tmp_path):
    from click.testing import CliRunner

    from nnmark.cli import main

    path, _ = log
    path.write_bytes(path.read_bytes()[:-20])
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)

    def run(*extra):
        return CliRunner().invoke(main, ["log", "verify", str(path), "--secret-file", str(secret), *extra],
                                  env={"NNMARK_SECRET": None})

    strict, allowed = run(), run("--allow-torn-tail")
    assert strict.exit_code == 1 and "BROKEN at line 4" in strict.stdout and "torn" in strict.stdout
    assert allowed.exit_code == 0 and "OK: 3 records verify" in allowed.stdout and "ignored" in allowed.stdout
    assert json.loads(run("--json").stdout)["torn_bytes"] > 0


def test_a_line_longer_than_a_record_may_be_is_refused_and_never_written(log, monkeypatch):
    path, _ = log
    monkeypatch.setattr(audit_log, "MAX_RECORD_BYTES", 300)
    with pytest.raises(AuditLogError, match="more than a log record may hold"):
        append(path, {"run": "x" * 400}, SECRET)
    assert verify_log(path, SECRET).records == 4
    path.write_bytes(path.read_bytes() + b"{" * 1000 + b"\n")
    check = verify_log(path, SECRET)
    assert not check.ok and check.bad_line == 5 and "longer than 300 bytes" in check.reason
