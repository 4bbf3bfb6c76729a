"""The zip archives torch reads (TorchScript ``.pt``, torch.export ``.pt2``), checked before torch opens them.

torch reads a zip with miniz (C++); nnmark checks it with Python's ``zipfile``. Wherever the two could see
different bytes the archive is refused, so what nnmark checked is what torch loads (``check``):

- names: printable ASCII, every entry under the one top folder that torch takes from the first entry, no empty,
  ``.`` or ``..`` part, no backslash, and no two names equal ignoring case (miniz's lookup ignores case and may
  take either of two equal names, where ``zipfile`` takes the last);
- layout: the first entry at byte 0, entries in order with nothing between them but a data descriptor (none
  overlaps another), the central directory right after them and the end record last (no comment), declaring the
  entries ``zipfile`` found; no torch mobile (flatbuffer) magic, which would make torch read the file another way;
- sizes: stored or deflated entries only, none encrypted, a stored entry's two sizes equal, all entries together
  at most MAX_EXPANSION times the file (a zip bomb is refused from its central directory, before anything is
  inflated), and every entry's bytes match its declared size and CRC-32 (inflation stops one byte past the size).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass

from nnmark.errors import ModelError

MAX_EXPANSION = 10
"""Largest total uncompressed size of an archive's entries, as a multiple of the archive's size (torch stores its
tensors uncompressed and deflates only code, so a real model archive is close to 1)."""
_NAME = re.compile(r"[ -\[\]-~]+")  # printable ASCII without a backslash
_DESCRIPTOR_MAX = 24  # a data descriptor: signature, CRC-32 and two ZIP64 sizes
_ENCRYPTED, _DESCRIPTOR = 0x1, 0x8
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_FLATBUFFER_MAGIC = slice(4, 8)  # where torch.jit.load looks for b"PTMF" (a mobile flatbuffer model)
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, NotImplementedError, struct.error)


@dataclass(frozen=True)
class Archive:
    """A checked archive: its top folder and its entries' names below it (as torch's reader names them)."""

    root: str
    names: tuple[str, ...]


def check(path: str, data: bytes, kind: str) -> Archive:
    """The checked archive in ``data`` (``path`` names it in messages, ``kind`` says what it should be);
    ModelError, in one line, for anything torch and ``zipfile`` could read differently (see the module)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS:
        looks = "a pickle" if data[:1] == b"\x80" else "not a zip archive"
        raise ModelError(f"{path} is {looks}, not a {kind} archive; nnmark never unpickles model files") from None
    infos = archive.infolist()
    try:
        if data[_FLATBUFFER_MAGIC] == b"PTMF":
            raise _Refused("it carries torch's flatbuffer magic, so torch would not read it as a zip")
        root = _check_names(infos)
        _check_end(data, archive.start_dir, len(infos))
        spans = _check_layout(data, infos, archive.start_dir)
        _check_sizes(data, infos, spans)
    except _Refused as e:
        raise ModelError(f"{path} is refused as a {kind} archive: {e}") from None
    return Archive(root, tuple(i.filename[len(root) + 1:] for i in infos))


class _Refused(Exception):
    """Why an archive is refused (check adds the file's name)."""


def _check_names(infos: list[zipfile.ZipInfo]) -> str:
    """The top folder of every entry; _Refused for a name outside it, a bad name, or two names equal but for case."""
    if not infos:
        raise _Refused("it has no entries")
    root = infos[0].filename.split("/")[0]
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if not _NAME.fullmatch(name) or len(parts) < 2 or parts[0] != root or {"", ".", ".."} & set(parts):
            raise _Refused(f"entry {name!r} is not a plain path inside the top folder {root + '/'!r}")
    twice = [n for n, k in Counter(i.filename.lower() for i in infos).items() if k > 1]
    if twice:
        raise _Refused(f"it holds two entries named {twice[0]!r} (ignoring case)")
    return root


def _check_end(data: bytes, start: int, entries: int) -> None:
    """_Refused unless the end record is last (no comment) and it, and its ZIP64 record if any, declare the
    ``entries`` entries and the central directory at ``start`` where ``zipfile`` found them (so no bytes before
    the archive shift one reader's offsets and not the other's)."""
    if len(data) < _END.size or data[-_END.size:-_END.size + 4] != b"PK\x05\x06" or data[-2:] != b"\0\0":
        raise _Refused("it does not end with its end-of-directory record (a comment or trailing bytes)")
    _, _, _, this_disk, total, _, offset, _ = _END.unpack(data[-_END.size:])
    declared, found = ((this_disk, 0xFFFF), (total, 0xFFFF), (offset, 0xFFFFFFFF)), (entries, entries, start)
    at = len(data) - _END.size - _END64_LOCATOR.size
    zip64 = at >= 0 and data[at:at + 4] == b"PK\x06\x07"
    if zip64:
        try:
            record = _END64.unpack_from(data, _END64_LOCATOR.unpack_from(data, at)[2])
        except struct.error:
            record = (b"",) + (0,) * 9
        if record[0] != b"PK\x06\x06" or (record[6], record[7], record[9]) != found:
            raise _Refused("its ZIP64 end record does not declare the entries where they are")
    if any(value != want and not (zip64 and value == most) for (value, most), want in zip(declared, found)):
        raise _Refused(f"its end record declares {total} entries at byte {offset}; "
                       f"the directory holds {entries} at byte {start}")


def _check_layout(data: bytes, infos: list[zipfile.ZipInfo], start: int) -> dict[str, tuple[int, int]]:
    """Each entry's data as (begin, end) in ``data``; _Refused unless the entries follow one another from byte 0 to
    the central directory at ``start``, each local header naming its entry, with at most a data descriptor between."""
    headers = sorted({i.header_offset for i in infos} | {start})
    spans, at = {}, 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != at or data[at:at + 4] != b"PK\x03\x04" or at + zipfile.sizeFileHeader > start:
            raise _Refused(f"entry {info.filename!r} is not where the previous entry ends (byte {at})")
        header = struct.unpack(zipfile.structFileHeader, data[at:at + zipfile.sizeFileHeader])
        n, m = header[zipfile._FH_FILENAME_LENGTH], header[zipfile._FH_EXTRA_FIELD_LENGTH]
        begin = at + zipfile.sizeFileHeader + n + m
        if data[at + zipfile.sizeFileHeader:at + zipfile.sizeFileHeader + n] != info.filename.encode():
            raise _Refused(f"the local header of entry {info.filename!r} names another file")
        spans[info.filename] = begin, begin + info.compress_size
        at = begin + info.compress_size
        following = next((h for h in headers if h >= at), at)
        if info.flag_bits & _DESCRIPTOR and following - at <= _DESCRIPTOR_MAX:
            at = following
    if at != start:
        raise _Refused(f"bytes {at} to {start} before its central directory belong to no entry")
    return spans


def _check_sizes(data: bytes, infos: list[zipfile.ZipInfo], spans: dict[str, tuple[int, int]]) -> None:
    """_Refused for an unsupported or encrypted entry, sizes that lie, or a total above MAX_EXPANSION x the file;
    the totals are checked from the directory before any entry is inflated."""
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & _ENCRYPTED:
            raise _Refused(f"entry {info.filename!r} is encrypted or compressed other than by deflate")
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise _Refused(f"stored entry {info.filename!r} declares {info.file_size} bytes in "
                           f"{info.compress_size}")
    total = sum(i.file_size for i in infos)
    if total > MAX_EXPANSION * len(data):
        raise _Refused(f"its entries declare {total:,} bytes, more than {MAX_EXPANSION} times its "
                       f"{len(data):,} (a zip bomb?)")
    for info in infos:
        begin, end = spans[info.filename]
        body = memoryview(data)[begin:end]
        if info.compress_type == zipfile.ZIP_DEFLATED:
            inflate = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                body = inflate.decompress(body, info.file_size + 1)
            except zlib.error:
                raise _Refused(f"entry {info.filename!r} is not valid deflate data") from None
        if len(body) != info.file_size or zlib.crc32(body) != info.CRC:
            raise _Refused(f"entry {info.filename!r} does not hold the {info.file_size} bytes and CRC-32 it declares")
