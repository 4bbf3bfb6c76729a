"""DAWN: the keyed draw, the serving oracle, its signed record, key creation, a real extraction through the API, and
the command line (``nnmark serve --dawn-record``, ``nnmark mark dawn``, ``nnmark verify``)."""

import json
import math
import os

import pytest
import torch
from test_cli import dbi_key_file, nnmark_serve, run  # noqa: F401 (fixtures)
from test_kill_ownership import SHAPE, Lookup, inputs

from nnmark import keys, models
from nnmark.attacks.distill import build_student
from nnmark.attacks.extract import extract_from
from nnmark.cli import serve as serve_cli
from nnmark.data.roles import attacker_data
from nnmark.errors import (
    AccessError, ArgumentError, EndpointError, InputError, KeyFileError, NnmarkError, SignatureError,
)
from nnmark.keys import KeyFile
from nnmark.marks.ownership import dawn
from nnmark.oracles import HttpOracle, LabelsOracle, TorchOracle

SECRET = b"owner's secret"
K_W = dawn.watermark_key(SECRET)


def _noise(n, seed=0):
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def test_the_draw_is_keyed_deterministic_at_the_rate_and_uniform_over_the_wrong_labels():
    x, n = _noise(20_000), 20_000
    source = torch.arange(n) % 10
    chosen, wrong = dawn.watermark_draw(K_W, x, source, 10, 0.05)
    again = dawn.watermark_draw(K_W, x.clone(), source, 10, 0.05)
    assert torch.equal(chosen, again[0]) and torch.equal(wrong, again[1])
    assert abs(int(chosen.sum()) - 0.05 * n) < 4 * math.sqrt(n * 0.05 * 0.95)
    assert not (wrong == source).any() and wrong.min() >= 0 and wrong.max() <= 9
    offsets = torch.bincount((wrong - source) % 10, minlength=10)
    assert offsets[0] == 0 and all(abs(int(c) - n / 9) < 4 * math.sqrt(n / 9) for c in offsets[1:])
    other = dawn.watermark_draw(dawn.watermark_key(b"another secret"), x, source, 10, 0.05)[0]
    assert (other != chosen).sum() > 0.05 * n  # another secret picks other queries


def test_the_draw_follows_its_documented_definition_whatever_the_input_types():
    """Re-derived from the docstring with hashlib alone: K_w = HMAC-SHA256(secret, "nnmark dawn K_w"); x joins W when
    the first 8 bytes of HMAC-SHA256(K_w, x's float32 bytes), big-endian, are below r_w 2^64; F_w(x) = (F(x) + 1 +
    (bytes 8-16, big-endian, mod K - 1)) mod K. A float64 input is hashed as float32, int32 labels give int64."""
    import hashlib
    import hmac

    k_w = hmac.new(SECRET, b"nnmark dawn K_w", hashlib.sha256).digest()
    assert dawn.watermark_key(SECRET) == k_w
    x = _noise(300).double()
    source = (torch.arange(300) % 7).int()
    chosen, wrong = dawn.watermark_draw(K_W, x, source, 7, 0.4)
    for i in range(300):
        h = hmac.new(k_w, x[i].float().numpy().tobytes(), hashlib.sha256).digest()
        assert bool(chosen[i]) == (int.from_bytes(h[:8], "big") < 0.4 * 2 ** 64)
        assert int(wrong[i]) == (int(source[i]) + 1 + int.from_bytes(h[8:16], "big") % 6) % 7
    assert chosen.dtype == torch.bool and wrong.dtype == torch.int64 and 60 < chosen.sum() < 180


def test_the_draw_refuses_a_rate_outside_0_1_and_fewer_than_two_classes():
    x, source = _noise(3), torch.zeros(3, dtype=torch.int64)
    for rate in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ArgumentError, match="rate r_w"):
            dawn.watermark_draw(K_W, x, source, 10, rate)
    with pytest.raises(ArgumentError, match="2 classes"):
        dawn.watermark_draw(K_W, x, source, 1, 0.5)
    chosen, wrong = dawn.watermark_draw(K_W, _noise(200), torch.zeros(200, dtype=torch.int64), 2, 0.5)
    assert (wrong == 1).all() and 0 < chosen.sum() < 200


def _served(model, folder=None, rate=0.3, secret=SECRET, **kw):
    inner = TorchOracle(model, model.shape if hasattr(model, "shape") else (1, 8, 8))
    record = None if folder is None else dawn.Record(folder, secret)
    return dawn.DawnOracle(inner, secret, rate=rate, record=record, **kw)


class Soft(torch.nn.Module):
    """Fixed, distinct logits per input (the first pixel picks them): probability vectors with no ties."""

    shape = (1, 8, 8)

    def forward(self, x):
        shift = (x[:, 0, 0, 0] * 10).long().clamp(0, 9)
        logits = (torch.arange(10)[None, :] + shift[:, None]) % 10 / 3
        return logits + x.flatten(1)[:, :10] / 100


def test_the_api_changes_only_the_drawn_answers_and_records_exactly_those(tmp_path):
    x = _noise(400)
    plain = TorchOracle(Soft(), (1, 8, 8)).predict(x)
    api = _served(Soft(), tmp_path / "record")
    probs, labels = api.predict(x)
    chosen, wrong = dawn.watermark_draw(K_W, x, plain[1], 10, 0.3)
    assert 60 < chosen.sum() < 180 and torch.equal(labels, torch.where(chosen, wrong, plain[1]))
    assert torch.equal(probs.argmax(1), labels) and torch.equal(probs.sort(1).values, plain[0].sort(1).values)
    assert torch.equal(probs[~chosen], plain[0][~chosen])
    assert torch.equal(api.labels(x), labels) and torch.equal(api.probabilities(x), probs)
    recorded = dawn.Record(tmp_path / "record", SECRET).read()
    assert torch.equal(recorded.x, x[chosen]) and torch.equal(recorded.served, wrong[chosen])
    assert torch.equal(recorded.source, plain[1][chosen]) and recorded.config == {"rate": 0.3, "num_classes": 10}
    assert recorded.clients == [frozenset({None})] * int(chosen.sum())
    assert api.queries == 1200 and api.access == "probabilities"


def test_the_api_gives_no_more_access_than_labels_and_probabilities(tmp_path):
    api = _served(Soft())
    assert api.access == "probabilities" and not api.gives_logits
    with pytest.raises(AccessError):
        api.logits(_noise(2))
    labels_only = dawn.DawnOracle(LabelsOracle(TorchOracle(Soft(), (1, 8, 8))), SECRET)
    assert labels_only.access == "labels"
    with pytest.raises(AccessError):
        labels_only.probabilities(_noise(2))
    with pytest.raises(ArgumentError, match="secret"):
        dawn.DawnOracle(TorchOracle(Soft(), (1, 8, 8)), b"")
    with pytest.raises(ArgumentError, match="rate"):
        dawn.DawnOracle(TorchOracle(Soft(), (1, 8, 8)), SECRET, rate=1.0)
    assert not list(tmp_path.iterdir())  # no record: nothing written


def test_the_owners_own_key_queries_and_canaries_are_never_watermarked(tmp_path):
    x, canaries = _noise(200), _noise(50, seed=9)
    key = KeyFile("natural", {}, x[:100], torch.zeros(100, dtype=torch.int64), extras={"canary.queries": canaries})
    exempt = dawn.exempt_digests([key])
    assert len(exempt) == 150
    plain = TorchOracle(Soft(), (1, 8, 8)).labels(torch.cat([x, canaries]))
    chosen = dawn.watermark_draw(K_W, torch.cat([x, canaries]), plain, 10, 0.5)[0]
    assert chosen[:100].any() and chosen[100:].any() and chosen[200:].any()
    api = _served(Soft(), tmp_path, rate=0.5, exempt=exempt)
    served = api.labels(torch.cat([x, canaries]))
    assert torch.equal(served[:100], plain[:100]) and torch.equal(served[200:], plain[200:])
    assert torch.equal(served[100:200] != plain[100:200], chosen[100:200])
    assert torch.equal(dawn.Record(tmp_path, SECRET).read().x, x[100:][chosen[100:200]])


def test_a_record_keeps_each_input_once_in_the_order_served(tmp_path):
    api = _served(Soft(), tmp_path, rate=0.5)
    x = _noise(60)
    first = api.labels(x)
    assert torch.equal(api.labels(x.flip(0)), first.flip(0))  # asked again: the same answers
    recorded = dawn.Record(tmp_path, SECRET).read()
    chosen = dawn.watermark_draw(K_W, x, TorchOracle(Soft(), (1, 8, 8)).labels(x), 10, 0.5)[0]
    assert torch.equal(recorded.x, x[chosen]) and torch.equal(recorded.served, first[chosen])
    assert len(list(tmp_path.iterdir())) == 2 and not [p for p in tmp_path.iterdir() if p.suffix != ".dawn"]


def test_a_record_refuses_what_it_did_not_write(tmp_path, monkeypatch):
    folder = tmp_path / "record"
    with pytest.raises(InputError, match="not a folder"):
        dawn.Record(folder, SECRET).read()
    folder.mkdir()
    with pytest.raises(NnmarkError, match="empty"):
        dawn.Record(folder, SECRET).read()
    _served(Soft(), folder, rate=0.5).labels(_noise(40))
    with pytest.raises(SignatureError):
        dawn.Record(folder, b"another secret").read()
    with pytest.raises(ArgumentError, match="secret"):
        dawn.Record(folder, b"")
    monkeypatch.setattr(dawn, "MAX_ENTRIES", 5)
    with pytest.raises(InputError, match="more than 5 entries"):
        dawn.Record(folder, SECRET).read()
    monkeypatch.setattr(dawn, "MAX_ENTRIES", sum(len(keys.load(f, secret=SECRET).expected) for f in folder.iterdir()))
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden files are not the record's
    assert len(dawn.Record(folder, SECRET).read().x) == dawn.MAX_ENTRIES
    monkeypatch.undo()
    _served(Soft(), folder, rate=0.2).labels(_noise(40, seed=1))
    with pytest.raises(InputError, match="different settings"):
        dawn.Record(folder, SECRET).read()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a shard"):
        dawn.Record(stray, SECRET).read()
    (stray / "notes.txt").unlink()
    labels = torch.zeros(2, dtype=torch.int64)
    for shard in (KeyFile("ipguard", {"p0": 0.1}, _noise(2), labels),
                  KeyFile("ipguard", {"p0": 0.1}, _noise(2), labels, extras={"source_labels": labels}),
                  KeyFile(dawn.SHARD_METHOD, {"rate": 0.1, "num_classes": 10}, _noise(2), labels)):
        keys.save(shard, stray / "00000000000000000001-1-1.dawn", secret=SECRET)
        with pytest.raises(KeyFileError, match="not a DAWN record shard"):
            dawn.Record(stray, SECRET).read()


def test_a_tampered_shard_is_refused(tmp_path):
    _served(Soft(), tmp_path, rate=0.5).labels(_noise(20))
    shard = next(tmp_path.iterdir())
    data = bytearray(shard.read_bytes())
    data[-5] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises((KeyFileError, SignatureError)):
        dawn.Record(tmp_path, SECRET).read()


def _lookup_record(folder, labels, n=50, rate=0.5):
    """A record of ``Lookup(labels)`` served on ``inputs(0, n)``; (the model, the inputs, the draw)."""
    model = Lookup(labels)
    x = inputs(0, n)
    dawn.DawnOracle(TorchOracle(model, SHAPE), SECRET, rate=rate, record=dawn.Record(folder, SECRET)).labels(x)
    return model, x, dawn.watermark_draw(K_W, x, labels[:n], 10, rate)


def test_create_draws_n_recorded_inputs_the_model_still_labels_as_served(tmp_path):
    labels = torch.arange(1024) % 10
    model, x, (chosen, wrong) = _lookup_record(tmp_path, labels)
    recorded = int(chosen.sum())
    key = dawn.create(TorchOracle(model, SHAPE), tmp_path, n=10, seed=3, secret=SECRET, meta={"note": "x"},
                      model_digest="ab" * 32)
    assert key.method == "dawn" and len(key.expected) == 10 and key.config["note"] == "x"
    assert key.model_digest == "ab" * 32
    assert {k: key.config[k] for k in dawn.CONFIG_FIELDS if k != "client"} == {
        "n": 10, "recorded": recorded, "rate": 0.5, "seed": 3, "num_classes": 10, "alpha": dawn.ALPHA, "p0": 1 / 9}
    assert "client" not in key.config
    index = (key.queries[:, 0, 0, 0].double() * 1024).round().long()
    assert chosen[index].all() and torch.equal(key.expected, wrong[index])
    assert torch.equal(key.extras["source_labels"], labels[index])
    again = dawn.create(TorchOracle(model, SHAPE), tmp_path, n=10, seed=3, secret=SECRET)
    assert torch.equal(again.queries, key.queries)
    other = dawn.create(TorchOracle(model, SHAPE), tmp_path, n=10, seed=4, secret=SECRET)
    assert not torch.equal(other.queries, key.queries)
    whole = dawn.create(TorchOracle(model, SHAPE), tmp_path, n=1000, secret=SECRET)
    assert len(whole.expected) == recorded and keys.SHORTFALL not in whole.config
    assert torch.equal(whole.queries, dawn.create(TorchOracle(model, SHAPE), tmp_path, n=1000, seed=0,
                                                  secret=SECRET).queries)  # seed 0 by default
    one = dawn.create(TorchOracle(model, SHAPE), tmp_path, n=1, secret=SECRET)
    assert len(one.expected) == 1 and torch.equal(one.queries, whole.queries[:1])

    changed = labels.clone()
    moved = index[:4]
    changed[moved] = (changed[moved] + 5) % 10
    kept = dawn.create(TorchOracle(Lookup(changed), SHAPE), tmp_path, n=1000, secret=SECRET)
    assert len(kept.expected) == recorded - 4 and kept.config[keys.SHORTFALL]["kept"] == recorded - 4
    why = kept.config[keys.SHORTFALL]["why"]
    assert why == "the model labels 4 recorded inputs otherwise than when they were served"
    with pytest.raises(InputError, match="^the model labels none of the recorded inputs as the record says it was "
                                         "served: the record is another model's$"):
        dawn.create(TorchOracle(Lookup((labels + 1) % 10), SHAPE), tmp_path, secret=SECRET)
    with pytest.raises(InputError, match=r"no input that 'alice' alone asked \(clients in it: none named\)$"):
        dawn.create(TorchOracle(model, SHAPE), tmp_path, client="alice", secret=SECRET)
    with pytest.raises(InputError, match="for 10 classes; the model has 12"):
        dawn.create(TorchOracle(Lookup(labels, 12), SHAPE), tmp_path, secret=SECRET)


def test_each_client_is_recorded_apart_and_its_key_holds_the_inputs_it_alone_asked(tmp_path):
    """Alice asks inputs 0-29 and Bob 20-49 through one API: the same answers either way, each shard names its
    client, and a client's key draws only from what that client alone asked (20-29 tell neither apart)."""
    labels = torch.arange(1024) % 10
    model, x = Lookup(labels), inputs(0, 50)
    api = dawn.DawnOracle(TorchOracle(model, SHAPE), SECRET, rate=0.5, record=dawn.Record(tmp_path, SECRET))
    alice, bob = api.for_client("alice"), api.for_client("bob")
    assert torch.equal(alice.labels(x[:30]), api.for_client("carol.2").labels(x[:30]))
    bob.labels(x[20:50])
    assert (alice.queries, bob.queries, api.queries) == (30, 30, 0) and api.client is None
    chosen, wrong = dawn.watermark_draw(K_W, x, labels[:50], 10, 0.5)
    recorded = dawn.Record(tmp_path, SECRET).read()
    first = (recorded.x[:, 0, 0, 0].double() * 1024).round().long()
    assert sorted(first.tolist()) == chosen.nonzero().flatten().tolist()
    expected = {i: {"alice", "carol.2"} if i < 20 else {"alice", "carol.2", "bob"} if i < 30 else {"bob"}
                for i in first.tolist()}
    assert {i: set(c) for i, c in zip(first.tolist(), recorded.clients)} == expected
    oracle = TorchOracle(model, SHAPE)
    key = dawn.create(oracle, tmp_path, n=1000, client="bob", secret=SECRET)
    index = (key.queries[:, 0, 0, 0].double() * 1024).round().long()
    assert sorted(index.tolist()) == [i for i in range(30, 50) if chosen[i]] and key.config["client"] == "bob"
    assert key.config["recorded"] == len(index) and torch.equal(key.expected, wrong[index])
    with pytest.raises(InputError, match="no input that 'alice' alone asked .*alice, bob, carol.2"):
        dawn.create(oracle, tmp_path, client="alice", secret=SECRET)
    pair = dawn.create(oracle, tmp_path, n=1000, client=" carol.2,alice", secret=SECRET)
    index = (pair.queries[:, 0, 0, 0].double() * 1024).round().long()
    assert sorted(index.tolist()) == [i for i in range(20) if chosen[i]] and pair.config["client"] == "alice,carol.2"
    trio = dawn.create(oracle, tmp_path, n=1000, client="bob,alice,carol.2", secret=SECRET)
    assert len(trio.expected) == int(chosen.sum()) and trio.config["client"] == "alice,bob,carol.2"
    assert len(dawn.create(oracle, tmp_path, n=1000, secret=SECRET).expected) == int(chosen.sum())
    for bad in ("", "-x", "a b", "x" * 65, "caf\u00e9", "alice,", "alice;bob"):
        with pytest.raises(ArgumentError, match="client name"):
            api.for_client(bad)
        with pytest.raises(ArgumentError, match="client name"):
            dawn.create(oracle, tmp_path, client=bad, secret=SECRET)


@pytest.mark.parametrize("options, match", [
    ({"n": 0}, "^n must be >= 1, got 0$"), ({"alpha": 0.0}, r"^alpha must lie in \(0, 1\), got 0.0$"),
    ({"alpha": 1.0}, "alpha"),
    ({"meta": {"seed": 1, "p0": 0.5, "note": 1}}, "may not replace the method's own config entries: p0, seed$"),
])
def test_create_refuses_bad_options(tmp_path, options, match):
    model, _, _ = _lookup_record(tmp_path, torch.arange(1024) % 10)
    with pytest.raises(ArgumentError, match=match):
        dawn.create(TorchOracle(model, SHAPE), tmp_path, secret=SECRET, **options)


def test_a_copy_extracted_through_the_api_matches_and_the_victim_and_an_independent_model_do_not(
        lenet, changed_models, mnist, tmp_path):
    """The real thing on mnist5k: the thief's 500 images through the served LeNet-5 at r_w = 0.1, a fresh LeNet-5
    trained on the answers to convergence (30 epochs). The victim itself never departs from F(x). An honest client
    asked the other test images of the same API: its key does not claim the copy, the thief's does, and a key of every
    client's inputs is diluted by the honest ones."""
    thief = attacker_data(mnist)
    api = dawn.DawnOracle(TorchOracle(lenet, mnist.shape), SECRET, rate=0.1, record=dawn.Record(tmp_path, SECRET))
    api.for_client("honest").labels(mnist.test.x[:-len(thief.x)])  # the thief holds the other half
    copy, report = extract_from(api.for_client("thief"), thief.x, build_student("lenet5", mnist.shape, 10, 1),
                                epochs=30, seed=1, test=mnist.test)
    # a working copy: from 500 images, a tenth of them labelled wrong (r_w = 0.1), it ends 4-6 points under the
    # victim by seed and thread count, at the edge of what bench ownership-api counts a theft (rate 0.005 there)
    assert report.queries == len(thief.x) and report.test_accuracy > models.accuracy(lenet, mnist.test) - 0.07
    served = TorchOracle(lenet, mnist.shape)
    key = dawn.create(served, tmp_path, client="thief", secret=SECRET)
    verdicts = {name: dawn.verify(LabelsOracle(TorchOracle(m, mnist.shape)), key)
                for name, m in (("copy", copy), ("victim", lenet), ("independent", changed_models["independent"]))}
    assert verdicts["copy"].passed and verdicts["copy"].details["p_value"] < 2.0 ** -64
    assert verdicts["copy"].details["hits"] >= 20
    assert not verdicts["victim"].passed and verdicts["victim"].details["departures"] == 0
    assert not verdicts["independent"].passed and verdicts["independent"].details["hits"] <= 2
    honest = dawn.verify(LabelsOracle(TorchOracle(copy, mnist.shape)),
                         dawn.create(served, tmp_path, client="honest", secret=SECRET))
    assert not honest.passed and honest.details["n"] >= 50
    everyone = dawn.verify(LabelsOracle(TorchOracle(copy, mnist.shape)), dawn.create(served, tmp_path, secret=SECRET))
    assert everyone.details["p_value"] > verdicts["copy"].details["p_value"]


def test_serve_mark_and_verify_from_the_command_line(run, lenet_file, mnist, tmp_path):
    """``nnmark serve --dawn-record --clients-file`` as a real server. Alice extracts a copy with ``nnmark attack
    extract --endpoint``, Bob asks other images; a token of no client (or none) is refused. ``nnmark mark dawn``
    makes the key of both (at alpha 1e-9: the 500 queries of mnist5k's thief leave a record of about 50, too few
    for 2^-64): ``verify`` and ``audit`` say match (0) for the copy and no match (1) for the model that was served.
    Each shard names its client; ``mark dawn --client`` keys each one's inputs, and ``audit --keys`` says MATCH
    for Alice's key only."""
    clients, record, folder = tmp_path / "clients", tmp_path / "record", tmp_path / "keys"
    copy = tmp_path / "copy.safetensors"
    clients.write_text("# NAME TOKEN\nalice tok-alice\nbob tok-bob\n")
    (tmp_path / "alice-token").write_text("tok-alice\n")
    bobs = mnist.test.x[:500]  # the thief's images are the other half
    with nnmark_serve("--model", lenet_file, "--clients-file", clients, "--dawn-record", record, "--dawn-rate", 0.1,
                      "--secret-file", run.secret) as url:
        stolen = run("attack", "extract", "--endpoint", url, "--token-file", tmp_path / "alice-token", "--data",
                     "mnist5k", "--student-arch", "lenet5", "--epochs", 30, "--out", copy)
        assert stolen.exit_code == 0, stolen.output
        with HttpOracle(url, token="tok-bob") as bob:
            bob.labels(bobs)
        for token in ("tok-carol", None):
            with pytest.raises(EndpointError, match="401"):
                HttpOracle(url, token=token).labels(bobs[:1])
    shards = os.listdir(record)
    assert shards and all(dawn.SHARD_RE.fullmatch(s) for s in shards)
    recorded = dawn.Record(record, keys.read_secret(run.secret)).read()
    mine = {b.numpy().tobytes() for b in bobs}
    assert {(x.numpy().tobytes() in mine, tuple(c)) for x, c in zip(recorded.x, recorded.clients)} == {
        (True, ("bob",)), (False, ("alice",))}

    key = tmp_path / "dawn.key"
    made = run("mark", "dawn", "--model", lenet_file, "--record", record, "--alpha", 1e-9, "--secret-file", run.secret,
               "--out", key, "--json")
    assert made.exit_code == 0, made.output
    summary = json.loads(made.output.splitlines()[-1])
    assert summary["method"] == "dawn" and summary["recorded"] >= summary["n"] > 20
    found = run("verify", key, "--model", copy, "--secret-file", run.secret, "--json")
    assert found.exit_code == 0, found.output
    verdict = json.loads(found.output)
    assert verdict["decision"] == "match" and verdict["details"]["p_value"] < 1e-9 == verdict["details"]["alpha"]
    served = run("verify", key, "--model", lenet_file, "--secret-file", run.secret, "--json")
    assert served.exit_code == 1 and json.loads(served.output)["decision"] == "no match"
    assert run("audit", key, "--model", copy, "--secret-file", run.secret).exit_code == 0
    assert run("audit", key, "--model", lenet_file, "--secret-file", run.secret).exit_code == 1
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"another secret")
    refused = run("mark", "dawn", "--model", lenet_file, "--record", record, "--secret-file", wrong, "--out",
                  tmp_path / "no.key")
    assert refused.exit_code == 2 and not (tmp_path / "no.key").exists()

    folder.mkdir()
    for client in ("alice", "bob"):
        made = run("mark", "dawn", "--model", lenet_file, "--record", record, "--client", client, "--alpha", 1e-9,
                   "--secret-file", run.secret, "--out", folder / f"{client}.key")
        assert made.exit_code == 0, made.output
    assert keys.load(folder / "bob.key", secret=keys.read_secret(run.secret)).config["client"] == "bob"
    audited = run("audit", "--keys", folder, "--model", copy, "--secret-file", run.secret, "--json")
    by_key = {os.path.basename(k["key"]): k["decision"] for k in json.loads(audited.stdout)["targets"][0]["keys"]}
    assert by_key == {"alice.key": "match", "bob.key": "no match"}, audited.output
    summary = json.loads(audited.stdout)["targets"][0]["summary"]
    assert summary.startswith("MINE (dawn p=") and audited.exit_code == 1, summary  # 1: Bob's key is no match
    unknown = run("mark", "dawn", "--model", lenet_file, "--record", record, "--client", "carol", "--secret-file",
                  run.secret, "--out", tmp_path / "carol.key")
    assert unknown.exit_code == 2 and "no input that 'carol' alone asked (clients in it: alice, bob)" in unknown.output
    both = run("serve", "--model", lenet_file, "--clients-file", clients, "--port", 0, env={"NNMARK_TOKEN": "tok"})
    assert both.exit_code == 2 and "leave out --token-file and NNMARK_TOKEN" in both.output


def test_serve_refuses_dawn_without_a_secret_or_with_logits_and_a_bad_clients_file(run, lenet_file, tmp_path):
    assert serve_cli.DAWN_RATE == dawn.RATE
    no_secret = run("serve", "--model", lenet_file, "--dawn-record", tmp_path / "r", "--port", 0)
    assert no_secret.exit_code == 2 and "needs the owner's secret" in no_secret.output
    logits = run("serve", "--model", lenet_file, "--dawn-record", tmp_path / "r", "--output", "logits",
                 "--secret-file", run.secret, "--port", 0)
    assert logits.exit_code == 2 and "logits would show" in logits.output
    exempt_alone = run("serve", "--model", lenet_file, "--dawn-exempt", tmp_path / "k.key", "--port", 0)
    assert exempt_alone.exit_code == 2 and "needs --dawn-record" in exempt_alone.output
    clients = tmp_path / "clients"
    clients.write_text("alice tok-secret-1\nbob tok-secret-1\n")
    shared = run("serve", "--model", lenet_file, "--clients-file", clients, "--port", 0)
    assert shared.exit_code == 2 and "line 2: client 'bob' has the token of another client" in shared.output
    assert "tok-secret" not in shared.output.replace(str(clients), "") and "Traceback" not in shared.output
    assert not (tmp_path / "r").exists()


def test_the_owners_integrity_key_reads_the_watermarking_api_as_intact_once_exempt(run, lenet_file, dbi_key_file,
                                                                                   tmp_path):
    """Served at r_w = 0.5, the DBI key's own queries would come back watermarked and read as tampering; named with
    --dawn-exempt, they get the model's answers and verify says INTACT."""
    args = ("--model", lenet_file, "--dawn-rate", 0.5, "--secret-file", run.secret)
    with nnmark_serve(*args, "--dawn-record", tmp_path / "a", "--dawn-exempt", dbi_key_file) as url:
        exempt = run("verify", dbi_key_file, "--endpoint", url, "--secret-file", run.secret)
    with nnmark_serve(*args, "--dawn-record", tmp_path / "b") as url:
        plain = run("verify", dbi_key_file, "--endpoint", url, "--secret-file", run.secret)
    assert exempt.exit_code == 0 and exempt.output.startswith("INTACT"), exempt.output
    assert plain.exit_code == 1 and plain.output.startswith("TAMPERED"), plain.output
