"""The HMAC-chained audit log: every edit, deletion, insertion and reordering is found and named."""

import json

import pytest

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


def test_a_torn_last_line_verifies_up_to_the_record_before_it_and_the_next_append_cuts_it(log):
    path, macs = log
    data = path.read_bytes()
    cut = data[: len(data) - 40]
    path.write_bytes(cut)
    check = verify_log(path, SECRET)
    assert check.ok and check.records == 3 and check.last_mac == macs[2] and check.torn_bytes > 0
    assert "torn" in check.summary()
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
