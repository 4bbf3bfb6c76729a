"""nnmark audit in miniature: a DBI, a pairs, a MetaFinger and an iNNformant key asked of `nnmark serve` endpoints."""

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nnmark import data, envs, keyinfo, keys, marks, models
from nnmark.attacks import weight_noise
from nnmark.audit import log, report
from nnmark.audit import run as audit
from nnmark.marks.integrity import dbi, pairing
from nnmark.marks.ownership import metafinger
from nnmark.marks.telltale import innformant
from nnmark.oracles import TorchOracle
from nnmark.serve import create_app, serving
from nnmark.marks.ownership.shadow import PoolLayout, ShadowSpec, build_pool, pool_specs

SECRET = b"owner secret"
NOISE_STD = 1e-2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A digits LeNet-5 with four signed keys, a noised copy and an independently trained model, all on disk."""
    ds = data.load("digits")
    root = tmp_path_factory.mktemp("audit")
    source = build_pool([ShadowSpec("lenet5", "digits", 0)], cache_dir=root / "cache", executor="serial")[0]
    digest = models.digest(source)
    specs = pool_specs("lenet5", "digits", digest, PoolLayout(negatives=2, val_negatives=2, af=2, alpha=10.0))
    independent = ShadowSpec("lenet5", "digits", 7)
    pool = build_pool([*(s for group in specs.values() for s in group), independent], cache_dir=root / "cache",
                      base=source, executor="serial")
    oracle = TorchOracle(source, ds.shape)
    env_oracles = {name: envs.get(name).oracle(source, ds.shape) for name in ("float32", "float64")}
    made = {
        "dbi": dbi.create(oracle, ds.test.x[:30], itr=300, eps=1e-3, model_digest=digest),
        "pairs": pairing.create(oracle, 6, secret=SECRET, user_id="alice", max_itr=100, alpha=1e-4),
        "metafinger": metafinger.create(source, metafinger.Pools(**pool.groups(specs)), ds.train.x,
                                        metafinger.Settings(n=40, candidates=80, epochs=30), seed=0,
                                        model_digest=digest),
        "innformant": innformant.create(env_oracles["float32"], env_oracles, ds.test.x[:20], remote_max=200),
    }
    key_dir = root / "keys"
    key_dir.mkdir()
    for name, key in made.items():
        keys.save(key, key_dir / f"{name}.key", secret=SECRET)
    (key_dir / "README.txt").write_text("not a key")
    config = models.ModelConfig("lenet5", ds.shape, ds.num_classes, data="digits")
    paths = {}
    for name, model in (("source", source), ("noised", weight_noise(source, NOISE_STD, seed=0)),
                        ("independent", pool.select([independent])[0])):
        paths[name] = root / f"{name}.safetensors"
        models.save(model, config, paths[name])
    loaded = audit.load_keys(keyinfo.key_files(key_dir), secret=SECRET)
    return {"root": root, "key_dir": key_dir, "models": paths, "keys": loaded, "shape": ds.shape}


@contextlib.contextmanager
def endpoint(path, env="float32", card=None):
    """`nnmark serve` of the checkpoint at ``path`` in environment ``env``, in-process on a free port; ``card``: what
    else its metadata publishes (as a proxy in front of it could)."""
    model, config = models.load(path)
    app = create_app(envs.get(env).oracle(model, tuple(config.input_shape)), model_name="model", card=card)
    with serving(app) as url:
        yield url


def _by_method(target_report):
    return {r.method: r for r in target_report.keys}


def _audit(world, suspect, env="float32", **settings):
    with endpoint(world["models"][suspect], env) as url:
        target = audit.endpoint_target(url)
        return audit.audit_target(target, world["keys"], audit.Settings(secret=SECRET, **settings))


def test_the_untouched_model_passes_every_key_and_names_its_environment(world):
    result = _audit(world, "source")
    by = _by_method(result)
    assert result.status() == 0, report.summary_line(result)
    assert {m: r.decision for m, r in by.items()} == {"dbi": "intact", "pairs": "intact", "metafinger": "match",
                                                      "innformant": "float32"}
    assert by["dbi"].queries == by["dbi"].key_size  # "intact" needs the whole key
    telltale = next(k.key for k in world["keys"] if k.key.method == innformant.METHOD)
    whole = marks.verify(TorchOracle(models.load(world["models"]["source"])[0], world["shape"]), telltale)
    assert by["innformant"].queries == whole.queries  # telltale samples are asked as verify asks them: one batch
    assert by["metafinger"].queries < by["metafinger"].key_size and by["metafinger"].rule == "e-value"
    assert by["metafinger"].p_value < 1e-3
    line = report.summary_line(result)
    assert line.startswith("INTACT · MINE (metafinger p=") and "environment float32" in line
    assert line.endswith(f"· {result.queries} queries")
    assert result.info["endpoint"].startswith("http://127.0.0.1:") and result.info["model"]["name"] == "model"
    assert result.info["server"]["name"] == "nnmark" and "binary_tensor_data" in result.info["server"]["extensions"]


def test_a_noised_copy_fails_integrity_but_is_still_mine_and_sequential_asks_fewer_queries(world):
    sequential, full = _audit(world, "noised"), _audit(world, "noised", sequential=False)
    for result in (sequential, full):
        by = _by_method(result)
        assert result.status() == 1
        assert by["dbi"].decision == "tampered" and by["pairs"].decision == "tampered"
        assert by["metafinger"].decision == "match" and by["metafinger"].passed
        assert by["dbi"].flipped and set(by["dbi"].flipped) <= set(range(30))
    assert {m: r.decision for m, r in _by_method(sequential).items()} == \
        {m: r.decision for m, r in _by_method(full).items()}
    assert sequential.queries < full.queries
    assert _by_method(full)["dbi"].queries == 30 and _by_method(sequential)["dbi"].queries < 30
    assert set(_by_method(sequential)["dbi"].flipped) <= set(_by_method(full)["dbi"].flipped)


def test_an_independent_model_is_not_mine(world):
    result = _audit(world, "independent")
    by = _by_method(result)
    assert by["metafinger"].decision == "no match" and by["metafinger"].passed is False
    assert "NOT MINE" in report.summary_line(result) and result.status() == 1


def test_a_fleet_is_asked_concurrently_and_reported_in_order(world):
    with endpoint(world["models"]["source"], "float32") as a, endpoint(world["models"]["source"], "float64") as b:
        targets = [audit.endpoint_target(a), audit.endpoint_target(b)]
        reports = audit.audit_fleet(targets, world["keys"], audit.Settings(secret=SECRET), workers=2)
    assert [r.target for r in reports] == [t.name for t in targets]
    assert [_by_method(r)["innformant"].decision for r in reports] == ["float32", "float64"]
    assert [r.status() for r in reports] == [0, 1] and audit.exit_status(reports) == 1


def _carded(world, card):
    """The world's keys, each recording ``card`` as the model card it was made for."""
    return [dataclasses.replace(k, key=dataclasses.replace(k.key, config={**k.key.config, "model_card": card}))
            for k in world["keys"]]


def _card(world, **changes):
    return {"input_shape": list(world["shape"]), "num_classes": 10, "class_names": None, "normalize": None,
            **changes}


@pytest.mark.parametrize("published, word, disagreeing", [
    ({"model_card": {"class_names": [f"c{i}" for i in range(10)]}}, "class_names", 4),
    ({"model_card": {"num_classes": 11}}, "num_classes", 4),
    ({"model_digest": "f" * 64}, "publishes ffffffffffff", 2),  # the keys that record a digest: dbi, metafinger
])
def test_what_a_tampered_endpoint_publishes_cannot_waive_the_keys(world, published, word, disagreeing):
    card = _card(world)
    served = {"model_card": {**card, **published.get("model_card", {})}, **{k: v for k, v in published.items()
                                                                          if k != "model_card"}}
    with endpoint(world["models"]["noised"], card=served) as url:
        result = audit.audit_target(audit.endpoint_target(url), _carded(world, card), audit.Settings(secret=SECRET))
    by = _by_method(result)
    assert result.status() == 1 and result.queries > 0, report.summary_line(result)
    assert by["dbi"].decision == "tampered" and by["pairs"].decision == "tampered" and by["metafinger"].passed
    noted = [r for r in result.keys if any(word in d for d in r.disagreements)]
    assert len(noted) == disagreeing and all(r.passed is not None for r in result.keys)
    line = report.summary_line(result)
    assert line.startswith("TAMPERED (dbi, pairs)") and f"{disagreeing} keys disagree with what the target" in line
    keys_json = json.loads(report.to_json([result], {}))["targets"][0]["keys"]
    assert sum(any(word in d for d in k["disagreements"]) for k in keys_json) == disagreeing
    for text in (report.to_markdown([result], {}).replace("\\", ""), report.to_html([result], {})):
        assert text.count("disagreement") == disagreeing and word in text


def test_a_key_that_cannot_be_asked_is_an_error_and_a_target_asked_nothing_does_not_pass(world):
    mnist_key = audit.AuditKey("mnist.key", "0" * 64, dbi.create(
        TorchOracle(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), (1, 28, 28)),
        torch.rand(4, 1, 28, 28), itr=1))
    settings = audit.Settings(secret=SECRET)
    alone = audit.audit_target(audit.local_target(world["models"]["source"]), [mnist_key], settings)
    assert [r.decision for r in alone.keys] == [audit.ERROR] and "cannot be asked" in alone.keys[0].note
    assert alone.status() == 2 and alone.queries == 0 and audit.exit_status([alone]) == 2
    assert audit.NOTHING_CHECKED in alone.problem() and "mnist.key" in audit.problem([alone])
    assert report.summary_line(alone).startswith("NOTHING WAS CHECKED")
    page = report.to_html([alone], {})
    assert 'class="summary error"' in page and "pass" not in page.split("</style>")[1]
    assert json.loads(report.to_json([alone], {}))["type"] == "AuditError"

    dbi_key = next(k for k in world["keys"] if k.key.method == "dbi")
    mixed = audit.audit_target(audit.local_target(world["models"]["noised"]), [mnist_key, dbi_key], settings)
    assert [r.decision for r in mixed.keys] == [audit.ERROR, "tampered"] and mixed.status() == 2
    assert audit.NOTHING_CHECKED not in mixed.problem() and "1 of 2 keys failed" in mixed.problem()
    assert audit.exit_status([]) == 2


def test_report_files_parse_and_the_log_records_every_exchange(world, tmp_path):
    result = _audit(world, "noised")
    settings = audit.Settings(secret=SECRET)
    meta = {"alpha": settings.alpha, "seed": settings.seed}
    for suffix in (".md", ".json", ".html"):
        report.write_report(tmp_path / f"audit{suffix}", [result], meta)
    parsed = json.loads((tmp_path / "audit.json").read_text())
    assert parsed["targets"][0]["summary"] == report.summary_line(result)
    assert {k["method"] for k in parsed["targets"][0]["keys"]} == {"dbi", "pairs", "metafinger", "innformant"}
    page = (tmp_path / "audit.html").read_text()
    assert page.count('<section class="key">') == 4 and report.summary_line(result) in page.replace("&#x27;", "'")
    assert '<img alt="source' in page and 'src="data:image/png;base64,' in page and "<style>" in page
    assert "### dbi: tampered" in (tmp_path / "audit.md").read_text()

    path = tmp_path / "audit.jsonl"
    mac = log.append(path, audit.log_record([result], settings), SECRET)
    check = log.verify_log(path, SECRET)
    assert check.ok and check.last_mac == mac
    record = json.loads(path.read_text())
    entry = record["targets"][0]
    assert entry["target"] == result.target and "password" not in json.dumps(record)
    for k, r in zip(entry["keys"], result.keys):
        assert k["key_sha256"] == r.key_sha256 and len(k["sent"]) == len(k["answers"]) == r.queries


def test_keys_are_listed_and_shown_without_asking_a_model(world):
    listed = keyinfo.scan(world["key_dir"], secret=SECRET)
    assert [i["method"] for i in listed] == ["dbi", "innformant", "metafinger", "pairs"]
    assert [i["purpose"] for i in listed] == ["integrity", "telltale", "ownership", "integrity"]
    assert all(i["signature"] == "valid" for i in listed)
    shown = keyinfo.describe(world["key_dir"] / "dbi.key")
    assert shown["signature"] == "not checked" and shown["queries"] == 30 and shown["query_shape"] == [1, 8, 8]
    assert keyinfo.describe(world["key_dir"] / "dbi.key", secret=b"wrong")["signature"].startswith("invalid")


def test_reports_name_endpoints_without_user_info():
    target = audit.endpoint_target("https://alice:pw@example.org:8443/", model_name="m")  # nothing asked yet
    assert target.name == target.info["endpoint"] == "https://***@example.org:8443"
    assert target.info["model_name"] == "m" and "pw" not in json.dumps(target.info)


def test_the_cli_audits_a_fleet_writes_its_report_and_log_and_finds_an_edited_log(world, tmp_path):
    from click.testing import CliRunner

    from nnmark.cli import main

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    report_path, log_path = tmp_path / "audit.json", tmp_path / "audit.jsonl"

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})

    with endpoint(world["models"]["source"]) as a, endpoint(world["models"]["noised"]) as b:
        clean = run("audit", "--keys", world["key_dir"], "--endpoint", a, "--secret-file", secret,
                    "--report", report_path, "--log", log_path, "--json")
        fleet = run("audit", "--keys", world["key_dir"], "--endpoint", a, "--endpoint", b, "--secret-file", secret,
                    "--log", log_path)
    assert clean.exit_code == 0, clean.output
    summary = json.loads(report_path.read_text())["targets"][0]["summary"]
    assert summary.startswith("INTACT · MINE (metafinger") and "environment float32" in summary
    assert fleet.exit_code == 1, fleet.output
    assert f"{a}: INTACT" in fleet.output and f"{b}: TAMPERED (dbi, pairs) · MINE" in fleet.output

    r = run("log", "verify", log_path, "--secret-file", secret)
    assert r.exit_code == 0 and "OK: 2 records verify" in r.output and "last MAC" in r.output
    lines = log_path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"sequential":true', b'"sequential":false', 1)  # still valid JSON
    log_path.write_bytes(b"\n".join(lines))
    r = run("log", "verify", log_path, "--secret-file", secret, "--json")
    assert r.exit_code == 1 and json.loads(r.output)["bad_line"] == 1 and "MAC does not match" in r.output

    r = run("keys", "ls", world["key_dir"], "--secret-file", secret, "--json")
    assert r.exit_code == 0 and [k["signature"] for k in json.loads(r.output)] == ["valid"] * 4
    assert run("audit", "--model", world["models"]["source"]).exit_code == 2  # no keys


def test_the_cli_audits_a_local_model_with_every_key(world, tmp_path):
    from click.testing import CliRunner

    from nnmark.cli import main

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    paths = sorted(str(p) for p in world["key_dir"].glob("*.key"))

    def run(model):
        return CliRunner().invoke(main, ["audit", *paths, "--model", str(world["models"][model]), "--secret-file",
                                         str(secret)], env={"NNMARK_SECRET": None})

    intact, tampered = run("source"), run("noised")
    assert intact.exit_code == 0, intact.output
    assert intact.output.startswith(f"{world['models']['source']}: INTACT · MINE (metafinger")
    assert "environment float32" in intact.output.splitlines()[0]
    assert tampered.exit_code == 1, tampered.output
    assert "TAMPERED (dbi, pairs) · MINE" in tampered.output


def _cli(*args):
    from click.testing import CliRunner

    from nnmark.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env={"NNMARK_SECRET": None})


def test_the_cli_asks_an_endpoint_whose_card_disagrees_and_reports_both(world, tmp_path):
    card = _card(world)
    for k in _carded(world, card):
        keys.save(k.key, tmp_path / f"{k.key.method}.key", secret=SECRET)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    served = {"model_card": _card(world, class_names=[f"c{i}" for i in range(10)])}
    with endpoint(world["models"]["noised"], card=served) as url:
        r = _cli("audit", "--keys", tmp_path, "--endpoint", url, "--secret-file", secret, "--report", tmp_path / "a.md")
    assert r.exit_code == 1, r.output
    assert f"{url}: TAMPERED (dbi, pairs)" in r.stdout and r.stdout.count("disagrees: ") == 4
    assert "differs from the key's in class_names" in r.stdout and r.stderr == ""
    assert (tmp_path / "a.md").read_text().count("| disagreement |") == 4


def test_a_truncated_key_in_the_folder_is_an_error_and_the_others_are_still_asked(world, tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    for path in world["key_dir"].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    cut = (folder / "pairs.key").read_bytes()
    (folder / "pairs.key").write_bytes(cut[:-100])
    (folder / "notes.key").write_text("not a key at all")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)

    listed = _cli("keys", "ls", folder, "--secret-file", secret, "--json")
    assert listed.exit_code == 2 and listed.stderr.count("\n") == 1
    assert "2 of 5 key files cannot be used" in listed.stderr
    rows = {Path(row["file"]).name: row for row in json.loads(listed.stdout)}
    assert sorted(rows) == ["dbi.key", "innformant.key", "metafinger.key", "notes.key", "pairs.key"]
    assert "truncated" in rows["pairs.key"]["error"] and "error" in rows["notes.key"]
    assert [rows[name]["signature"] for name in ("dbi.key", "innformant.key", "metafinger.key")] == ["valid"] * 3

    with endpoint(world["models"]["source"]) as url:
        r = _cli("audit", "--keys", folder, "--endpoint", url, "--secret-file", secret, "--json")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "2 of 5 keys failed" in r.stderr
    parsed = json.loads(r.stdout)
    by_file = {Path(k["key"]).name: k for k in parsed["targets"][0]["keys"]}
    assert {name: k["decision"] for name, k in by_file.items()} == {
        "dbi.key": "intact", "innformant.key": "float32", "metafinger.key": "match", "notes.key": "error",
        "pairs.key": "error"}
    assert "truncated" in by_file["pairs.key"]["note"] and parsed["type"] == "AuditError"


def test_a_key_with_as_many_queries_as_canaries_keeps_its_canaries_in_every_batch(world, tmp_path):
    from nnmark.marks import canary

    ds = data.load("digits")
    source, _ = models.load(world["models"]["source"])
    dbi_key = next(k.key for k in world["keys"] if k.key.method == dbi.METHOD)
    keyed = canary.attach(dbi_key, TorchOracle(source, ds.shape), ds.test.x, ds.test.y)
    m = len(keyed.extras[canary.QUERIES])
    small = audit.sub_key(keyed, torch.arange(m))  # as many queries as canaries: no extra of the key is cut
    part = audit.sub_key(small, torch.tensor([2, 0]))
    assert len(part.expected) == 2
    for name, t in small.extras.items():
        if name.startswith(canary.PREFIX):
            assert torch.equal(part.extras[name], t), name
    keys.save(small, tmp_path / "small.key", secret=SECRET)
    (akey,) = audit.load_keys([tmp_path / "small.key"], secret=SECRET)
    for suspect, decision in (("source", "intact"), ("noised", "tampered")):
        with endpoint(world["models"][suspect]) as url:
            result = audit.audit_target(audit.endpoint_target(url), [akey], audit.Settings(secret=SECRET, batch_size=2))
        (key_result,) = result.keys
        assert key_result.decision == decision, key_result
        assert key_result.preflight and "differently" not in key_result.preflight
