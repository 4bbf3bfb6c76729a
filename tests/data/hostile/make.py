"""How the hostile model files here were built; run from the repository root to rebuild them:
``python tests/data/hostile/make.py`` (torch 2.13, onnx 1.23: the archives' bytes depend on their writers).

Each file is a small model for the 1x8x8, 10-class key in tests/data/keys (a flatten + linear net), saved by
torch or onnx and then changed in one hostile way. Every pickle payload, if it were ever unpickled by Python,
would write the file MARKER in the current directory (``PAYLOAD``); tests/test_hostile.py runs nnmark on each
file from a fresh directory and checks that the marker never appears. ``CASES`` says, per file, what it holds.
"""

from __future__ import annotations

import json
import pickle
import struct
import sys
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
MARKER = "HOSTILE_PAYLOAD_RAN"
CODE = f"open({MARKER!r}, 'w').write('ran')"
SHAPE, CLASSES = (1, 8, 8), 10


class Payload:
    """Unpickled by Python, it runs CODE (writes MARKER in the current directory)."""

    def __reduce__(self):
        return exec, (CODE,)


PAYLOAD = pickle.dumps(Payload(), protocol=2)


def _net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SHAPE[0] * SHAPE[1] * SHAPE[2], CLASSES)).eval()


def base_torchscript() -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_net()), buffer)
    return buffer.getvalue()


def base_export() -> bytes:
    """The net as a torch.export archive, its nodes' stack traces dropped (they name this machine's paths)."""
    import io

    import torch

    program = torch.export.export(_net(), (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    items = entries(buffer.getvalue())
    graph = next(json.loads(b) for n, b in items if n.endswith("models/model.json"))
    for node in graph["graph_module"]["graph"]["nodes"]:
        node["metadata"].pop("stack_trace", None)
    return rezip(replaced(items, "models/model.json", json.dumps(graph).encode()))


def base_onnx():
    """The net as an onnx.ModelProto (TorchScript-based exporter, weights inside)."""
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_net(), (torch.zeros(1, *SHAPE),), buffer, dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


def entries(archive: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(_io(archive)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _io(data: bytes):
    import io

    return io.BytesIO(data)


def rezip(items: list[tuple[str, bytes]], compress: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of ``items`` in order, duplicates kept (zipfile warns about them)."""
    buffer = _io(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with zipfile.ZipFile(buffer, "w", compress) as z:
            for name, body in items:
                z.writestr(name, body)
    return buffer.getvalue()


def replaced(items: list[tuple[str, bytes]], suffix: str, body: bytes) -> list[tuple[str, bytes]]:
    return [(n, body if n.endswith(suffix) else b) for n, b in items]


def _pickled(path_name: str, use_pickle: bool = True) -> dict:
    return {"path_name": path_name, "is_param": False, "use_pickle": use_pickle, "tensor_meta": None}


def duplicate_config(first_bad: bool) -> bytes:
    """Two constants configs, the bad one naming a pickled opaque object (torch unpickles it with pickle.loads).

    zipfile reads the last of two equal names; torch's reader (miniz) binary-searches its sorted directory, so which
    one it takes depends on the entries around them: with two padding entries it takes the first, so the bad-first
    file passed the old check (which read the last, good one) and ran the payload.
    """
    items = entries(base_export())
    root = items[0][0].split("/")[0]
    name = f"{root}/data/constants/model_constants_config.json"
    bad = json.dumps({"config": {"evil": _pickled("opaque_obj_0")}}).encode()
    good = dict(items)[name]
    rest = [(n, b) for n, b in items if n != name]
    pair = [(name, bad), (name, good)] if first_bad else [(name, good), (name, bad)]
    pads = [(f"{root}/extra/pad{i}", b"") for i in range(2 if first_bad else 0)]
    return rezip(pair + rest + pads + [(f"{root}/data/constants/opaque_obj_0", PAYLOAD)])


def case_duplicate_name() -> bytes:
    """Two TorchScript data.pkl entries whose names differ only in case (miniz's lookup ignores case)."""
    items = entries(base_torchscript())
    return rezip([(items[0][0].split("/")[0] + "/DATA.PKL", PAYLOAD)] + items)


def export_slot(which: str, path_name: str, use_pickle: bool = True, payload: bool = True) -> bytes:
    """The export archive whose ``which`` config names only ``path_name`` (and holds PAYLOAD there if ``payload``)."""
    items = entries(base_export())
    root = items[0][0].split("/")[0]
    config = json.dumps({"config": {"evil": _pickled(path_name, use_pickle)}}).encode()
    items = replaced(items, f"model_{which}_config.json", config)
    return rezip(items + ([(f"{root}/data/{which}/{path_name}", PAYLOAD)] if payload else []))


def export_extra_entry(name: str, body: bytes = PAYLOAD) -> bytes:
    items = entries(base_export())
    root = items[0][0].split("/")[0]
    return rezip(items + [(f"{root}/{name}", body)])


def export_graph(change) -> bytes:
    """The export archive with its graph JSON changed by ``change(graph)``."""
    items = entries(base_export())
    graph = next(json.loads(b) for n, b in items if n.endswith("models/model.json"))
    change(graph)
    return rezip(replaced(items, "models/model.json", json.dumps(graph).encode()))


def _sympy_injection(graph) -> None:
    size = graph["graph_module"]["graph"]["tensor_values"]["input"]["sizes"][0]["as_expr"]
    size["expr_str"] = f"exec({CODE!r}) or " + size["expr_str"]


def _target_injection(graph) -> None:
    graph["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def export_huge_empty_weight() -> bytes:
    """A weight whose file is empty but whose declared shape is 2^40 floats (torch would fill it with zeros)."""
    items = entries(base_export())
    name = next(n for n, _ in items if n.endswith("model_weights_config.json"))
    config = json.loads(dict(items)[name])
    meta = config["config"]["1.weight"]["tensor_meta"]
    meta["sizes"] = [{"as_int": 2**20}, {"as_int": 2**20}]
    meta["strides"] = [{"as_int": 2**20}, {"as_int": 1}]
    path = config["config"]["1.weight"]["path_name"]
    items = [(n, b"" if n.endswith("/" + path) else b) for n, b in items]
    return rezip(replaced(items, "model_weights_config.json", json.dumps(config).encode()))


def export_huge_strided_weight() -> bytes:
    """A weight declaring 2^40 floats over its 2,560 bytes (torch refuses it, and logs a traceback as it does)."""
    items = entries(base_export())
    name = next(n for n, _ in items if n.endswith("model_weights_config.json"))
    config = json.loads(dict(items)[name])
    meta = config["config"]["1.weight"]["tensor_meta"]
    meta["sizes"] = [{"as_int": 2**20}, {"as_int": 2**20}]
    meta["strides"] = [{"as_int": 2**20}, {"as_int": 1}]
    return rezip(replaced(items, "model_weights_config.json", json.dumps(config).encode()))


def torchscript_slot(slot: str) -> bytes:
    return rezip(replaced(entries(base_torchscript()), "/" + slot, PAYLOAD))


def traversal(name: str) -> bytes:
    items = entries(base_torchscript())
    return rezip(items + [(name, PAYLOAD)])


def zip_bomb() -> bytes:
    """A TorchScript archive with one more entry: 2 MB of zeros deflated to about 2 KB."""
    items = entries(base_torchscript())
    root = items[0][0].split("/")[0]
    buffer = _io(b"")
    with zipfile.ZipFile(buffer, "w") as z:
        for name, body in items:
            z.writestr(name, body)
        z.writestr(f"{root}/extra/bomb", bytes(2_000_000), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


def lying_size() -> bytes:
    """A stored entry whose central directory declares 2^32 - 2 bytes (4 GB) for its 4 real ones."""
    data = bytearray(rezip(entries(base_torchscript())))
    start = zipfile.ZipFile(_io(bytes(data))).start_dir
    at = data.index(b"PK\x01\x02", start)  # the first central directory entry
    struct.pack_into("<L", data, at + 24, 0xFFFFFFFE)  # its uncompressed size
    return bytes(data)


def prepended() -> bytes:
    """Bytes before the archive (zipfile shifts its offsets by them, torch's reader does not)."""
    return b"\0" * 64 + rezip(entries(base_torchscript()))


def onnx_external(location: str) -> bytes:
    """The ONNX net with its weight kept in ``location`` (external data)."""
    from onnx import TensorProto

    model = base_onnx()
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * CLASSES * 64))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def invalid_onnx() -> bytes:
    model = base_onnx()
    model.graph.node[-1].op_type = "NoSuchOperator"
    return model.SerializeToString()


def safetensors_huge_shape() -> bytes:
    """An nnmark checkpoint header declaring a [2^40, 2^40] float tensor in 16 bytes."""
    config = {"arch": "lenet5", "input_shape": list(SHAPE), "num_classes": CLASSES, "width": 0.25}
    header = {"__metadata__": {"nnmark.model": json.dumps(config)},
              "conv1.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(16)


def weights_huge_shape() -> bytes:
    """Factory weights whose header declares a [2^40, 2^40] float tensor in 16 bytes."""
    header = {"1.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(16)


CASES: dict[str, tuple[str, object]] = {
    # archives: entries the two readers could see differently
    "pt2-duplicate-config-bad-first.pt2": ("two constants configs, the first naming a pickled opaque object",
                                           lambda: duplicate_config(True)),
    "pt2-duplicate-config-bad-last.pt2": ("two constants configs, the last naming a pickled opaque object",
                                          lambda: duplicate_config(False)),
    "ts-duplicate-name-case.pt": ("a TorchScript archive with DATA.PKL before data.pkl", case_duplicate_name),
    "ts-traversal.pt": ("an entry named ../escape.pkl", lambda: traversal("../escape.pkl")),
    "ts-absolute-name.pt": ("an entry named /tmp/escape.pkl", lambda: traversal("/tmp/escape.pkl")),
    "ts-outside-root.pt": ("an entry outside the archive's top folder", lambda: traversal("other/data.pkl")),
    "ts-prepended-bytes.pt": ("64 bytes before the archive", prepended),
    "ts-zip-bomb.pt": ("2 MB of zeros deflated into one entry", zip_bomb),
    "ts-lying-size.pt": ("a stored entry declaring 4 GB", lying_size),
    "onnx-invalid-graph.onnx": ("an operator ONNX Runtime does not know (it logs its own error lines)",
                                invalid_onnx),
    # pickle in every slot
    "ts-data-pkl.pt": ("data.pkl replaced by the payload", lambda: torchscript_slot("data.pkl")),
    "ts-constants-pkl.pt": ("constants.pkl replaced by the payload", lambda: torchscript_slot("constants.pkl")),
    "pt2-pickled-weight.pt2": ("a weight with use_pickle", lambda: export_slot("weights", "weight_9")),
    "pt2-pickled-constant.pt2": ("a tensor constant with use_pickle", lambda: export_slot("constants", "tensor_0")),
    "pt2-custom-object.pt2": ("a custom (torchbind) object constant", lambda: export_slot("constants", "custom_obj_0")),
    "pt2-opaque-object.pt2": ("an opaque object constant (pickle.loads)",
                              lambda: export_slot("constants", "opaque_obj_0")),
    "pt2-opaque-config.pt2": ("a config naming an opaque object without use_pickle (its file left out)",
                              lambda: export_slot("constants", "opaque_obj_0", use_pickle=False, payload=False)),
    "pt2-legacy-weights.pt2": ("a legacy pickled weights file", lambda: export_extra_entry("data/weights/model.pt")),
    "pt2-sample-inputs.pt2": ("the sample inputs replaced by the payload",
                              lambda: rezip(replaced(entries(base_export()), "sample_inputs/model.pt", PAYLOAD))),
    "pt2-aotinductor.pt2": ("an AOTInductor package entry (a shared library torch would load)",
                            lambda: export_extra_entry("data/aotinductor/model/model.so")),
    # the graph JSON: strings torch would run
    "pt2-sympy-expression.pt2": ("a shape expression that sympy would eval", lambda: export_graph(_sympy_injection)),
    "pt2-node-target.pt2": ("a node target resolving to os.system", lambda: export_graph(_target_injection)),
    # enormous declared shapes
    "pt2-huge-empty-weight.pt2": ("an empty weight file declaring 2^40 floats", export_huge_empty_weight),
    "pt2-huge-strided-weight.pt2": ("a weight file declaring 2^40 floats in its 2,560 bytes",
                                    export_huge_strided_weight),
    "ckpt-huge-shape.safetensors": ("a checkpoint header declaring a 2^80-element tensor", safetensors_huge_shape),
    "weights-huge-shape.safetensors": ("factory weights declaring a 2^80-element tensor", weights_huge_shape),
    # ONNX external data
    "onnx-external-relative.onnx": ("weights in private/key.bin (present in the working directory only)",
                                    lambda: onnx_external("private/key.bin")),
    "onnx-external-absolute.onnx": ("weights in /etc/passwd", lambda: onnx_external("/etc/passwd")),
    "onnx-external-parent.onnx": ("weights in ../key.bin", lambda: onnx_external("../key.bin")),
    "onnx-external-device.onnx": ("weights in /dev/zero", lambda: onnx_external("/dev/zero")),
    "onnx-external-link.onnx": ("weights in link.bin (the test makes it a link to a file outside)",
                                lambda: onnx_external("link.bin")),
}


def main() -> None:
    for name, (_, build) in CASES.items():
        (HERE / name).write_bytes(build())
    print(f"wrote {len(CASES)} files to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
