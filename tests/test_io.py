"""nnmark._io: atomic writes, and the removal of temp files that killed writes leave behind."""

import os
import stat
import subprocess
import sys
import time

import torch

from nnmark import keys
from nnmark._io import STALE_TEMP_AGE_S, atomic_write_bytes, remove_stale_temps


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_write_leaves_only_the_file(tmp_path):
    atomic_write_bytes(tmp_path / "k.key", b"one")
    atomic_write_bytes(tmp_path / "k.key", b"two")
    assert os.listdir(tmp_path) == ["k.key"] and (tmp_path / "k.key").read_bytes() == b"two"


def test_the_next_write_removes_temps_of_killed_writes(tmp_path):
    dead = tmp_path / f".k.key.{_dead_pid()}.abc123_x.tmp"
    old = tmp_path / ".k.key.abc123.tmp"  # no process id (an older naming): stale by age only
    live = tmp_path / f".k.key.{os.getpid()}.zzz.tmp"  # a write in progress in a running process
    young = tmp_path / ".k.key.young.tmp"
    other = tmp_path / f".other.key.{_dead_pid()}.abc.tmp"  # another path's temp file: not ours to touch
    for f in (dead, old, live, young, other):
        f.write_bytes(b"partial")
    hour_ago = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(old, (hour_ago, hour_ago))
    atomic_write_bytes(tmp_path / "k.key", b"data")
    assert sorted(os.listdir(tmp_path)) == sorted(["k.key", live.name, young.name, other.name])
    os.utime(live, (hour_ago, hour_ago))
    assert remove_stale_temps(tmp_path / "k.key") == [live]


def test_a_killed_write_is_cleaned_up_by_the_next_one(tmp_path):
    target = tmp_path / "big.key"
    code = ("import os, sys; from nnmark._io import atomic_write_bytes; "
            "os.fsync = lambda fd: os.kill(os.getpid(), 9); atomic_write_bytes(sys.argv[1], b'x' * 1000)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=120).returncode == -9
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(leftovers) == 1 and not target.exists()
    atomic_write_bytes(target, b"whole")
    assert os.listdir(tmp_path) == ["big.key"]


def test_files_get_the_mode_open_would_give_and_keys_stay_private(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "report.md", b"x")
        atomic_write_bytes(tmp_path / "model.safetensors", b"x")
        keys.save(keys.KeyFile("natural", {}, torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.int64)),
                  tmp_path / "k.key", secret=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
