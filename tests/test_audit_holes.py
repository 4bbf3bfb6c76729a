"""What a hostile-input review found in audit, keys and log: every key pointed at is checked or an error, errors
are one line on stderr, FIFOs are refused without blocking, --alpha is finite, a key that fails its signature
fails `keys show`, and outside names are escaped in every text output."""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch

from nnmark import data, keyinfo, keys, models
from nnmark.audit import log, report
from nnmark.audit import run as audit
from nnmark.errors import ArgumentError, printable
from nnmark.marks.integrity import dbi
from nnmark.oracles import TorchOracle
from nnmark.serve import create_app, serving

SECRET = b"holes secret"
WAIT_S = 30
"""How long a FIFO may keep a reader waiting before the test releases it (and fails)."""
EVIL = "e\x1b[31m<img src=x onerror=alert(1)>|*x*\n.key"
"""A key file name with an ANSI escape, HTML, Markdown specials and a newline."""


def _cli(*args):
    from click.testing import CliRunner

    from nnmark.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An untrained digits LeNet-5, a folder holding one signed DBI key made from it, and the secret file."""
    ds = data.load("digits")
    torch.manual_seed(0)
    model = models.build("lenet5", ds.shape, ds.num_classes)
    root = tmp_path_factory.mktemp("holes")
    folder = root / "keys"
    folder.mkdir()
    key = dbi.create(TorchOracle(model, ds.shape), ds.test.x[:8], itr=20, eps=1e-3, model_digest=models.digest(model))
    keys.save(key, folder / "dbi.key", secret=SECRET)
    (root / "secret").write_bytes(SECRET)
    return {"keys": folder, "secret": root / "secret", "net": model, "shape": ds.shape}


_RELEASE = """import os, sys, time
time.sleep(float(sys.argv[2]))
for _ in range(1200):  # until killed (or 10 minutes): each reader blocked on the FIFO gets end-of-file
    try:
        os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waits
    time.sleep(0.5)
"""


@contextmanager
def fifo(path):
    """A FIFO at ``path`` that no one writes to; after WAIT_S, readers blocked on it are released (by another process:
    a reader blocked in native code may hold the GIL), so a regression fails the test instead of hanging it.
    Yields a function giving the seconds elapsed."""
    os.mkfifo(path)
    watchdog = subprocess.Popen([sys.executable, "-c", _RELEASE, str(path), str(WAIT_S)])
    start = time.monotonic()
    try:
        yield lambda: time.monotonic() - start
    finally:
        watchdog.kill()
        watchdog.wait()


@contextmanager
def served(small):
    """`nnmark serve` of the small model, in-process on a free port: the audit CLI's target."""
    with serving(create_app(TorchOracle(small["net"], small["shape"]), model_name="model")) as url:
        yield url


def _copy_keys(small, folder):
    folder.mkdir()
    for path in small["keys"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_fifo_or_junk_named_like_a_key_is_an_error_in_keys_ls_and_audit_without_blocking(small, tmp_path):
    folder = _copy_keys(small, tmp_path / "keys")
    (folder / "junk.safetensors").write_bytes(os.urandom(300))
    (folder / "old.key").mkdir()
    (folder / "notes.txt").write_text("not a key, not named like one: skipped")
    (folder / "copy.bin").write_bytes((folder / "dbi.key").read_bytes())  # a key by its contents, not its name
    with fifo(folder / "pipe.key") as elapsed, served(small) as url:
        listed = _cli("keys", "ls", folder, "--secret-file", small["secret"], "--json")
        audited = _cli("audit", "--keys", folder, "--endpoint", url, "--secret-file", small["secret"])
        assert elapsed() < WAIT_S
    rows = {os.path.basename(row["file"]): row for row in json.loads(listed.stdout)}
    assert listed.exit_code == 2
    assert sorted(rows) == ["copy.bin", "dbi.key", "junk.safetensors", "old.key", "pipe.key"]
    assert rows["dbi.key"]["signature"] == rows["copy.bin"]["signature"] == "valid" and "error" not in rows["dbi.key"]
    assert rows["pipe.key"]["error"] == rows["old.key"]["error"] == "not a regular file"
    assert "error" in rows["junk.safetensors"]
    assert listed.stderr.startswith("error: 3 of 5 key files cannot be used") and listed.stderr.count("\n") == 1

    assert audited.exit_code == 2 and audited.stderr.count("\n") == 1 and "3 of 5 keys failed" in audited.stderr
    assert audited.stdout.count("dbi (integrity): INTACT") == 2 and audited.stdout.count("(unknown): ERROR") == 3
    assert "not a regular file" in audited.stdout


def test_keys_show_and_log_verify_refuse_a_fifo_at_once(small, tmp_path):
    path = tmp_path / "pipe.key"
    with fifo(path) as elapsed:
        shown = _cli("keys", "show", path)
        checked = _cli("log", "verify", path, "--secret-file", small["secret"])
        with pytest.raises(log.AuditLogError, match="not a regular file"):
            log.append(path, {"run": 1}, SECRET)
        assert elapsed() < WAIT_S
    for r in (shown, checked):
        assert r.exit_code == 2 and "not a regular file" in r.stderr and r.stderr.count("\n") == 1


def test_keys_show_exits_2_for_a_key_that_fails_its_signature_and_0_when_it_is_not_checked(small, tmp_path):
    key = small["keys"] / "dbi.key"
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"another secret")
    unchecked = _cli("keys", "show", key)
    assert unchecked.exit_code == 0 and "signature: not checked" in unchecked.stdout and unchecked.stderr == ""
    valid = _cli("keys", "show", key, "--secret-file", small["secret"])
    assert valid.exit_code == 0 and "signature: valid" in valid.stdout
    invalid = _cli("keys", "show", key, "--secret-file", wrong)
    assert invalid.exit_code == 2 and "signature: invalid" in invalid.stdout
    assert invalid.stderr.startswith(f"error: {key}: signature invalid") and invalid.stderr.count("\n") == 1
    as_json = _cli("keys", "show", key, "--secret-file", wrong, "--json")
    assert as_json.exit_code == 2 and json.loads(as_json.stdout)["signature"].startswith("invalid")


@pytest.mark.parametrize("signature, problem", [("valid", False), ("not checked", False), ("unsigned", False),
                                                ("invalid: altered", True), ("malformed: truncated", True)])
def test_a_key_is_unusable_when_its_signature_is_invalid_or_malformed_not_when_unchecked(signature, problem):
    assert bool(keyinfo.problem({"file": "k.key", "signature": signature})) is problem
    assert keyinfo.problem({"file": "k.key", "error": "not a regular file"}) == "not a regular file"


def test_an_endpoint_asked_nothing_exits_2_saying_nothing_was_checked(small, tmp_path):
    other = dbi.create(TorchOracle(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), (1, 28, 28)),
                       torch.rand(4, 1, 28, 28), itr=1)
    keys.save(other, tmp_path / "mnist.key", secret=SECRET)
    with served(small) as url:
        r = _cli("audit", tmp_path / "mnist.key", "--endpoint", url, "--secret-file", small["secret"])
    assert r.exit_code == 2 and r.stdout.startswith(f"{url}: NOTHING WAS CHECKED") and r.stderr.count("\n") == 1
    assert "cannot be asked" in r.stderr and r.stderr.rstrip().endswith("nothing was checked")


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "0", "1", "1.5"])
def test_alpha_must_be_finite_and_inside_0_1(small, alpha):
    r = _cli("audit", small["keys"] / "dbi.key", "--endpoint", "http://127.0.0.1:9", "--alpha", alpha)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--alpha" in r.stderr and alpha in r.stderr
    with pytest.raises(ArgumentError, match="alpha"):
        audit.Settings(alpha=float(alpha))
    with pytest.raises(ArgumentError, match="batch_size"):
        audit.Settings(batch_size=0)


def test_an_endpoint_that_fails_is_one_error_line_on_stderr_and_json_on_stdout(small):
    with served(small) as url:
        text = _cli("audit", small["keys"] / "dbi.key", "--endpoint", url, "--model-name", "other",
                    "--secret-file", small["secret"])
        as_json = _cli("audit", small["keys"] / "dbi.key", "--endpoint", url, "--model-name", "other",
                       "--secret-file", small["secret"], "--json")
    for r in (text, as_json):
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {url}: ") and r.stderr.count("\n") == 1
    parsed = json.loads(as_json.stdout)
    assert parsed["type"] == "AuditError" and parsed["error"] == as_json.stderr.removeprefix("error: ").strip()
    assert parsed["targets"][0]["error"] and parsed["targets"][0]["status"] == 2


def test_key_file_names_are_escaped_in_keys_ls_the_text_and_markdown_and_html_reports(small, tmp_path):
    folder = _copy_keys(small, tmp_path / "keys")
    (folder / "dbi.key").rename(folder / EVIL)
    (folder / f"bad{EVIL}").write_text("junk")
    listed = _cli("keys", "ls", folder, "--secret-file", small["secret"])
    assert listed.exit_code == 2 and listed.stdout.count("\n") == 2
    assert "\x1b" not in listed.output and "\\x1b[31m" in listed.stdout and "\\n.key" in listed.stdout

    md, page = tmp_path / "r.md", tmp_path / "r.html"
    with served(small) as url:
        runs = [_cli("audit", "--keys", folder, "--endpoint", url, "--secret-file", small["secret"], "--report", path)
                for path in (md, page)]
    assert [r.exit_code for r in runs] == [2, 2] and all("\x1b" not in r.output for r in runs)
    assert runs[0].stdout.count("\n") == 3 and runs[0].stderr.count("\n") == 1  # summary, two keys; one error
    markdown = md.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| key file |")]
    assert "\x1b" not in markdown and len(rows) == 2 and all(row.endswith(" |") for row in rows)
    assert all("e\\\\x1b\\[31m\\<img src=x onerror=alert(1)\\>\\|\\*x\\*\\\\n.key" in row for row in rows)
    html = page.read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_markdown_text_escapes_what_markdown_and_html_would_render():
    assert report.markdown_text("a|b *c* _d_ [e](f) <g> &h; `i` #j ~k~ \\l") == \
        "a\\|b \\*c\\* \\_d\\_ \\[e\\](f) \\<g\\> \\&h; \\`i\\` \\#j \\~k\\~ \\\\l"
    assert printable("x\x1b[2J\ny\u202ez\tw") == "x\\x1b[2J\\ny\\u202ez\\tw"
    assert printable("plain · text é") == "plain · text é"
