"""The inventory: a heterogeneous fleet as TOML, refused whole with one line naming file, target and field when any
part is wrong, and audited once by `nnmark audit --inventory` with each target's own shape and keys."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnmark import keys
from nnmark.attacks import quantize_int8
from nnmark.audit import inventory
from nnmark.cli import main
from nnmark.marks import canary
from nnmark.marks.integrity import dbi
from nnmark.oracles import EndpointSpec, TorchOracle
from nnmark.serve import create_app, serving
from nnmark.suspect import ModelSource

SHAPE = (1, 28, 28)
SECRET = b"inventory secret"
TOKEN = b"a-fleet-token"


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None, "NNMARK_TOKEN": None})


@pytest.fixture
def folder(tmp_path):
    """A folder with keys/a.key, keys/b.key, an empty folder, a model file and a token file (none need be real for
    loading an inventory: the keys load when the audit runs)."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "empty").mkdir()
    for name in ("a.key", "b.key"):
        (tmp_path / "keys" / name).write_bytes(b"k")
    (tmp_path / "keys" / "notes.txt").write_text("not a key")
    (tmp_path / "net.safetensors").write_bytes(b"m")
    (tmp_path / "token").write_bytes(TOKEN)
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "fleet.toml"
    path.write_text(text)
    return path


GOOD = """
[defaults]
keys = ["keys/"]
interval = "5m"
timeout = 2.5
env = "float64"

[[target]]
name = "replica-1"
endpoint = "http://127.0.0.1:8000"
model_name = "lenet"
layout = "NHWC"
token_file = "token"

[[target]]
name = "replica-2"
endpoint = "grpc://127.0.0.1:8001"
keys = "keys/a.key"
interval = 90
retries = 0
consistency_check = false
budget = 500

[[target]]
name = "edge"
model = "net.safetensors"
keys = ["keys/b.key", "keys/a.key", "keys/"]
interval = "1h30m"
"""


def test_targets_inherit_the_defaults_their_kind_takes_and_override_them(folder):
    inv = inventory.load(_write(folder, GOOD))
    assert inv.path == folder / "fleet.toml" and [t.name for t in inv.targets] == ["replica-1", "replica-2", "edge"]
    one, two, edge = inv.targets
    both = (folder / "keys" / "a.key", folder / "keys" / "b.key")
    assert one.keys == both and two.keys == both[:1] and edge.keys == both  # folders expanded, sorted, once each
    assert [t.interval for t in inv.targets] == [300.0, 90.0, 5400.0]
    assert one.suspect == EndpointSpec("http://127.0.0.1:8000", model_name="lenet", layout="NHWC", timeout=2.5)
    assert one.token_file == folder / "token" and one.budget is None and one.is_endpoint
    assert two.suspect == EndpointSpec("grpc://127.0.0.1:8001", timeout=2.5, retries=0, consistency_check=False)
    assert two.budget == 500 and two.token_file is None
    assert edge.suspect == ModelSource(str(folder / "net.safetensors")) and edge.env == "float64"
    assert not edge.is_endpoint and inv.key_files() == list(both)


def test_a_target_is_built_as_the_command_line_builds_it_and_reads_its_token_each_time(folder):
    one, _, edge = inventory.load(_write(folder, GOOD)).targets
    target = one.audit_target()
    assert target.name == "replica-1" and target.info == {"endpoint": "http://127.0.0.1:8000", "model_name": "lenet"}
    local = edge.audit_target()
    assert local.name == "edge" and local.info == {"model": str(folder / "net.safetensors"), "env": "float64",
                                                   "device": "cpu"}
    (folder / "token").write_bytes(b"bad\ntoken")  # rotated into something no header can carry
    with pytest.raises(Exception, match="HTTP header cannot carry") as e:
        one.audit_target()
    assert "bad" not in str(e.value)
    assert one.audit_target(token=TOKEN).name == "replica-1"  # a token given wins


def test_the_readme_inventory_loads(folder):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (text,) = re.findall(r"```toml\n(.*?)```", readme, re.S)
    (folder / "keys" / "dbi.key").write_bytes(b"k")
    one, two = inventory.load(_write(folder, re.sub(r"(?m)^  ", "", text))).targets
    assert (one.name, one.interval, one.token_file, len(one.keys)) == ("replica-1", 300.0, folder / "token", 3)
    assert two.suspect == EndpointSpec("grpc://triton:8001", model_name="resnet", layout="NHWC", output_kind="logits")
    assert two.keys == (folder / "keys" / "dbi.key",)


def test_a_factory_spec_is_kept_and_a_relative_model_is_read_beside_the_inventory(folder):
    path = _write(folder, '[[target]]\nname = "f"\nmodel = "nnmark.bench.heldout:groupnorm_gelu"\n'
                          'input_shape = "1,28,28"\nkeys = "keys/a.key"\n')
    (target,) = inventory.load(path).targets
    assert target.suspect == ModelSource("nnmark.bench.heldout:groupnorm_gelu", input_shape=(1, 28, 28))
    assert target.interval == inventory.DEFAULT_INTERVAL


@pytest.mark.parametrize("text, value", [
    ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1d", 86400.0), (" 2m ", 120.0), (2, 2.0),
    (0.5, 0.5), ("1.5h", 5400.0), (inventory.MAX_INTERVAL, inventory.MAX_INTERVAL),
])
def test_durations(text, value):
    assert inventory.parse_duration(text) == value


@pytest.mark.parametrize("text", ["5", "5 minutes", "m", "-5s", "0s", 0, -1, True, float("inf"), float("nan"),
                                  inventory.MAX_INTERVAL * 1.001, "31d", "", [5], None])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        inventory.parse_duration(text)


TARGET = '[[target]]\nname = "a"\nendpoint = "http://127.0.0.1:8000"\nkeys = "keys/a.key"\n'
MODEL = '[[target]]\nname = "m"\nmodel = "net.safetensors"\nkeys = "keys/a.key"\n'
BAD = {
    "unknown field": (TARGET + 'layuot = "NHWC"\n', "'a'", "layuot", "unknown field"),
    "string for a number": (TARGET + 'timeout = "5"\n', "'a'", "timeout", "must be int or float"),
    "boolean for an integer": (TARGET + "batch_size = true\n", "'a'", "batch_size", "must be int"),
    "number for a flag": (TARGET + "consistency_check = 0\n", "'a'", "consistency_check", "must be bool"),
    "not a choice": (TARGET + 'layout = "NWHC"\n', "'a'", "layout", "NWHC"),
    "out of range": (TARGET + "retries = -1\n", "'a'", "retries", "-1"),
    "negative budget": (TARGET + "budget = -5\n", "'a'", "budget", "-5"),
    "infinite timeout": (TARGET + "timeout = inf\n", "'a'", "timeout", "not a finite number"),
    "no keys": ('[[target]]\nname = "a"\nendpoint = "http://h:1"\n', "'a'", "keys", "required"),
    "empty keys": (TARGET.replace('"keys/a.key"', "[]"), "'a'", "keys", "required"),
    "keys not strings": (TARGET.replace('"keys/a.key"', "[1]"), "'a'", "keys", "required"),
    "missing key file": (TARGET.replace("keys/a.key", "keys/c.key"), "'a'", "keys", "no such key file or folder"),
    "empty key folder": (TARGET.replace("keys/a.key", "empty"), "'a'", "keys", "no key files in folder"),
    "both": (TARGET + 'model = "net.safetensors"\n', "'a'", "endpoint, model", "exactly one"),
    "neither": ('[[target]]\nname = "a"\nkeys = "keys/a.key"\n', "'a'", "endpoint, model", "exactly one"),
    "duplicate names": (TARGET + TARGET, "'a'", "name", "another target has this name"),
    "bad duration": (TARGET + 'interval = "5 minutes"\n', "'a'", "interval", "5 minutes"),
    "zero interval": (TARGET + "interval = 0\n", "'a'", "interval", "more than 0 s"),
    "no name": ('[[target]]\nendpoint = "http://h:1"\nkeys = "keys/a.key"\n', "#1", "name", "required"),
    "bad name": (TARGET.replace('"a"', '"a b"'), "'a b'", "name", "letters, digits"),
    "second target's fault": (TARGET + MODEL + "budget = 1.5\n", "'m'", "budget", "must be int"),
    "model field on an endpoint": (TARGET + 'env = "float64"\n', "'a'", "env", "only for a target with model"),
    "endpoint field on a model": (MODEL + 'layout = "NHWC"\n', "'m'", "layout", "only for a target with endpoint"),
    "unknown environment": (MODEL + 'env = "float65"\n', "'m'", "env", "float65"),
    "bad url": (TARGET.replace("http://127.0.0.1:8000", "ftp://h"), "'a'", "endpoint", "http(s)://host"),
    "a route as url": (TARGET.replace("8000", "8000/v2/models/m"), "'a'", "endpoint", "is a route"),
    "grpc over rest": (TARGET + 'transport = "grpc"\n', "'a'", "endpoint", "does not fit the URL"),
    "missing token file": (TARGET + 'token_file = "nope"\n', "'a'", "token_file", "cannot read token file"),
    "missing model": (MODEL.replace("net.safetensors", "gone.safetensors"), "'m'", "model", "no such model file"),
    "bad normalize": (MODEL + 'normalize = "0.5"\n', "'m'", "normalize", "normalize"),
    "bad input shape": (MODEL + 'input_shape = "1,28"\n', "'m'", "input_shape", "C,H,W"),
    "unknown default": ('[defaults]\nlayuot = "NHWC"\n' + TARGET, "[defaults]", "layuot", "unknown field"),
    "name as a default": ('[defaults]\nname = "x"\n' + TARGET, "[defaults]", "name", "each target names its own"),
    "endpoint as a default": ('[defaults]\nendpoint = "http://h:1"\n' + TARGET, "[defaults]", "endpoint",
                              "each target names its own"),
    "a default of the wrong type": ('[defaults]\ntimeout = "x"\n' + TARGET, "'a'", "timeout", "must be int"),
    "unknown top level": ('[defaultz]\ntimeout = 1\n' + TARGET, "", "defaultz", "unknown top-level field"),
    "no targets": ('[defaults]\ntimeout = 1\n', "", "no targets", "[[target]]"),
    "targets not tables": ('target = [1, 2]\n', "", "no targets", "[[target]]"),
    "defaults not a table": ('defaults = 1\n' + TARGET, "", "defaults", "must be a table"),
    "not toml": ("[[target]\nname = 'a'\n", "", "not a TOML file", "line 1"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_inventory_is_refused_in_one_line_naming_file_target_and_field(folder, case):
    text, target, field, why = BAD[case]
    path = _write(folder, text)
    with pytest.raises(inventory.InventoryError) as e:
        inventory.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for part in (target and (f"[defaults]: {field}: " if target == "[defaults]" else f"target {target}: {field}: "),
                 field, why):
        assert part in message, message
    r = _cli("audit", "--inventory", path, "--json")
    assert r.exit_code == 2 and r.stderr == f"error: {message}\n", r.output
    assert json.loads(r.stdout) == {"error": message, "type": "InventoryError"}


def test_an_inventory_that_is_no_regular_file_or_too_large_is_refused(folder):
    with pytest.raises(inventory.InventoryError, match="not a regular file"):
        inventory.load(folder / "keys")
    with pytest.raises(inventory.InventoryError, match="cannot read the inventory: No such file"):
        inventory.load(folder / "missing.toml")
    big = _write(folder, TARGET + "#" * inventory.MAX_BYTES)
    with pytest.raises(inventory.InventoryError, match="larger than"):
        inventory.load(big)
    exact = _write(folder, TARGET + "#" * (inventory.MAX_BYTES - len(TARGET)))
    assert inventory.load(exact).targets[0].name == "a"


@pytest.mark.parametrize("extra, named", [
    (["--endpoint", "http://127.0.0.1:1"], "--endpoint"), (["--model", "net.safetensors"], "--model"),
    (["keys/a.key"], "KEY_PATHS"), (["--keys", "keys"], "--keys"), (["--layout", "NHWC"], "--layout"),
    (["--timeout", "3"], "--timeout"), (["--token-file", "token"], "--token-file"),
    (["--env", "float32"], "--env"), (["--no-consistency-check"], "--no-consistency-check"),
])
def test_inventory_goes_with_no_option_that_names_keys_or_a_target(folder, extra, named, monkeypatch):
    monkeypatch.chdir(folder)
    path = _write(folder, TARGET)
    r = _cli("audit", "--inventory", path, *extra)
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, r.output
    assert r.stderr.startswith("error: --inventory names every target and its keys: it cannot go with ")
    assert named in r.stderr
    allowed = _cli("audit", "--inventory", path, "--alpha", "0.01", "--seed", "3", "--batch-size", "8",
                   "--workers", "1", "--no-sequential", "--unsigned")
    assert "cannot go with" not in allowed.output  # the ways keys are asked and reported are the audit's own


def test_without_inventory_a_suspect_is_still_needed(folder, monkeypatch):
    monkeypatch.chdir(folder)
    r = _cli("audit", "keys/a.key")
    assert r.exit_code == 2 and "pass --model FILE, one or more --endpoint URL, or --inventory FILE" in r.stderr


# --- a heterogeneous fleet, audited once --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_keys(lenet, mnist, tmp_path_factory):
    """keys/dbi.key (DBI with canaries) and keys/small.key (a smaller DBI key) of the LeNet-5."""
    oracle = TorchOracle(lenet, SHAPE)
    folder = tmp_path_factory.mktemp("fleet") / "keys"
    folder.mkdir()
    made = {"dbi": canary.attach(dbi.create(oracle, mnist.train.x[:60], itr=200, eps=1e-3), oracle,
                                 mnist.test.x[:500], mnist.test.y[:500]),
            "small": dbi.create(oracle, mnist.train.x[100:120], itr=200, eps=1e-3)}
    for name, key in made.items():
        keys.save(key, folder / f"{name}.key", secret=SECRET)
    return folder


FLEET = """
[defaults]
keys = "keys/dbi.key"
timeout = 5
retries = 0

[[target]]
name = "clean"
endpoint = "{clean}"
model_name = "lenet"

[[target]]
name = "local"
model = "{model}"
budget = 5000

[[target]]
name = "tampered"
endpoint = "{tampered}"
model_name = "copy"
output_kind = "logits"
token_file = "token"
keys = ["keys/"]
"""


def test_the_cli_audits_a_mixed_inventory_tampered_target_first(lenet, lenet_file, fleet_keys, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(fleet_keys, tmp_path / "keys")
    (tmp_path / "token").write_bytes(TOKEN)
    (tmp_path / "secret").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    clean_app = create_app(TorchOracle(lenet, SHAPE), model_name="lenet")
    tampered_app = create_app(TorchOracle(quantize_int8(lenet), SHAPE), model_name="copy", output="logits",
                              token=TOKEN)
    with serving(clean_app) as clean, serving(tampered_app) as tampered:
        (tmp_path / "fleet.toml").write_text(FLEET.format(clean=clean, tampered=tampered, model=lenet_file))
        r = _cli("audit", "--inventory", "fleet.toml", "--secret-file", "secret", "--report", "fleet.html")
        md = _cli("audit", "--inventory", "fleet.toml", "--secret-file", "secret", "--report", "fleet.md", "--json")
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("clean: INTACT") and "local: INTACT" in r.stdout
    assert "tampered: TAMPERED (dbi, dbi)" in r.stdout  # both keys of the folder, through logits and a token
    document = json.loads(md.stdout)
    assert md.exit_code == 1 and document["meta"]["inventory"] == "fleet.toml"
    assert [t["target"] for t in document["targets"]] == ["clean", "local", "tampered"]
    dbi_key, small_key = str(tmp_path / "keys" / "dbi.key"), str(tmp_path / "keys" / "small.key")
    assert [t["states"] for t in document["targets"]] == [
        {dbi_key: "ok"}, {dbi_key: "ok"}, {dbi_key: "failed", small_key: "failed"}]
    page = (tmp_path / "fleet.html").read_text()
    table = page[page.index('<table class="fleet">'):page.index("</table>")]
    rows = re.findall(r'<tr><th><a href="#target-(\d)">([^<]+)</a></th>(.*?)</tr>', table)
    assert [(i, name) for i, name, _ in rows] == [("2", "tampered"), ("0", "clean"), ("1", "local")]
    assert re.findall(r'class="state state-(\w+)">(\w+|-)<', rows[0][2]) == [("failed", "failed")] * 2
    assert re.findall(r'class="state state-(\w+)">(\w+|-)<', rows[1][2]) == [("ok", "ok"), ("none", "-")]
    assert "<th>dbi.key</th><th>small.key</th>" in table and page.index("Fleet") < page.index('id="target-0"')
    markdown = (tmp_path / "fleet.md").read_text()
    fleet = markdown[markdown.index("## Fleet"):markdown.index("## clean")]
    assert fleet.splitlines()[2:6] == ["| target | dbi.key | small.key |", "| --- | --- | --- |",
                                       "| tampered | failed | failed |", "| clean | ok | - |"]
