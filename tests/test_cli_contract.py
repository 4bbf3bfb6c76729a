"""The CLI's exit-code contract: 0 pass, 1 a negative verdict only, 2 every error as one line, never a traceback."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from nnmark.cli import main
from ports import free_port

BAD_CALLS = {
    "unknown command": ["nonesuch"],
    "bad option value": ["train", "--arch", "lenet5", "--data", "digits", "--epochs", "0", "--out", "{tmp}/m"],
    "unknown option": ["verify", "{tmp}/k.key", "--frobnicate"],
    "missing key file": ["verify", "{tmp}/missing.key", "--model", "{model}", "--unsigned"],
    "model and endpoint": ["verify", "{tmp}/k.key", "--model", "{model}", "--endpoint", "http://127.0.0.1:9"],
    "neither model nor endpoint": ["identify", "{tmp}/k.key", "--unsigned"],
    "out folder missing": ["mark", "natural", "--model", "{model}", "--out", "{tmp}/no/such/dir/k.key", "--unsigned"],
    "out is a folder": ["attack", "noise", "--model", "{model}", "--out", "{tmp}"],
    "model file missing": ["mark", "natural", "--model", "{tmp}/missing.safetensors", "--out", "{tmp}/k", "--unsigned"],
    "model file not safetensors": ["attack", "noise", "--model", "{tmp}/junk.bin", "--out", "{tmp}/o.safetensors"],
    "backdoor target out of range": ["attack", "backdoor", "--model", "{model}", "--out", "{tmp}/o", "--target", "10",
                                     "--max-steps", "1"],
    "no secret to sign": ["mark", "natural", "--model", "{model}", "--out", "{tmp}/k.key"],
    "endpoint unreachable": ["verify", "{key}", "--endpoint", "http://127.0.0.1:9", "--unsigned"],
    "identify with a non-telltale key": ["identify", "{key}", "--model", "{model}", "--unsigned"],
    "innformant one environment": ["mark", "innformant", "--model", "{model}", "--envs", "float32", "--out", "{tmp}/k",
                                   "--unsigned"],
    "dbi without iterations": ["mark", "dbi", "--model", "{model}", "--n", "2", "--itr", "0", "--out", "{tmp}/k",
                               "--unsigned"],
    "random beyond a key's size": ["mark", "random", "--model", "{model}", "--n", "1000000000", "--out", "{tmp}/k",
                                   "--unsigned"],
    "pairs beyond a key's size": ["mark", "pairs", "--model", "{model}", "--n-pairs", "1000000000", "--user-id", "a",
                                  "--out", "{tmp}/k", "--secret-file", "{tmp}/junk.bin"],
}


@pytest.fixture(scope="module")
def natural_key(lenet_file, tmp_path_factory):
    key = tmp_path_factory.mktemp("keys") / "natural.key"
    r = CliRunner().invoke(main, ["mark", "natural", "--model", str(lenet_file), "--n", "5", "--out", str(key),
                                  "--unsigned"])
    assert r.exit_code == 0, r.output
    return key


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=lambda c: c.replace(" ", "-"))
def test_every_bad_call_exits_2_with_one_line_and_no_traceback(case, lenet_file, natural_key, tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    args = [a.format(tmp=tmp_path, model=lenet_file, key=natural_key) for a in BAD_CALLS[case]]
    r = CliRunner().invoke(main, args, env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None})
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (case, r.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), (case, r.stderr)
    assert "Traceback" not in r.output


def test_json_errors_are_json_on_stdout(lenet_file, tmp_path):
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "missing.key"), "--model", str(lenet_file), "--unsigned",
                                  "--json"])
    assert r.exit_code == 2
    error = json.loads(r.stdout)
    assert set(error) == {"error", "type"} and "missing.key" in error["error"]


def test_an_unexpected_failure_is_one_line_unless_debug(monkeypatch, natural_key, lenet_file):
    from nnmark.cli import check

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(check.keys, "load", broken)
    args = ["verify", str(natural_key), "--model", str(lenet_file), "--unsigned"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == ["error: unexpected RuntimeError: boom (run with "
                                                                  "--debug for the traceback)"]
    r = CliRunner().invoke(main, ["--debug", *args])
    assert isinstance(r.exception, RuntimeError)


def test_a_mark_that_fails_says_only_its_error_and_its_notes_only_on_success(monkeypatch, tmp_path):
    from nnmark.cli import mark
    from nnmark.errors import NnmarkError

    # a factory model names no dataset: "no preflight canaries" is a note of a key that is written
    args = ["mark", "random", "--model", "foreign_models:small_gn_net", "--input-shape", "3,32,32", "--n", 5,
            "--unsigned", "--out", tmp_path / "k.key"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0 and r.stderr.startswith("note: no preflight canaries"), r.output

    def fails(*args, **kwargs):
        raise NnmarkError("the new random key does not pass on the model it was made from")

    monkeypatch.setattr(mark, "self_check", fails)
    r = CliRunner().invoke(main, [str(a) for a in args[:-1]] + [str(tmp_path / "other.key")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "error: the new random key does not pass on the model it was made from"], r.stderr
    assert not (tmp_path / "other.key").exists()


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from nnmark.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); v = CliRunner().invoke(main, ['--version']); "
            "print(r.exit_code, v.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0", "False"]


def test_every_command_has_help_with_an_example():
    def paths(group: click.Group, prefix: list[str]):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield [*prefix, name]
            if isinstance(command, click.Group):
                yield from paths(command, [*prefix, name])

    for args in paths(main, []):
        r = CliRunner().invoke(main, [*args, "--help"])
        assert r.exit_code == 0 and "Example:" in r.output and r.output.startswith("Usage: nnmark "), args
        assert "None]" not in r.output, args  # an unbounded float option shows no range ("x<=None")


@pytest.mark.parametrize("group", ["mark", "attack", "bench", "keys"])
def test_group_listings_show_whole_descriptions(group):
    r = CliRunner().invoke(main, [group, "--help"])
    assert r.exit_code == 0 and "..." not in r.output.split("Commands:")[1], r.output


def test_serve_on_a_taken_port_is_one_line_before_the_model_loads(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", "--model", str(tmp_path / "missing.safetensors"), "--port", str(port)])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert f"cannot serve on 127.0.0.1:{port}" in r.stderr  # the address, not the missing model, is reported


def test_an_error_line_shows_control_characters_as_escapes(tmp_path):
    name = tmp_path / "evil\x1b[2Jname.key"
    r = CliRunner().invoke(main, ["verify", str(name), "--model", "x.safetensors"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "\x1b" not in r.stderr and "\\x1b[2J" in r.stderr


@pytest.mark.parametrize("setting, terminal, quiet, shown", [
    (None, True, False, True), (None, False, False, False), ("0", True, False, False), ("1", False, False, True),
    ("1", True, True, False), ("yes", False, False, False),
])
def test_progress_shows_on_a_terminal_or_when_asked_and_never_when_quiet(monkeypatch, setting, terminal, quiet, shown):
    from nnmark.cli._shared import progress_enabled

    if setting is None:
        monkeypatch.delenv("NNMARK_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("NNMARK_PROGRESS", setting)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    assert progress_enabled(quiet) is shown


def test_quiet_reaches_every_progress_command_as_a_value(monkeypatch):
    import nnmark.cli as cli
    from nnmark.cli._shared import with_progress

    monkeypatch.setattr(cli, "progress_enabled", lambda quiet: not quiet)  # as on a terminal

    @click.command("probe-progress")
    @with_progress
    def probe(progress):
        click.echo(f"progress={progress}")

    monkeypatch.setattr(main, "get_command", lambda ctx, name: probe)
    assert CliRunner().invoke(main, ["probe-progress"]).output == "progress=True\n"
    assert CliRunner().invoke(main, ["-q", "probe-progress"]).output == "progress=False\n"
    assert CliRunner().invoke(probe, []).output == "progress=False\n"  # on its own, not on a terminal


@pytest.mark.parametrize("sig, line", [(signal.SIGTERM, "error: terminated"), (signal.SIGINT, "error: interrupted")])
def test_a_stopped_command_is_an_error_line_and_writes_nothing(sig, line, tmp_path):
    """SIGTERM (a service manager's stop, a ``timeout``) stops a command as Ctrl-C does: the cleanup runs, exit 2 with
    one line, no half-written file."""
    out = tmp_path / "net.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "nnmark", "train", "--arch", "lenet5", "--data", "mnist5k",
                             "--epochs", "500", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "NNMARK_PROGRESS": "1"})
    try:
        deadline, seen = time.monotonic() + 120, b""
        while b"step" not in seen and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 0.5)[0]:
                seen += os.read(proc.stderr.fileno(), 4096)
        assert b"step" in seen, "training never started"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    lines = (seen + err).decode().replace("\r", "\n").strip().splitlines()
    assert proc.returncode == 2 and lines[-1] == line and "Traceback" not in err.decode()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_stopped_by_a_signal_ends_normally(sig, lenet_file):
    """For ``nnmark serve`` a stop signal is the normal end: it answers what is in flight, says so, and exits 0."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nnmark", "serve", "--model", str(lenet_file), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, ready = time.monotonic() + 120, False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready, "the server never got ready"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and err.decode().strip().splitlines()[-1] == "stopped", err.decode()
