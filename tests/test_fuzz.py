"""Fuzzing of the two loaders of untrusted files: mutated key files and checkpoints raise only their documented
error types (KeyFileError, ModelError), never anything else. Seeded, with the case count in each test id.
And properties of the OIP v2 message decoders: any shape, data length, binary size or length header decodes
to arrays of the declared shape or raises MalformedMessage (the server's 400), nothing else."""

import json
import math
import os
import random
from collections.abc import Iterator

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nnmark import keys, models
from nnmark.errors import KeyFileError, ModelError

SEED = 13
KEY_CASES = 3000
CHECKPOINT_CASES = 1500
SECRET = b"fuzzing secret"


def mutations(data: bytes, n: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """``n`` seeded mutations of ``data``: (what was done, the mutated bytes), every one different from ``data``.

    Byte flips anywhere or in the header, several flips at once, truncations, appended bytes, and rewritten
    header lengths (small, large, and off by a little).
    """
    rng = random.Random(seed)
    header_end = 8 + int.from_bytes(data[:8], "little")
    kinds = ["flip", "flip header", "flips", "truncate", "append", "length"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        out = bytearray(data)
        if kind in ("flip", "flip header", "flips"):
            end = header_end if kind == "flip header" else len(data)
            for _ in range(rng.randint(2, 8) if kind == "flips" else 1):
                out[rng.randrange(end)] ^= rng.randint(1, 255)
        elif kind == "truncate":
            out = out[: rng.randrange(len(data))]
        elif kind == "append":
            out += rng.randbytes(rng.randint(1, 16))
        else:
            length = rng.choice([rng.randrange(2**64), rng.randrange(64), header_end - 8 + rng.randint(-9, 9)])
            out[:8] = length.to_bytes(8, "little")
        if bytes(out) != data:
            yield f"case {i} ({kind})", bytes(out)


def _cases(path, data: bytes, n: int) -> Iterator[str]:
    """Write each mutation of ``data`` over ``path`` in turn; yield its description."""
    for what, mutated in mutations(data, n, SEED):
        path.write_bytes(mutated)
        yield what


@pytest.mark.parametrize("n", [KEY_CASES], ids=[f"{KEY_CASES}-cases"])
def test_every_mutated_key_file_is_a_key_file_error(tmp_path, n):
    g = torch.Generator().manual_seed(SEED)
    key = keys.KeyFile("dbi", {"eps": 1e-3, "n": 6, "num_classes": 10}, torch.rand(6, 1, 4, 4, generator=g),
                       torch.arange(6), extras={"sources": torch.rand(6, 1, 4, 4, generator=g)})
    path = tmp_path / "key.safetensors"
    keys.save(key, path, secret=SECRET)
    data = path.read_bytes()
    refused = 0
    for what in _cases(path, data, n):
        try:
            keys.load(path, secret=SECRET)
        except KeyFileError:
            refused += 1
        else:
            pytest.fail(f"{what}: a mutated signed key file loaded")
    assert refused >= n * 0.99  # a few mutations can repeat the file exactly and are skipped
    path.write_bytes(data)
    assert torch.equal(keys.load(path, secret=SECRET).queries, key.queries)


@pytest.mark.parametrize("n", [CHECKPOINT_CASES], ids=[f"{CHECKPOINT_CASES}-cases"])
def test_every_mutated_checkpoint_loads_or_is_a_model_error(tmp_path, n):
    """Checkpoints are not signed, so a flipped weight byte loads; anything else must be a ModelError."""
    torch.manual_seed(SEED)
    model = models.build("lenet5", (1, 8, 8), 10, width=0.25)
    path = tmp_path / "m.safetensors"
    models.save(model, models.ModelConfig("lenet5", (1, 8, 8), 10, width=0.25), path)
    data = path.read_bytes()
    outcomes = {"loaded": 0, "refused": 0}
    for what in _cases(path, data, n):
        try:
            loaded, _ = models.load(path)
        except ModelError:
            outcomes["refused"] += 1
        else:
            assert isinstance(loaded, torch.nn.Module), what
            assert "truncate" not in what and "append" not in what, f"{what}: loaded"
            outcomes["loaded"] += 1
    assert outcomes["refused"] > n // 2 and sum(outcomes.values()) >= n * 0.99
    path.write_bytes(data)
    assert models.digest(models.load(path)[0]) == models.digest(model)
    assert os.listdir(tmp_path) == ["m.safetensors"]


DECODER_EXAMPLES = 400
DIMENSION = st.integers(0, 3) | st.integers(-2**64, 2**64) | st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1])
SHAPE = st.lists(DIMENSION, max_size=9)
VALUES = st.integers(0, 40) | st.none()
"""How many values a message holds; None: as many as its shape says, when that is a few."""


def _count(values: int | None, shape: list[int]) -> int:
    fits = all(0 <= s <= 64 for s in shape) and math.prod(shape) <= 64
    return values if values is not None else math.prod(shape) if fits else 0


def _decoded_as_declared(decode, shape: list[int]) -> None:
    """``decode()`` gives one array of ``shape`` or raises MalformedMessage; anything else fails."""
    from nnmark.oracles import oip

    try:
        (array,) = decode().values()
    except oip.MalformedMessage as e:
        assert "\n" not in str(e)
        event("refused")
    else:
        assert array.shape == tuple(shape) and array.size == math.prod(shape)
        event("decoded")


@settings(max_examples=DECODER_EXAMPLES, deadline=None, derandomize=True)
@given(shape=SHAPE, values=VALUES, binary=st.booleans(), size=st.none() | st.integers(-4, 200),
       length=st.none() | st.sampled_from(["\u00b2", "\uff11", "-1", "9" * 5000, ""]) | st.integers(-2, 2))
def test_rest_request_decoder_property(shape, values, binary, size, length):
    from nnmark.oracles import oip

    values = _count(values, shape)
    tensor = {"name": "input", "shape": shape, "datatype": "FP32"}
    if binary:
        tensor["parameters"] = {"binary_data_size": 4 * values if size is None else size}
    else:
        tensor["data"] = [0.5] * values
    header = json.dumps({"inputs": [tensor]}).encode()
    data = b"\0" * (4 * values) if binary else b""
    if type(length) is int:  # off by a little from the true header length
        length = str(len(header) + length)
    elif length is None and binary:
        length = str(len(header))
    _decoded_as_declared(lambda: oip.decode_request(header + data, length).inputs, shape)


@settings(max_examples=DECODER_EXAMPLES, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(0, 3) | st.integers(-2**63, 2**63 - 1), max_size=9), values=VALUES,
       raw=st.none() | st.integers(0, 160) | st.just("fit"))
def test_grpc_tensor_decoder_property(shape, values, raw):
    pytest.importorskip("grpc", reason="needs the grpc extra: pip install 'nnmark[grpc]'")
    from nnmark.oracles import oip_grpc, proto

    values = _count(values, shape)
    request = proto.ModelInferRequest(model_name="m")
    request.inputs.add(name="input", datatype="FP32", shape=shape).contents.fp32_contents.extend([0.5] * values)
    if raw is not None:
        request.raw_input_contents.append(b"\0" * (4 * values if raw == "fit" else raw))
    _decoded_as_declared(lambda: oip_grpc.read_tensors(request.inputs, list(request.raw_input_contents), "inputs",
                                                       request.ByteSize()), shape)
