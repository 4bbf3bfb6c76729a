"""``EndpointSpec``, ``resolve`` against metadata, the wire transforms, the OIP v2 codec and bearer tokens."""

import numpy as np
import pytest
import torch

from nnmark.errors import ArgumentError, EndpointError, InputError
from nnmark.oracles import oip
from nnmark.oracles.auth import read_clients, read_token
from nnmark.oracles.endpoint import (
    IMAGENET, NO_NORMALIZATION, EndpointSpec, parse_normalize, read_answer, redact_url, resolve, to_wire,
)

URL = "http://127.0.0.1:8000"


def meta(in_shape=(-1, 1, 28, 28), in_dtype="FP32", outputs=None, **params) -> dict:
    outputs = outputs if outputs is not None else [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    return {"name": "m", "inputs": [{"name": "x", "datatype": in_dtype, "shape": list(in_shape)}], "outputs": outputs,
            **({"parameters": params} if params else {})}


def test_parse_normalize_and_its_refusals():
    assert parse_normalize("none") == NO_NORMALIZATION
    assert parse_normalize(" ImageNet ") == IMAGENET
    assert parse_normalize("0.1307,0.3081") == ((0.1307,), (0.3081,))
    assert parse_normalize("0.5,0.4,0.3,0.2,0.2,0.2") == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    for bad in ("0.5", "1,2,3", "0.5,0", "a,b", "nan,1"):
        with pytest.raises(ArgumentError, match="normalize"):
            parse_normalize(bad)


def test_spec_reads_the_transport_from_the_url_and_refuses_routes_and_bad_values():
    assert EndpointSpec(URL + "/").transport == "rest"
    assert EndpointSpec("grpc://127.0.0.1:8001").transport == "grpc"
    assert EndpointSpec(URL, transport="rest-binary").url == URL
    with pytest.raises(EndpointError, match=r"is a route, not the server's base URL: use 'http://h:8000'"):
        EndpointSpec("http://h:8000/v2/models/model")
    with pytest.raises(EndpointError, match=r"use 'http://\*\*\*@h:8000/prefix'"):
        EndpointSpec("http://u:pw@h:8000/prefix/v2/models/m/infer")
    with pytest.raises(EndpointError, match="does not fit the URL"):
        EndpointSpec(URL, transport="grpc")
    with pytest.raises(EndpointError, match="http\\(s\\)://host"):
        EndpointSpec("ftp://example.org")
    with pytest.raises(ArgumentError, match="layout"):
        EndpointSpec(URL, layout="CHW")
    with pytest.raises(ArgumentError, match="UINT8"):
        EndpointSpec(URL, input_dtype="UINT8", normalize=IMAGENET)
    with pytest.raises(ArgumentError, match="timeout"):
        EndpointSpec(URL, timeout=0)


@pytest.mark.parametrize("field, value, good", [
    ("timeout", float("inf"), 2.5), ("timeout", float("nan"), 2.5), ("timeout", -1.0, 2.5),
    ("backoff", float("inf"), 2.5), ("backoff", float("nan"), 0), ("consistency_atol", float("nan"), 0),
    ("batch_size", 2.5, 2), ("batch_size", True, 2), ("max_answer_bytes", float("inf"), 1000),
])
def test_spec_refuses_non_finite_timings_and_non_integer_sizes(field, value, good):
    with pytest.raises(ArgumentError, match=field):
        EndpointSpec(URL, **{field: value})
    assert getattr(EndpointSpec(URL, **{field: good}), field) == good


def test_urls_are_shown_without_userinfo():
    assert redact_url("http://alice:s3cret@h:8000/p") == "http://***@h:8000/p"
    assert redact_url(URL) == URL
    with pytest.raises(EndpointError) as e:
        EndpointSpec("gopher://alice:s3cret@h")
    assert "s3cret" not in str(e.value)


def test_resolve_fills_the_spec_from_the_metadata():
    ep = resolve(EndpointSpec(URL), meta(**{"max_batch_size": 8}))
    s = ep.spec
    assert (s.input_name, s.layout, s.input_dtype, s.normalize, s.output_name, s.output_kind, s.label_name) == (
        "x", "NCHW", "FP32", NO_NORMALIZATION, "probabilities", "probabilities", None)
    assert (ep.input_shape, ep.num_classes, ep.batch_limit, ep.access) == ((1, 28, 28), 10, 8, "probabilities")
    nhwc = resolve(EndpointSpec(URL), meta(in_shape=(-1, 28, 28, 1), in_dtype="UINT8"))
    assert (nhwc.spec.layout, nhwc.spec.input_dtype, nhwc.input_shape) == ("NHWC", "UINT8", (1, 28, 28))
    logits = resolve(EndpointSpec(URL, output_name="output__0", output_kind="logits", batch_size=4),
                     meta(outputs=[{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]},
                                   {"name": "label", "datatype": "INT64", "shape": [-1, 1]}], max_batch_size=16))
    assert (logits.spec.output_kind, logits.spec.label_name, logits.batch_limit) == ("logits", "label", 4)
    labels = resolve(EndpointSpec(URL, output_kind="labels"),
                     meta(outputs=[{"name": "label", "datatype": "INT64", "shape": [-1, 1]}]), num_classes=10)
    assert (labels.spec.output_name, labels.access, labels.outputs) == ("label", "labels", ["label"])
    dynamic = resolve(EndpointSpec(URL), meta(in_shape=(-1, 3, -1, -1)), input_shape=(3, 32, 32))
    assert dynamic.input_shape == (3, 32, 32)


@pytest.mark.parametrize("spec, metadata, hints, message", [
    (EndpointSpec(URL, layout="NCHW"), meta(in_shape=(-1, 28, 28, 1)), {}, "metadata says NHWC, --layout says NCHW"),
    (EndpointSpec(URL, input_dtype="FP32"), meta(in_dtype="UINT8"), {}, "metadata says UINT8, --input-dtype says FP32"),
    (EndpointSpec(URL, normalize=IMAGENET), meta(normalize="none"), {}, "metadata says none, --normalize says 0.485"),
    (EndpointSpec(URL), meta(in_dtype="INT64"), {}, "nnmark sends FP32, FP16, UINT8"),
    (EndpointSpec(URL, input_name="images"), meta(), {}, "no input 'images'; it lists 'x'"),
    (EndpointSpec(URL), meta(outputs=[{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]}]), {},
     "pass --output-name and --output-kind"),
    (EndpointSpec(URL, output_name="output__0"),
     meta(outputs=[{"name": "output__0", "datatype": "FP32", "shape": [-1, 10]}]), {}, "pass --output-kind"),
    (EndpointSpec(URL), meta(), {"input_shape": (3, 32, 32)}, "the key's queries are (3, 32, 32)"),
    (EndpointSpec(URL), meta(), {"num_classes": 100}, "metadata says 10, --num-classes says 100"),
    (EndpointSpec(URL, output_kind="labels"), meta(outputs=[{"name": "label", "datatype": "INT64", "shape": [-1]}]), {},
     "number of classes"),
    (EndpointSpec(URL, output_kind="labels"), meta(outputs=[{"name": "label", "datatype": "FP32", "shape": [-1]}]),
     {"num_classes": 10}, "integer tensor [N] or [N, 1]"),
    (EndpointSpec(URL, normalize=IMAGENET), meta(), {}, "3 channel values, the inputs have 1 channels"),
])
def test_resolve_refuses_contradictions_in_one_line(spec, metadata, hints, message):
    with pytest.raises(EndpointError, match="^[^\n]*$") as e:
        resolve(spec, metadata, **hints)
    assert message in str(e.value)


@pytest.mark.parametrize("max_batch_size, first, limit", [
    (None, -1, None), (1, -1, 1), (2**31 - 1, -1, 2**31 - 1), (16, 1, 16),
    (0, -1, None),  # Triton: the server adds no batch dimension; the model's own first one is variable
    (0, 1, 1),  # ... or takes one input at a time
])
def test_resolve_reads_max_batch_size_and_zero_as_triton_does(max_batch_size, first, limit):
    params = {} if max_batch_size is None else {"max_batch_size": max_batch_size}
    assert resolve(EndpointSpec(URL), meta(in_shape=(first, 1, 28, 28), **params)).batch_limit == limit


@pytest.mark.parametrize("max_batch_size, first, message", [
    (-1, -1, "got -1"), (2**31, -1, "got 2147483648"), (1e12, -1, "got 1000000000000.0"), ("abc", -1, "got 'abc'"),
    (True, -1, "got True"), (16.0, -1, "got 16.0"), ([16], -1, "got [16]"),
    (0, 8, "takes exactly 8 inputs per request"), (0, 0, "takes exactly 0 inputs per request"),
])
def test_resolve_refuses_a_bad_max_batch_size_in_one_line(max_batch_size, first, message):
    with pytest.raises(EndpointError, match="^[^\n]*max_batch_size[^\n]*$") as e:
        resolve(EndpointSpec(URL), meta(in_shape=(first, 1, 28, 28), max_batch_size=max_batch_size))
    assert message in str(e.value)


def test_to_wire_normalises_transposes_and_casts_in_one_place():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, generator=g)
    base = EndpointSpec(URL)
    three = meta(in_shape=(-1, 3, 4, 5))
    exact = to_wire(x, resolve(base, three))
    assert exact.dtype == np.float32 and np.array_equal(exact, x.numpy())
    nhwc = to_wire(x, resolve(EndpointSpec(URL, layout="NHWC"), meta(in_shape=(-1, 4, 5, 3))))
    assert nhwc.shape == (2, 4, 5, 3) and np.array_equal(nhwc, x.permute(0, 2, 3, 1).numpy())
    norm = to_wire(x, resolve(EndpointSpec(URL, normalize=IMAGENET), three))
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in IMAGENET)
    want = ((x.double() - mean) / std).float()
    assert np.array_equal(norm, want.numpy())
    uint8 = resolve(base, meta(in_shape=(-1, 1, 2, 2), in_dtype="UINT8"))
    pixels = to_wire(torch.tensor([0.0, 128 / 255, 1 / 255, 1.0]).view(1, 1, 2, 2), uint8)
    assert pixels.dtype == np.uint8 and pixels.reshape(-1).tolist() == [0, 128, 1, 255]
    with pytest.raises(InputError, match="not 8-bit images"):  # never rounded into another question
        to_wire(torch.tensor([0.0, 0.5, 1 / 255, 1.0]).view(1, 1, 2, 2), uint8)
    half = to_wire(x, resolve(base, meta(in_shape=(-1, 3, 4, 5), in_dtype="FP16")))
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - x.numpy()).max() < 1e-3


def test_read_answer_softmaxes_logits_in_float64_and_checks_labels():
    z = np.array([[1000.0, 0.0, -5.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    ep = resolve(EndpointSpec(URL, output_kind="logits"),
                 meta(outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]))
    p, y = read_answer({"logits": z}, 2, ep)
    assert p.dtype == torch.float32 and torch.equal(p, torch.softmax(torch.from_numpy(z).double(), 1).float())
    assert y.tolist() == [0, 2]
    labelled = resolve(EndpointSpec(URL, output_kind="labels"),
                       meta(outputs=[{"name": "label", "datatype": "INT64", "shape": [-1, 1]}]), num_classes=3)
    p, y = read_answer({"label": np.array([[2], [0]])}, 2, labelled)
    assert p is None and y.tolist() == [2, 0]
    for bad in (np.array([[3], [0]]), np.array([2.0, 0.0]), np.array([1, 2, 0])):
        with pytest.raises(EndpointError, match="malformed labels"):
            read_answer({"label": bad}, 2, labelled)
    probs = resolve(EndpointSpec(URL), meta(outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]))
    with pytest.raises(EndpointError, match="a row's sum"):
        read_answer({"probabilities": np.full((2, 3), 0.2, np.float32)}, 2, probs)
    with pytest.raises(EndpointError, match="no output named 'probabilities'"):
        read_answer({}, 2, probs)


def test_codec_round_trips_json_and_binary_tensors_bit_for_bit():
    g = np.random.default_rng(0)
    arrays = {"a": g.random((2, 3), dtype=np.float32), "b": np.array([[1], [-2]], np.int64),
              "c": g.random(4).astype(np.float16), "d": np.array([0, 255], np.uint8), "e": g.random(2)}
    for binary in (set(), {"a", "c", "e"}, set(arrays)):
        objs, data = oip.write_tensors(arrays, binary)
        body, headers = oip.pack({"outputs": objs}, data)
        _, back = oip.decode_response(body, headers.get(oip.HEADER_LENGTH))
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype and np.array_equal(back[name], array), (binary, name)


def test_request_codec_reads_nested_data_binary_flags_and_the_id():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 8
    body, headers = oip.encode_request({"input": x}, ["probabilities", "label"], request_id="r-1", binary=True)
    req = oip.decode_request(body, headers[oip.HEADER_LENGTH])
    assert req.id == "r-1" and req.wants_binary("label") and np.array_equal(req.inputs["input"], x)
    nested = oip.dumps({"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32", "data": x.tolist()}]})
    req = oip.decode_request(nested, None)
    assert req.outputs is None and not req.wants_binary("label") and np.array_equal(req.inputs["input"], x)


@pytest.mark.parametrize("body, header_length, message", [
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e999]}]}', None,
     "non-finite or overflow FP32"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [' + b"9" * 400 + b"]}]}", None,
     "400 digits"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', None, "non-finite"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1e300]}]}', None, "overflow FP32"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}', None, "outside [-128, 127]"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [true, 0.5]}]}', None, "only numbers"),
    (b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]}', None, "nested data"),
    ((b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}',
      b"\x00\x00\x80?!"), "split", "1 bytes of binary data belong to no tensor"),
    ((b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}',
      b"\x00\x00\x80?"), "split", "do not fit its shape"),
    (b'{"inputs": []}', "999", "does not fit a body"),
    (b'{"inputs": []}', "\u00b2", "does not fit a body"),  # str.isdigit takes it, int does not
    (b'{"inputs": []}', "\uff11", "does not fit a body"),  # a full-width 1: int takes it, HTTP does not
    (b'{"inputs": []}', "9" * 5000, "does not fit a body"),  # beyond int's 4300-digit limit
    (b'{"inputs": []}', "-0", "does not fit a body"),
    (b'{"inputs": [{"name": "x", "shape": [0, 4611686018427387904, 4611686018427387904], "datatype": "FP32", '
     b'"data": []}]}', None, "holds more values than its message of 115 bytes can"),
    ((b'{"inputs": [{"name": "x", "shape": [0, 4611686018427387904, 4611686018427387904], "datatype": "FP32", '
      b'"parameters": {"binary_data_size": 0}}]}', b""), "split", "holds more values than its message"),
    (b'{"inputs": [{"name": "x", "shape": [-1, 2], "datatype": "FP32", "data": [0.5, 0.5]}]}', None, "sizes >= 0"),
    (b'{"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [0.5, 0.5]}]}', None,
     "has 2 values, its shape [3, 2] needs 6"),
    (b'{"inputs": [], "id": 7}', None, "'id' must be a string"),
])
def test_codec_refuses_malformed_messages_in_one_line(body, header_length, message):
    if header_length == "split":
        header_length, body = str(len(body[0])), body[0] + body[1]
    with pytest.raises(oip.MalformedMessage) as e:
        oip.decode_request(body, header_length)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_length_headers_and_shape_bounds():
    assert [oip.parse_length(t) for t in ("0", "17", "9" * 18)] == [0, 17, 10**18 - 1]
    for bad in ("", "-1", "+1", " 1", "1.0", "\u00b2", "\u0663", "\uff11", "9" * 19):
        assert oip.parse_length(bad) is None, bad
    assert oip.check_shape([2, 0, 3], "t", 6) == [2, 0, 3]  # a 0 counts as 1: 2 * 1 * 3 = 6
    assert oip.check_shape([], "t", 1) == []
    for shape, most in (([2, 0, 3], 5), ([7], 6), ([0, 2**62, 2**62], 10**9), ([2**32, 2**32, 1, 1], 10**9)):
        with pytest.raises(oip.MalformedMessage, match="holds more values than its message"):
            oip.check_shape(shape, "t", most)


def test_a_clients_file_gives_each_named_client_its_token_and_refuses_without_echo(tmp_path):
    f = tmp_path / "clients"
    f.write_bytes(b"# NAME TOKEN\n\nalice  tok-a1\r\nbob.2\ttok b2 \n")
    assert read_clients(f) == {"alice": b"tok-a1", "bob.2": b"tok b2"}
    for text, fragment in (
            (b"alice tok-a1\nalice tok-a2\n", "line 2: client 'alice' is named twice"),
            (b"alice tok-a1\nbob tok-a1\n", "line 2: client 'bob' has the token of another client"),
            (b"alice\n", "line 1: expected NAME TOKEN"),
            (b"-alice tok-a1\n", "line 1: a client name"),
            (b"al/ice tok-a1\n", "line 1: a client name"),
            (b"alice tok-\x01a1\n", "line 1's token holds a character"),
            (b"# nobody\n\n", "names no client")):
        f.write_bytes(text)
        with pytest.raises(EndpointError, match=fragment) as e:
            read_clients(f)
        assert "tok-" not in str(e.value).replace(str(f), "")
    with pytest.raises(EndpointError, match="cannot read clients file"):
        read_clients(tmp_path / "missing")
    f.write_bytes(b"a" * (1 << 20) + b" t\n")
    with pytest.raises(EndpointError, match="larger than"):
        read_clients(f)


def test_tokens_are_read_stripped_and_refused_without_echo(tmp_path):
    f = tmp_path / "token"
    f.write_bytes(b"  s3cret-tok \n")
    assert read_token(f) == b"s3cret-tok"
    assert read_token(None, {"NNMARK_TOKEN": " env-tok\n"}) == b"env-tok"
    assert read_token(None, {}) is None
    for bad in (b"s3cret\ntok", "s3cr\u00e9t".encode(), b"s3cret\x00"):
        f.write_bytes(bad)
        with pytest.raises(EndpointError, match="HTTP header cannot carry") as e:
            read_token(f)
        assert "s3cr" not in str(e.value).replace(str(f), "")
    with pytest.raises(EndpointError, match="NNMARK_TOKEN holds"):
        read_token(None, {"NNMARK_TOKEN": "tok\u00e9n"})
