"""The HMAC-chained audit log: every edit, deletion, insertion and reordering is found and named."""

import json
import os
import stat
import tracemalloc

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
    with pytest.raises(SignatureError) as caught:
        append(tmp_path / "a.jsonl", {"run": 1}, b"")
    assert str(caught.value) == "the audit log needs the owner's secret (--secret-file or NNMARK_SECRET)"
    with pytest.raises(ValueError, match="record must not carry 'mac' or 'seq'; append sets them"):
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


def _replace_line(path, number, line):
    lines = _lines(path)
    lines[number - 1] = line
    _write(path, lines)


def test_a_record_edited_into_another_valid_record_fails_its_mac(log):
    path, _ = log
    record = json.loads(_lines(path)[2])
    record["run"] = 7
    _replace_line(path, 3, json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
    check = verify_log(path, SECRET)
    assert check.ok is False and check.bad_line == 3 and check.records == 2
    assert check.reason.startswith("its MAC does not match")


@pytest.mark.parametrize("line, reason", [
    (b"not json", "not a JSON record"),
    (b"[1,2]", "not an audit record"),
    (b'{"run":1,"seq":1}', "not an audit record"),
    (b'{"mac":"00","seq":2}', "its MAC does not match"),
])
def test_each_kind_of_bad_line_is_named_with_its_reason(log, line, reason):
    path, _ = log
    _replace_line(path, 2, line)
    check = verify_log(path, SECRET)
    assert check.ok is False and check.bad_line == 2 and check.reason.startswith(reason)


def test_a_record_rewritten_out_of_canonical_form_is_named(log):
    path, _ = log
    _replace_line(path, 2, json.dumps(json.loads(_lines(path)[1]), sort_keys=True).encode())
    check = verify_log(path, SECRET)
    assert check.ok is False and check.bad_line == 2 and check.reason == "not in canonical form (edited)"


def test_the_report_of_a_log_names_every_field_and_the_torn_note_only_when_a_torn_tail_was_ignored(log):
    path, macs = log
    check = verify_log(path, SECRET)
    assert check.summary().splitlines()[0] == "OK: 4 records verify"
    assert check.to_dict() == {"ok": True, "records": 4, "last_mac": macs[-1], "bad_line": None, "reason": "",
                               "torn_bytes": 0, "note": audit_log.TAIL_NOTE}
    path.write_bytes(path.read_bytes()[:-20])
    strict = verify_log(path, SECRET)
    assert "ignored" not in strict.summary()
    assert strict.reason.endswith("--allow-torn-tail accepts the records before it")
    assert f"torn ({strict.torn_bytes} bytes)" in strict.reason and strict.ok is False


def test_a_log_missing_only_its_last_newline_is_extended_on_a_new_line(log):
    path, _ = log
    path.write_bytes(path.read_bytes()[:-1])
    append(path, {"run": 5}, SECRET)
    check = verify_log(path, SECRET)
    assert check.ok and check.records == 5 and json.loads(_lines(path)[-1])["run"] == 5


def test_a_write_the_disk_cut_short_is_an_error_and_the_next_append_cuts_it(log, monkeypatch):
    path, _ = log
    write = audit_log.os.write
    monkeypatch.setattr(audit_log.os, "write", lambda fd, data: write(fd, data[: len(data) // 2]))
    with pytest.raises(AuditLogError, match="the disk took only part of the record; the next append cuts it"):
        append(path, {"run": 5}, SECRET)
    monkeypatch.undo()
    assert verify_log(path, SECRET).ok is False
    append(path, {"run": 6}, SECRET)
    check = verify_log(path, SECRET)
    assert check.ok and check.records == 5 and json.loads(_lines(path)[-1])["torn_tail_bytes"] > 0


def test_a_failing_disk_is_an_audit_log_error_with_the_system_s_reason(log, monkeypatch):
    import errno

    path, _ = log

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(audit_log.os, "fsync", fsync)
    with pytest.raises(AuditLogError) as caught:
        append(path, {"run": 5}, SECRET)
    assert str(caught.value) == f"{path}: cannot append to audit log: Input/output error"


def test_a_missing_log_or_folder_is_an_audit_log_error_with_the_system_s_reason(tmp_path):
    missing = tmp_path / "no" / "audit.jsonl"
    with pytest.raises(AuditLogError) as read:
        verify_log(missing, SECRET)
    assert str(read.value) == f"{missing}: cannot read audit log: No such file or directory"
    with pytest.raises(AuditLogError) as write:
        append(missing, {"run": 1}, SECRET)
    assert str(write.value) == f"{missing}: cannot open audit log: No such file or directory"


@pytest.mark.parametrize("action", [lambda p: verify_log(p, SECRET), lambda p: append(p, {"run": 1}, SECRET)])
def test_a_fifo_is_refused_without_blocking(tmp_path, action):
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(AuditLogError, match="not a regular file"):
        action(fifo)


def test_a_new_log_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "audit.jsonl"
    append(path, {"run": 1}, SECRET)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_record_of_exactly_the_longest_size_is_written_and_verifies(tmp_path, monkeypatch):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append(first, {"run": "x" * 100}, SECRET)
    monkeypatch.setattr(audit_log, "MAX_RECORD_BYTES", len(_lines(first)[0]))
    append(second, {"run": "x" * 100}, SECRET)
    assert verify_log(second, SECRET).records == 1 and verify_log(first, SECRET).ok


def test_an_over_long_line_is_refused_without_reading_it_whole(log, monkeypatch):
    path, macs = log
    path.write_bytes(path.read_bytes() + b"x" * (20 * 2**20) + b"\n")
    monkeypatch.setattr(audit_log, "MAX_RECORD_BYTES", 300)
    tracemalloc.start()
    try:
        check = verify_log(path, SECRET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.ok is False and check.bad_line == 5 and check.records == 4 and check.last_mac == macs[-1]
    assert peak < 2**20
