"""Tests of nnmark.keys: round trips, determinism, tamper and truncation detection, validation, secrets."""

import hashlib
import io
import json
import os

import pytest
import safetensors
import safetensors.torch
import torch

from nnmark import __version__, keys, marks, models
from nnmark.errors import ArgumentError, KeyFileError, SignatureError
from nnmark.oracles import TorchOracle

SECRET = b"correct horse battery staple"
CREATED = "2024-05-01T12:00:00Z"
DIGEST = "ab" * 32


def make_key(**overrides) -> keys.KeyFile:
    """A small valid key with a few kinds of extras."""
    g = torch.Generator().manual_seed(0)
    fields = dict(
        method="dbi",
        config={"eps": 0.03125, "steps": 7, "nested": {"on": True, "names": ["a", "é\x1f"], "none": None}},
        queries=torch.rand(3, 1, 4, 4, generator=g),
        expected=torch.tensor([0, 4, 9]),
        extras={
            "sources": torch.rand(3, 1, 4, 4, generator=g),
            "mask": torch.tensor([True, False, True]),
            "half.w-1": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        },
        model_digest=DIGEST,
        created=CREATED,
    )
    fields.update(overrides)
    return keys.KeyFile(**fields)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, for bit-exact comparison."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same(a: keys.KeyFile, b: keys.KeyFile) -> None:
    """All fields equal and all tensors bit-identical (dtype and shape included)."""
    for name in ("method", "config", "model_digest", "created", "version"):
        assert getattr(a, name) == getattr(b, name)
    pairs = [(a.queries, b.queries), (a.expected, b.expected)]
    assert a.extras.keys() == b.extras.keys()
    pairs += [(a.extras[k], b.extras[k]) for k in a.extras]
    for x, y in pairs:
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(bits(x), bits(y))


@pytest.fixture
def signed(tmp_path):
    path = tmp_path / "key.safetensors"
    keys.save(make_key(), path, secret=SECRET)
    return path


def test_round_trip_signed(signed):
    assert_same(keys.load(signed, secret=SECRET), make_key())


def test_environment_record_round_trips_and_must_be_an_object(tmp_path):
    made_in = {"device": "cuda", "device_name": "NVIDIA H100", "dtype": "float32", "tf32_matmul": False, "threads": 16}
    keys.save(make_key(config={keys.ENVIRONMENT: made_in}), tmp_path / "k.key", secret=SECRET)
    assert keys.load(tmp_path / "k.key", secret=SECRET).config[keys.ENVIRONMENT] == made_in
    for bad in ("cuda", ["cuda"], None):
        with pytest.raises(KeyFileError, match="'environment' must be an object"):
            make_key(config={keys.ENVIRONMENT: bad})


def test_round_trip_unsigned(tmp_path):
    path = tmp_path / "key.safetensors"
    keys.save(make_key(extras={}, model_digest=""), path, secret=None)
    loaded = keys.load(path, secret=None, allow_unsigned=True)
    assert_same(loaded, make_key(extras={}, model_digest=""))
    assert loaded.extras == {} and loaded.model_digest == ""


def test_defaults():
    key = keys.KeyFile("natural", {}, torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.int64))
    assert key.version == __version__ and key.model_digest == "" and key.extras == {}
    assert keys._is_utc_iso(key.created) and key.created.endswith("Z")


def test_file_is_plain_safetensors(signed):
    with safetensors.safe_open(signed, "pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["expected", "extra.half.w-1", "extra.mask", "extra.sources", "queries"]
    assert meta["nnmark.signature"].startswith("hmac-sha256:")
    info = json.loads(meta["nnmark.key"])
    assert info["format"] == keys.FORMAT_VERSION and info["method"] == "dbi" and info["created"] == CREATED


def test_load_digested_names_the_bytes_it_read(signed, tmp_path):
    key, digest = keys.load_digested(signed, secret=SECRET)
    assert digest == hashlib.sha256(signed.read_bytes()).hexdigest()
    assert torch.equal(key.queries, keys.load(signed, secret=SECRET).queries)
    other = tmp_path / "other.key"
    keys.save(make_key(), other, secret=None)
    assert keys.load_digested(other, secret=None, allow_unsigned=True)[1] != digest


def test_same_inputs_give_same_bytes(tmp_path):
    for secret in (SECRET, None):
        paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
        for p in paths:
            keys.save(make_key(), p, secret=secret)
        data = {p.read_bytes() for p in paths}
        assert len(data) == 1


def test_signature_depends_on_secret_and_content(tmp_path):
    def sig(key, secret):
        keys.save(key, tmp_path / "k", secret=secret)
        with safetensors.safe_open(tmp_path / "k", "pt") as f:
            return f.metadata()["nnmark.signature"]

    base = sig(make_key(), SECRET)
    assert sig(make_key(), SECRET + b"x") != base
    assert sig(make_key(expected=torch.tensor([0, 4, 8])), SECRET) != base
    assert sig(make_key(config={"eps": 0.03125}), SECRET) != base


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF, 0x2A])  # 0x2A turns a padding space into a newline
def test_every_flipped_byte_is_caught(signed, mask):
    data = signed.read_bytes()
    fd = os.open(signed, os.O_RDWR)
    try:
        for i, byte in enumerate(data):
            os.pwrite(fd, bytes([byte ^ mask]), i)
            with pytest.raises(KeyFileError):
                keys.load(signed, secret=SECRET)
            os.pwrite(fd, bytes([byte]), i)
    finally:
        os.close(fd)
    assert_same(keys.load(signed, secret=SECRET), make_key())


def test_truncation_is_caught(signed):
    data = signed.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    for n in sorted({0, 1, 7, 8, 9, 100, header_end - 1, header_end, header_end + 1, len(data) - 4, len(data) - 1}):
        signed.write_bytes(data[:n])
        with pytest.raises(KeyFileError, match="truncated or corrupt"):
            keys.load(signed, secret=SECRET)


@pytest.mark.parametrize("garbage", [b"\x00", b"junk", b" " * 8, bytes(64)])
def test_appended_garbage_is_caught(signed, garbage):
    signed.write_bytes(signed.read_bytes() + garbage)
    with pytest.raises(KeyFileError, match="truncated or corrupt"):
        keys.load(signed, secret=SECRET)


def test_wrong_secret(signed):
    with pytest.raises(SignatureError, match="signature does not match"):
        keys.load(signed, secret=b"wrong")


def test_signed_file_needs_a_secret(signed):
    for allow in (False, True):
        with pytest.raises(SignatureError, match="a secret is needed"):
            keys.load(signed, secret=None, allow_unsigned=allow)


def test_unsigned_refused_unless_allowed(tmp_path):
    path = tmp_path / "key.safetensors"
    keys.save(make_key(), path, secret=None)
    for secret in (None, SECRET):
        with pytest.raises(SignatureError, match="unsigned"):
            keys.load(path, secret=secret)
        assert_same(keys.load(path, secret=secret, allow_unsigned=True), make_key())


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(KeyFileError, match="no such key file"):
        keys.load(tmp_path / "absent.safetensors", secret=SECRET)
    with pytest.raises(KeyFileError, match="cannot read"):
        keys.load(tmp_path, secret=SECRET)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, this is not a key file\n",
        b"PK\x03\x04" + bytes(100),
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
    ],
)
def test_not_a_key_file(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        keys.load(path, secret=SECRET, allow_unsigned=True)


def test_model_checkpoint_is_not_a_key_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors.torch.save({"weight": torch.ones(2, 2)}))
    with pytest.raises(KeyFileError):
        keys.load(path, secret=SECRET, allow_unsigned=True)


def test_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    payload = b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."
    path = tmp_path / "evil.safetensors"
    path.write_bytes(payload)
    with pytest.raises(KeyFileError):
        keys.load(path, secret=SECRET, allow_unsigned=True)
    key = make_key(extras={"blob": torch.tensor(list(payload), dtype=torch.uint8)})
    keys.save(key, path, secret=SECRET)
    assert bytes(keys.load(path, secret=SECRET).extras["blob"].tolist()) == payload
    assert not marker.exists()


def rewrite(path, edit_metadata=None, edit_records=None, secret=None) -> None:
    """Re-encode a key file canonically after editing its metadata/records; re-sign under ``secret`` if given."""
    data = path.read_bytes()
    _, metadata, records = keys._decode(io.BytesIO(data), len(data))
    if edit_metadata:
        edit_metadata(metadata)
    if edit_records:
        records = edit_records(records)
    if secret is not None:
        metadata["nnmark.signature"] = "hmac-sha256:" + keys._mac(secret, metadata["nnmark.key"], records)
    path.write_bytes(keys._encode(metadata, records))


def set_info(**changes):
    def edit(metadata):
        info = json.loads(metadata["nnmark.key"])
        info.update(changes)
        metadata["nnmark.key"] = keys._canonical_json(info)

    return edit


def test_newer_format_is_refused(signed):
    rewrite(signed, set_info(format=2), secret=SECRET)
    with pytest.raises(KeyFileError, match="newer"):
        keys.load(signed, secret=SECRET)


@pytest.mark.parametrize("fmt", [0, "1", None, 1.0])
def test_unknown_format_is_refused(signed, fmt):
    rewrite(signed, set_info(format=fmt), secret=SECRET)
    with pytest.raises(KeyFileError, match="format"):
        keys.load(signed, secret=SECRET)


def test_resigned_but_invalid_contents_are_refused(signed):
    original = signed.read_bytes()
    cases = [
        dict(edit_metadata=set_info(method="")),
        dict(edit_metadata=set_info(model_digest="AB" * 32)),
        dict(edit_metadata=set_info(surprise=1)),
        dict(edit_metadata=lambda m: m.update({"other": "x"})),
        dict(edit_records=lambda rs: [r for r in rs if r.name != "expected"]),
        dict(edit_records=lambda rs: [r._replace(name="bogus") if r.name == "extra.mask" else r for r in rs]),
        dict(edit_records=lambda rs: rs + [keys._tensor_record("extra.bad", torch.tensor([float("nan")]))]),
    ]
    for case in cases:
        signed.write_bytes(original)
        rewrite(signed, **case, secret=SECRET)
        with pytest.raises(KeyFileError):
            keys.load(signed, secret=SECRET)


@pytest.mark.parametrize("signature", ["hmac-sha256:xyz", "hmac-sha256:" + "AB" * 32, "hmac-md5:" + "ab" * 16, ""])
def test_malformed_signature(signed, signature):
    rewrite(signed, edit_metadata=lambda m: m.update({"nnmark.signature": signature}))
    with pytest.raises(SignatureError, match="malformed signature"):
        keys.load(signed, secret=SECRET, allow_unsigned=True)


def test_queries_out_of_range_in_file_is_refused(signed):
    big = keys._tensor_record("queries", torch.full((3, 1, 4, 4), 1.5))
    rewrite(signed, edit_records=lambda rs: [big if r.name == "queries" else r for r in rs], secret=SECRET)
    with pytest.raises(KeyFileError, match=r"outside \[0, 1\]"):
        keys.load(signed, secret=SECRET)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(queries=torch.full((3, 1, 4, 4), float("nan"))), "NaN"),
        (dict(queries=torch.full((3, 1, 4, 4), float("inf"))), "NaN or infinite"),
        (dict(queries=torch.full((3, 1, 4, 4), 1.5)), r"outside \[0, 1\]"),
        (dict(queries=torch.full((3, 1, 4, 4), -0.1)), r"outside \[0, 1\]"),
        (dict(queries=torch.zeros(3, 1, 4, 4, dtype=torch.float64)), "float32"),
        (dict(queries=torch.zeros(3, 4, 4)), "float32"),
        (dict(queries=torch.zeros(0, 1, 4, 4), expected=torch.zeros(0, dtype=torch.int64)), "empty"),
        (dict(queries=[[0.5]]), "float32"),
        (dict(expected=torch.tensor([0, 1])), "2 labels for 3"),
        (dict(expected=torch.tensor([0, 1, 2], dtype=torch.int32)), "int64"),
        (dict(expected=torch.tensor([[0, 1, 2]])), "int64"),
        (dict(expected=torch.tensor([0, -1, 2])), ">= 0"),
        (dict(extras={"queries": torch.zeros(1)}), "invalid extra name"),
        (dict(extras={"bad name": torch.zeros(1)}), "invalid extra name"),
        (dict(extras={"": torch.zeros(1)}), "invalid extra name"),
        (dict(extras={"x": [1, 2]}), "dense tensor"),
        (dict(extras={"x": torch.zeros(2, dtype=torch.complex64)}), "dense tensor"),
        (dict(extras={"x": torch.tensor([float("nan")])}), "NaN"),
        (dict(extras=[("x", torch.zeros(1))]), "extras must be a dict"),
        (dict(model_digest="AB" * 32), "model_digest"),
        (dict(model_digest="ab" * 31), "model_digest"),
        (dict(method=""), "method"),
        (dict(method="not an id"), "method"),
        (dict(config=[1]), "config must be a dict"),
        (dict(config={"x": (1, 2)}), "tuple"),
        (dict(config={"x": float("nan")}), "config.x"),
        (dict(config={"x": {1: 2}}), "non-string key"),
        (dict(created="yesterday"), "created"),
        (dict(created="2024-05-01T12:00:00+02:00"), "created"),
        (dict(version=""), "version"),
    ],
)
def test_invalid_keys_are_refused_at_construction(overrides, match):
    with pytest.raises(KeyFileError, match=match):
        make_key(**overrides)


def test_save_to_missing_folder_leaves_nothing(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(KeyFileError, match="cannot write"):
        keys.save(make_key(), tmp_path / "missing" / "key.safetensors", secret=SECRET)
    assert sorted(tmp_path.rglob("*")) == before


def test_failed_save_keeps_previous_file(signed):
    original = signed.read_bytes()
    key = make_key()
    key.queries = key.queries + 1  # made invalid after construction: save re-validates
    with pytest.raises(KeyFileError, match=r"outside \[0, 1\]"):
        keys.save(key, signed, secret=SECRET)
    for secret in (b"", "text"):
        with pytest.raises(SignatureError):
            keys.save(make_key(), signed, secret=secret)
    assert signed.read_bytes() == original
    assert os.listdir(signed.parent) == [signed.name]


def test_read_secret_from_file(tmp_path):
    f = tmp_path / "secret"
    for content, expected in [
        (b"s3cret\n", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"s3cret\n\n", b"s3cret\n"),
        (b"s3cret\r\n", b"s3cret"),
        (b"\x00\xffbin", b"\x00\xffbin"),
    ]:
        f.write_bytes(content)
        assert keys.read_secret(f, environ={"NNMARK_SECRET": "env"}) == expected


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_read_secret_empty_file(tmp_path, content):
    f = tmp_path / "secret"
    f.write_bytes(content)
    with pytest.raises(SignatureError, match="empty"):
        keys.read_secret(f)


def test_read_secret_missing_file(tmp_path):
    with pytest.raises(SignatureError, match="no such secret file"):
        keys.read_secret(tmp_path / "absent")


def test_read_secret_from_env_or_none(monkeypatch):
    assert keys.read_secret(environ={"NNMARK_SECRET": "pässword"}) == "pässword".encode()
    assert keys.read_secret(environ={}) is None
    with pytest.raises(SignatureError, match="empty"):
        keys.read_secret(environ={"NNMARK_SECRET": ""})
    monkeypatch.setenv("NNMARK_SECRET", "from-os")
    assert keys.read_secret() == b"from-os"
    monkeypatch.delenv("NNMARK_SECRET")
    assert keys.read_secret() is None


def test_secret_from_file_and_env_agree(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(b"shared\n")
    path = tmp_path / "key.safetensors"
    keys.save(make_key(), path, secret=keys.read_secret(f))
    keys.load(path, secret=keys.read_secret(environ={"NNMARK_SECRET": "shared"}))


def test_signed_key_with_labels_outside_its_classes_is_refused(tmp_path):
    path = tmp_path / "key.safetensors"
    keys.save(make_key(config={"num_classes": 10}), path, secret=SECRET)
    rewrite(path, edit_records=lambda rs: [keys._tensor_record("expected", torch.tensor([0, 4, 10**12]))
                                           if r.name == "expected" else r for r in rs], secret=SECRET)
    with pytest.raises(KeyFileError, match="outside the config's num_classes = 10"):
        keys.load(path, secret=SECRET)
    for bad in (1, "10", 2.5):
        with pytest.raises(KeyFileError, match="num_classes"):
            make_key(config={"num_classes": bad})


def test_verify_refuses_a_key_whose_labels_the_model_cannot_give(constant_model):
    oracle = TorchOracle(constant_model(0), (1, 4, 4), 10)
    with pytest.raises(KeyFileError, match="10 classes"):
        marks.verify(oracle, make_key(expected=torch.tensor([0, 4, 10**12])))
    assert marks.verify(oracle, make_key(expected=torch.zeros(3, dtype=torch.int64))).passed


def test_key_header_is_checked_before_the_body_is_read(tmp_path, sparse_safetensors, peak_memory):
    n = keys.MAX_QUERIES + 1
    meta = {"__metadata__": {"nnmark.key": "{}", "nnmark.signature": "unsigned"}}
    too_many = {"dtype": "F32", "shape": [n, 1, 8, 8], "data_offsets": [0, n * 256]}
    big = {"dtype": "F32", "shape": [1000, 3, 32, 32], "data_offsets": [0, 1000 * 3 * 32 * 32 * 4]}
    cases = {
        "more than a key may hold": ({**meta, "queries": too_many}, n * 256),
        "header describes": ({**meta, "queries": big}, 2**31),  # a 2 GB file declaring 12 MB
    }
    for match, (header, body) in cases.items():
        path = tmp_path / "key.safetensors"
        sparse_safetensors(path, header, body)

        def refused():
            with pytest.raises(KeyFileError, match=match):
                keys.load(path, secret=None, allow_unsigned=True)

        assert peak_memory(refused) < 10_000_000, match
    with pytest.raises(KeyFileError, match="more than a key may hold"):
        make_key(queries=torch.zeros(n, 1, 1, 1), expected=torch.zeros(n, dtype=torch.int64))


FORMAT1 = os.path.join(os.path.dirname(__file__), "data", "keys")


def test_key_files_of_format_1_still_load_and_verify(tmp_path):
    """A key file written by nnmark 0.1 (format 1, see data/keys/make_format1.py) must keep working."""
    path = os.path.join(FORMAT1, "format1-natural.safetensors")
    secret = keys.read_secret(os.path.join(FORMAT1, "secret.txt"))
    key = keys.load(path, secret=secret)
    assert (key.method, len(key.expected), tuple(key.queries.shape[1:])) == ("natural", 16, (1, 8, 8))
    assert json.loads(safetensors.safe_open(path, "pt").metadata()["nnmark.key"])["format"] == 1
    keys.save(key, tmp_path / "again.safetensors", secret=secret)
    assert (tmp_path / "again.safetensors").read_bytes() == open(path, "rb").read()
    model, config = models.load(os.path.join(FORMAT1, "format1-lenet.safetensors"))
    assert models.digest(model) == key.model_digest
    verdict = marks.verify(TorchOracle(model, config.input_shape, config.num_classes), key)
    assert verdict.passed and verdict.decision == "intact"
    assert keys.ENVIRONMENT not in key.config and "environment" not in verdict.details  # made before keys recorded it
    elsewhere = marks.verify(TorchOracle(model, config.input_shape, config.num_classes, dtype=torch.float64), key)
    assert elsewhere.passed and "environment" not in elsewhere.details
    with pytest.raises(SignatureError):
        keys.load(path, secret=secret + b"x")


def test_key_file_is_private_to_its_owner(signed):
    assert os.stat(signed).st_mode & 0o777 == 0o600


def test_non_ascii_config_and_version_round_trip(tmp_path):
    key = make_key(config={"name": "café ✓"}, version="0.0.1-test")
    keys.save(key, tmp_path / "k", secret=SECRET)
    assert_same(keys.load(tmp_path / "k", secret=SECRET), key)


@pytest.mark.parametrize("size", [None, 1, 16])
def test_a_recorded_batch_size_of_one_or_more_is_kept(size):
    assert make_key(config={} if size is None else {"batch_size": size}).config.get("batch_size") == size


@pytest.mark.parametrize("labels, classes", [([0, 1, 1], 2), ([0, 9, 5], 10)])
def test_labels_up_to_the_last_class_are_kept(labels, classes):
    make_key(expected=torch.tensor(labels), config={"num_classes": classes})


@pytest.mark.parametrize("overrides, match", [
    (dict(expected=torch.tensor([0, 2, 1]), config={"num_classes": 2}), "label 2 is outside"),
    (dict(config={"num_classes": 1}), "num_classes must be an integer >= 2"),
    (dict(config={"x": [1, [float("inf")]]}), r"config\.x\[1\]\[0\] is inf"),
    (dict(queries=torch.zeros(3, 1, 4, 4, dtype=torch.int64)), "got torch.int64 tensor of shape"),
    (dict(expected=[0, 1, 2]), "got list"),
    (dict(config=[1]), "got list"),
    (dict(extras=[("x", torch.zeros(1))]), "got list"),
    (dict(extras={"x": "text"}), "got str"),
    (dict(queries=torch.full((3, 1, 4, 4), float("nan"))), "^queries contain NaN or infinite values$"),
    (dict(queries=torch.full((3, 1, 4, 4), 1.5)), r"^queries lie outside \[0, 1\]$"),
    (dict(expected=torch.tensor([0, -1, 2])), "^expected labels must be >= 0$"),
    *[(dict(config={"batch_size": b}), rf"^config batch_size must be an integer >= 1, got {b!r}$")
      for b in (0, -3, 2.0, "4", True)],
])
def test_invalid_keys_say_what_is_wrong(overrides, match):
    with pytest.raises(KeyFileError, match=match):
        make_key(**overrides)


def test_a_key_may_hold_exactly_max_queries():
    n = keys.MAX_QUERIES
    key = keys.KeyFile("natural", {}, torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.int64))
    assert len(key.queries) == n


def test_a_header_of_exactly_max_queries_is_read_on(tmp_path, sparse_safetensors):
    n = keys.MAX_QUERIES
    header = {"__metadata__": {}, "queries": {"dtype": "F32", "shape": [n, 1, 1, 1], "data_offsets": [0, 4 * n]}}
    sparse_safetensors(tmp_path / "k", header, 4 * n + 1)  # one byte more than the header describes
    with pytest.raises(KeyFileError, match="tensor data is"):
        keys.load(tmp_path / "k", secret=None, allow_unsigned=True)


def test_query_counts_are_bounded_by_what_a_key_holds():
    keys.check_query_count(1, "n")
    keys.check_query_count(keys.MAX_QUERIES, "n")
    keys.check_query_count(keys.MAX_QUERIES // 2, "n_pairs", queries_each=2)
    for n, each in [(0, 1), (keys.MAX_QUERIES + 1, 1), (keys.MAX_QUERIES // 2 + 1, 2), (True, 1), (2.0, 1)]:
        with pytest.raises(ArgumentError, match=rf"n must be an integer in \[1, {keys.MAX_QUERIES // each}\] "):
            keys.check_query_count(n, "n", queries_each=each)


def test_a_shortfall_is_noted_only_when_fewer_are_kept():
    assert keys.note_shortfall({"a": 1}, 10, 7, "why") == {"a": 1, keys.SHORTFALL: {"asked": 10, "kept": 7, "why": "why"}}
    assert keys.note_shortfall({}, 10, 10, "why") == {}


def _unsigned(path, **edits):
    keys.save(make_key(), path, secret=None)
    if edits:
        rewrite(path, **edits)
    return path


@pytest.mark.parametrize("edits, match", [
    (dict(edit_metadata=lambda m: m.update({"nnmark.key": "{"})), "^key metadata is not valid JSON"),
    (dict(edit_metadata=lambda m: m.update({"nnmark.key": "[1]"})), "^unknown key file format None$"),
    (dict(edit_metadata=lambda m: m.update({"other": "x"})), "^not an nnmark key file: metadata keys are"),
    (dict(edit_metadata=set_info(format=2)), "^key file format 2 was written by a newer nnmark"),
    (dict(edit_metadata=set_info(surprise=1)), r"^key metadata has fields \["),
    (dict(edit_records=lambda rs: [r for r in rs if r.name != "queries"]), "^key file lacks the 'queries'"),
    (dict(edit_records=lambda rs: rs + [keys._tensor_record("bogus", torch.zeros(1))]),
     "^unexpected tensor 'bogus' in key file$"),
])
def test_refused_key_files_say_why(tmp_path, edits, match):
    path = _unsigned(tmp_path / "k", **edits)
    with pytest.raises(KeyFileError, match=match.replace("^", "^" + str(path) + ": ")):
        keys.load(path, secret=None, allow_unsigned=True)


def test_broken_framing_says_why(tmp_path):
    data = _unsigned(tmp_path / "k").read_bytes()
    length = int.from_bytes(data[:8], "little")
    spaced = json.dumps(json.loads(data[8:8 + length])).encode()  # ", " and ": " separators
    spaced += b" " * (-len(spaced) % 8)
    cases = {
        "header is not in canonical form": len(spaced).to_bytes(8, "little") + spaced + data[8 + length:],
        "bad header entry for tensor 'extra.sources'": data.replace(b'"dtype":"F32"', b'"dtype":"Q99"'),
        "header holds non-ASCII names": data.replace(b'"queries"', b'"quer\xc3\xa9s"'),
        "header has no ASCII string metadata": data.replace(b'"__metadata__"', b'"__metadata_x"'),
        "header length": b"\xff" * 8 + data[8:],
    }
    for reason, content in cases.items():
        (tmp_path / "bad").write_bytes(content)
        with pytest.raises(KeyFileError, match=f"truncated or corrupt: {reason}"):
            keys.load(tmp_path / "bad", secret=None, allow_unsigned=True)


def test_signature_refusals_say_why(tmp_path, signed):
    with pytest.raises(SignatureError, match=r"unsigned; accept it explicitly \(--unsigned, or allow_unsigned=True\)$"):
        keys.load_digested(_unsigned(tmp_path / "u"), secret=None)
    with pytest.raises(SignatureError, match="the secret must be non-empty bytes$"):
        keys.load_digested(tmp_path / "u", secret=b"", allow_unsigned=True)
    with pytest.raises(SignatureError, match="signature does not match: the file was altered or the secret is wrong$"):
        keys.load(signed, secret=SECRET + b"!")
    long = "hmac-sha256:" + "ab" * 40
    rewrite(signed, edit_metadata=lambda m: m.update({"nnmark.signature": long}))
    with pytest.raises(SignatureError, match=f"malformed signature {long[:40]!r}$"):
        keys.load(signed, secret=SECRET)


def test_unreadable_paths_name_the_system_reason(tmp_path):
    with pytest.raises(KeyFileError, match=f"^{tmp_path}: cannot read key file: Is a directory$"):
        keys.load(tmp_path, secret=SECRET)
    with pytest.raises(SignatureError, match=f"^{tmp_path}: cannot read secret file: Is a directory$"):
        keys.read_secret(tmp_path)
    with pytest.raises(KeyFileError, match="cannot write key file: No such file or directory$"):
        keys.save(make_key(), tmp_path / "missing" / "k", secret=SECRET)


def test_an_undecodable_secret_variable_keeps_its_bytes():
    assert keys.read_secret(environ={keys.SECRET_ENV: "s\udcff"}) == b"s\xff"  # as os.environ decodes b"s\xff"


def test_created_is_utc_in_any_time_zone(monkeypatch):
    import time
    from datetime import datetime, timezone

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        stamp = datetime.strptime(keys.now_utc(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_file_that_shrinks_while_read_is_refused(tmp_path):
    data = _unsigned(tmp_path / "k").read_bytes()
    with pytest.raises(KeyFileError, match="^key file is truncated or corrupt: the file ended before its tensor data$"):
        keys._decode(io.BytesIO(data[:-1]), len(data))  # the size taken before the read, one byte more than is left
