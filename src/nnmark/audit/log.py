"""The audit log: one JSON line per audit run, each chained to the one before by an HMAC under the owner's secret.

Record ``k`` (1-based, its ``seq``) is the canonical JSON (sorted keys, compact, ASCII) of the run's fields
plus ``"mac"``, where mac_k = HMAC-SHA256(secret, mac_{k-1} || canonical JSON of the record without
``mac``) and mac_0 = ``GENESIS``. A record edited, deleted, inserted or moved breaks the chain at the
first line that no longer verifies, and that line is named. The chain cannot show that records were cut
from the *end*: ``verify_log`` returns the last MAC, for the owner to keep elsewhere and compare later.

Writing: the whole line is one ``write`` on a descriptor opened with ``O_APPEND``, then ``fsync``, under an
exclusive ``flock`` (two audits appending at once do not fork the chain). A crash mid-write can leave only
a torn last line; the next ``append`` cuts that torn fragment (it never was a record) and notes its size in
the new record's ``torn_tail_bytes``.

A torn last line proves nothing: it cannot be verified, and a record edited and then cut looks the same as a
write cut short. So ``verify_log`` fails on one (the records before it are counted) unless
``allow_torn_tail``, which reports it and ignores it. Only regular files are read (a FIFO would block), line
by line, each line at most ``MAX_RECORD_BYTES``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import BinaryIO

from nnmark._io import open_regular
from nnmark.errors import ArgumentError, NnmarkError, SignatureError
from nnmark.keys import _canonical_json

GENESIS = "0" * 64
"""mac_0, the MAC the first record chains to."""
MAC_FIELD = "mac"
SEQ_FIELD = "seq"
TORN_FIELD = "torn_tail_bytes"
MAX_RECORD_BYTES = 256 * 2**20
"""The longest record (line) a log holds: ~2 million query digests with their answers in one run."""
TAIL_NOTE = ("the chain cannot show records cut from the end of the file: keep the last MAC elsewhere "
             "and compare it with this one")


class AuditLogError(NnmarkError):
    """An audit log cannot be read, written, or extended (e.g. its chain is broken)."""


@dataclass
class LogCheck:
    """What ``verify_log`` found.

    Attributes:
        ok: True when every record verifies; a torn last line makes it False unless it was allowed (and ignored).
        records: how many records verified, from the first.
        last_mac: the MAC of the last verified record (``GENESIS`` for none): keep it elsewhere.
        bad_line: the 1-based line number of the first record that fails (a torn last line's when not allowed),
            or None.
        reason: why that line fails ('' when ok).
        torn_bytes: the size of a torn last line (a write cut short, or a record cut after an edit), 0 when none.
    """

    ok: bool
    records: int
    last_mac: str
    bad_line: int | None = None
    reason: str = ""
    torn_bytes: int = 0

    def summary(self) -> str:
        """One or two lines for a person: the result, the torn-tail note, the last MAC and what it cannot show."""
        if self.ok:
            head = f"OK: {self.records} records verify"
        else:
            head = f"BROKEN at line {self.bad_line}: {self.reason}; the {self.records} records before it verify"
        torn = (f"; the last line is torn ({self.torn_bytes} bytes) and cannot be verified: ignored "
                f"(--allow-torn-tail)" if self.ok and self.torn_bytes else "")
        return f"{head}{torn}\nlast MAC {self.last_mac} ({TAIL_NOTE})"

    def to_dict(self) -> dict:
        return {"ok": self.ok, "records": self.records, "last_mac": self.last_mac, "bad_line": self.bad_line,
                "reason": self.reason, "torn_bytes": self.torn_bytes, "note": TAIL_NOTE}


def record_mac(secret: bytes, prev_mac: str, record: dict) -> str:
    """mac_k = HMAC-SHA256(secret, mac_{k-1} || canonical JSON of ``record`` without its mac), hex."""
    body = {k: v for k, v in record.items() if k != MAC_FIELD}
    return hmac.new(bytes(secret), (prev_mac + _canonical_json(body)).encode("ascii"), hashlib.sha256).hexdigest()


def _check_secret(secret: bytes | None) -> bytes:
    if not (isinstance(secret, (bytes, bytearray)) and secret):
        raise SignatureError("the audit log needs the owner's secret (--secret-file or NNMARK_SECRET)")
    return bytes(secret)


def _check_line(line: bytes, seq: int, prev_mac: str, secret: bytes) -> tuple[str, str]:
    """(the record's mac, '') when ``line`` is record ``seq`` chained to ``prev_mac``, else ('', why not)."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return "", "not a JSON record (edited)"
    if not isinstance(record, dict) or not isinstance(record.get(MAC_FIELD), str):
        return "", "not an audit record (edited)"
    if _canonical_json(record).encode("ascii") != line:
        return "", "not in canonical form (edited)"
    if not hmac.compare_digest(record[MAC_FIELD], record_mac(secret, prev_mac, record)):
        found = record.get(SEQ_FIELD)
        if found != seq:
            return "", f"record #{found} stands where #{seq} belongs (a record was deleted, inserted or moved)"
        return "", "its MAC does not match (the record was edited, or the secret is wrong)"
    return record[MAC_FIELD], ""


def _is_torn(fragment: bytes) -> bool:
    """Whether a last line without its newline is a write cut short: it does not even start with a whole JSON value.

    A fragment that holds a whole JSON value plus extra bytes, or a whole record, was not cut short."""
    try:
        json.JSONDecoder().raw_decode(fragment.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return True
    return False


def _torn_reason(size: int) -> str:
    return (f"the last line is torn ({size} bytes): it cannot be verified (a write cut short, or a record cut "
            "after an edit); --allow-torn-tail accepts the records before it")


def _scan(fh: BinaryIO, secret: bytes, allow_torn_tail: bool) -> LogCheck:
    """Verify the chain over a log read from ``fh`` line by line (each at most ``MAX_RECORD_BYTES``)."""
    prev, count = GENESIS, 0
    while line := fh.readline(MAX_RECORD_BYTES + 2):
        number, record = count + 1, line.removesuffix(b"\n")
        if len(record) > MAX_RECORD_BYTES:
            return LogCheck(False, count, prev, number, f"longer than {MAX_RECORD_BYTES} bytes (not a record)")
        if not line.endswith(b"\n") and _is_torn(line):
            if allow_torn_tail:
                return LogCheck(True, count, prev, torn_bytes=len(line))
            return LogCheck(False, count, prev, number, _torn_reason(len(line)), len(line))
        mac, why = _check_line(record, number, prev, secret)
        if why:
            return LogCheck(False, count, prev, number, why)
        prev, count = mac, count + 1
    return LogCheck(True, count, prev)


def _open_regular(path: str | os.PathLike, flags: int) -> int:
    """A descriptor of the regular file at ``path`` (``_io.open_regular``: never blocking on a FIFO)."""
    fd = open_regular(path, flags)
    if fd is None:
        raise AuditLogError(f"{path}: not a regular file")
    return fd


def verify_log(path: str | os.PathLike, secret: bytes, *, allow_torn_tail: bool = False) -> LogCheck:
    """Check every record of the log at ``path`` under ``secret``; names the first line that fails.

    A torn last line fails it (``bad_line``, ``torn_bytes``) unless ``allow_torn_tail``, which reports it in
    ``torn_bytes`` and ignores it. Truncation of whole records at the end cannot be seen: compare ``last_mac``
    with one kept elsewhere.
    """
    secret = _check_secret(secret)
    try:
        with open(_open_regular(path, os.O_RDONLY), "rb") as fh:
            return _scan(fh, secret, allow_torn_tail)
    except OSError as e:
        raise AuditLogError(f"{path}: cannot read audit log: {e.strerror or e}") from None


def append(path: str | os.PathLike, record: dict, secret: bytes) -> str:
    """Append ``record`` (JSON-able, no ``seq``/``mac``) as the next link of the log at ``path``; returns its MAC.

    Refuses (``AuditLogError``) to extend a log whose chain is broken. One ``write`` of the whole line with
    ``O_APPEND``, then ``fsync``, under an exclusive lock; a torn last line left by a crash is cut first.
    """
    secret = _check_secret(secret)
    if MAC_FIELD in record or SEQ_FIELD in record:
        raise ArgumentError(f"record must not carry {MAC_FIELD!r} or {SEQ_FIELD!r}; append sets them")
    try:
        fd = _open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    except OSError as e:
        raise AuditLogError(f"{path}: cannot open audit log: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        with open(fd, "rb", closefd=False) as fh:
            check = _scan(fh, secret, allow_torn_tail=True)
        if not check.ok:
            raise AuditLogError(f"{path}: will not extend a broken chain: line {check.bad_line}: {check.reason}")
        body = dict(record)
        if check.torn_bytes:
            os.ftruncate(fd, size - check.torn_bytes)
            body[TORN_FIELD] = check.torn_bytes
        body[SEQ_FIELD] = check.records + 1
        body[MAC_FIELD] = record_mac(secret, check.last_mac, body)
        line = _canonical_json(body).encode("ascii")
        if len(line) > MAX_RECORD_BYTES:
            raise AuditLogError(f"{path}: the record is {len(line)} bytes, more than a log record may hold "
                                f"({MAX_RECORD_BYTES})")
        if size and not check.torn_bytes and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # the last record lacked only its newline
        line += b"\n"
        if os.write(fd, line) != len(line):
            raise AuditLogError(f"{path}: the disk took only part of the record; the next append cuts it")
        os.fsync(fd)
        return body[MAC_FIELD]
    except OSError as e:
        raise AuditLogError(f"{path}: cannot append to audit log: {e.strerror or e}") from None
    finally:
        os.close(fd)
