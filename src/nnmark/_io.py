"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write goes to a temp sibling ``.NAME.<pid>.<random>.tmp`` that is renamed over ``NAME``. A write that is
killed leaves its temp file behind; the next write to the same path removes such leftovers (see
:func:`remove_stale_temps`). The file gets the mode ``open()`` would give it (0666 less the umask), or 0600 when
it is private (key files: their queries are what an adversary would tune a model against).
"""

import glob
import os
import re
import stat
import tempfile
import time
from pathlib import Path

STALE_TEMP_AGE_S = 3600.0
"""A temp sibling untouched for this long is left by a killed write, whatever its process id says."""
PRIVATE_MODE = 0o600
SHARED_MODE = 0o666
"""The mode of a file that is not private, before the umask is taken off (as ``open()`` creates files)."""


def open_regular(path: str | os.PathLike, flags: int, mode: int = PRIVATE_MODE) -> int | None:
    """``os.open(path, flags, mode)`` that never blocks on a FIFO or device (``O_NONBLOCK``); None, the descriptor
    closed again, when ``path`` is not a regular file. OSError as ``os.open`` raises it."""
    fd = os.open(path, flags | os.O_NONBLOCK, mode)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``; mode 0600 when
    ``private``, else 0666 less the umask.

    Stale temp files of earlier, killed writes to ``path`` are removed first.
    """
    path = Path(path)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_MODE if private else SHARED_MODE & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | os.PathLike, *, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temp siblings ``.NAME.*.tmp`` of ``path`` that killed writes left behind; return them.

    A temp file is stale when the process whose id it carries no longer runs (on POSIX), or when it has
    not been modified for ``max_age_s`` seconds. Files that vanish or cannot be removed are skipped.
    """
    path = Path(path)
    own = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.\w+\.tmp")
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = own.fullmatch(tmp.name)
        try:
            if (match and not _running(int(match.group(1)))) or time.time() - tmp.lstat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    return removed


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (always True where that cannot be asked safely)."""
    if os.name != "posix" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _umask() -> int:
    """This process's umask: from /proc (Linux), else set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
