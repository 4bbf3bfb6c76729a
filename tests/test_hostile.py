"""No model file runs code: the hostile files in tests/data/hostile (built by its make.py) are each refused by the
CLI in one line with exit 2, and no payload runs; the checks behind that, one by one; and controls showing that
the payloads are live and that the same rig loads the legitimate files they were made from."""

import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nnmark.errors import ModelError
from nnmark.models import archive, export_graph, load_any

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

HERE = Path(__file__).parent
HOSTILE = HERE / "data" / "hostile"
KEY, SECRET = HERE / "data" / "keys" / "format1-natural.safetensors", HERE / "data" / "keys" / "secret.txt"
sys.path.insert(0, str(HOSTILE))
import make  # noqa: E402  (tests/data/hostile/make.py: the builders and the payload)

FACTORY = "foreign_models:small_gn_net"
OUTSIDE = b"\x01" * (4 * make.CLASSES * 64)  # the private file the ONNX weights point at, as many bytes as they need
# Each hostile file, and words of the one error line that says why it is refused.
REASONS = {
    "pt2-duplicate-config-bad-first.pt2": "two entries named",
    "pt2-duplicate-config-bad-last.pt2": "two entries named",
    "ts-duplicate-name-case.pt": "two entries named 'archive/data.pkl' (ignoring case)",
    "ts-traversal.pt": "'../escape.pkl' is not a plain path",
    "ts-absolute-name.pt": "'/tmp/escape.pkl' is not a plain path",
    "ts-outside-root.pt": "'other/data.pkl' is not a plain path inside the top folder",
    "ts-prepended-bytes.pt": "its end record declares",
    "ts-zip-bomb.pt": "a zip bomb",
    "ts-lying-size.pt": "declares 4294967294 bytes",
    "onnx-invalid-graph.onnx": "ONNX Runtime cannot load",
    "ts-data-pkl.pt": "cannot load TorchScript archive",
    "ts-constants-pkl.pt": "cannot load TorchScript archive",
    "pt2-pickled-weight.pt2": "pickled payloads",
    "pt2-pickled-constant.pt2": "pickled payloads",
    "pt2-custom-object.pt2": "'data/constants/custom_obj_0', which is not an entry torch.export.save writes",
    "pt2-opaque-object.pt2": "'data/constants/opaque_obj_0', which is not an entry torch.export.save writes",
    "pt2-opaque-config.pt2": "pickled payloads",
    "pt2-legacy-weights.pt2": "'data/weights/model.pt', which is not an entry",
    "pt2-sample-inputs.pt2": "is a pickle, not a torch.save archive",
    "pt2-aotinductor.pt2": "'data/aotinductor/model/model.so', which is not an entry",
    "pt2-sympy-expression.pt2": "shape expression",
    "pt2-node-target.pt2": "node target 'torch.os.system' is not an operator",
    "pt2-huge-empty-weight.pt2": "declares a non-empty tensor but holds no bytes",
    "pt2-huge-strided-weight.pt2": "cannot load torch.export archive",
    "ckpt-huge-shape.safetensors": "its shape declares more than",
    "weights-huge-shape.safetensors": "its shape declares more than",
    "onnx-external-relative.onnx": "'private/key.bin', which cannot be read",
    "onnx-external-absolute.onnx": "'/etc/passwd'; nnmark reads external data only from a plain path",
    "onnx-external-parent.onnx": "'../key.bin'; nnmark reads external data only from a plain path",
    "onnx-external-device.onnx": "'/dev/zero'; nnmark reads external data only from a plain path",
    "onnx-external-link.onnx": "a link leading outside the model's folder",
}


def _nnmark(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``nnmark ARGS`` in a new process (so ONNX Runtime's own writes to stderr are seen too), from ``cwd``."""
    path = os.pathsep.join([str(HERE.parent / "src"), str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "HOME": str(cwd), "NNMARK_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "nnmark", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _placed(name: str, tmp_path: Path) -> tuple[Path, list]:
    """A working directory holding private/key.bin (what the relative ONNX file names), the file copied into a
    models/ folder beside it (with link.bin leading to that private file), and the ``--model`` arguments."""
    work, models = tmp_path / "work", tmp_path / "models"
    (work / "private").mkdir(parents=True)
    models.mkdir()
    (work / "private" / "key.bin").write_bytes(OUTSIDE)
    (tmp_path / "key.bin").write_bytes(OUTSIDE)
    (models / "link.bin").symlink_to(work / "private" / "key.bin")
    model = models / name
    model.write_bytes((HOSTILE / name).read_bytes())
    args = ["--model", FACTORY, "--weights", model] if name.startswith("weights-") else ["--model", model]
    return work, args


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    return lines[0]


def test_every_case_of_make_py_is_committed_and_has_a_reason():
    files = {p.name for p in HOSTILE.iterdir() if p.name != "make.py" and p.suffix != ".pyc" and p.is_file()}
    assert files == set(make.CASES) == set(REASONS)


@pytest.mark.parametrize("name", sorted(REASONS))
def test_a_hostile_model_file_is_refused_in_one_line_and_runs_nothing(name, tmp_path):
    work, model = _placed(name, tmp_path)
    r = _nnmark("verify", KEY, *model, "--secret-file", SECRET, cwd=work)
    assert REASONS[name] in _one_error_line(r)
    assert "Traceback" not in r.stderr and "onnxruntime" not in r.stderr
    assert not (work / make.MARKER).exists()


def test_serve_refuses_the_duplicate_entry_archive_before_serving(tmp_path):
    """serve checks that its port is free (and lets it go) before loading, then refuses the model: it exits with the
    model's error and leaves nothing listening."""
    work, model = _placed("pt2-duplicate-config-bad-first.pt2", tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    r = _nnmark("serve", *model, "--port", port, cwd=work)
    assert "two entries named" in _one_error_line(r)
    assert not (work / make.MARKER).exists()
    with socket.socket() as after:
        assert after.connect_ex(("127.0.0.1", port)) != 0


def test_the_rig_loads_the_legitimate_files_the_hostile_ones_were_made_from(tmp_path):
    """The same key, secret and command on the untouched models give a verdict (exit 0 or 1), not an error."""
    for name, data in (("net.pt", make.base_torchscript()), ("net.pt2", make.base_export()),
                       ("net.onnx", make.base_onnx().SerializeToString())):
        (tmp_path / name).write_bytes(data)
        shape = ["--input-shape", "1,8,8"] if name == "net.pt" else []  # TorchScript says nothing of its input
        r = _nnmark("verify", KEY, "--model", tmp_path / name, *shape, "--secret-file", SECRET, "--json", cwd=tmp_path)
        assert r.returncode in (0, 1), (name, r.stderr)
        assert json.loads(r.stdout)["decision"] in ("intact", "tampered")


def test_the_payloads_are_live(tmp_path, monkeypatch):
    """Unpickled, the payload writes the marker; torch's own loader runs the duplicate-entry archive's pickle and the
    sympy expression (what nnmark loaded before these checks)."""
    monkeypatch.chdir(tmp_path)
    pickle.loads(make.PAYLOAD)
    assert (tmp_path / make.MARKER).exists()
    for name in ("pt2-duplicate-config-bad-first.pt2", "pt2-sympy-expression.pt2"):
        (tmp_path / make.MARKER).unlink()
        try:
            torch.export.load(io.BytesIO((HOSTILE / name).read_bytes()))
        except Exception:  # the duplicate's opaque object is no tensor: torch fails after unpickling it
            pass
        assert (tmp_path / make.MARKER).exists(), name


# the archive check, one refusal at a time ------------------------------------------------------------------------

def _legit() -> bytes:
    return make.rezip(make.entries(make.base_torchscript()))


def _patched(data: bytes, find: bytes, offset: int, fmt: str, value: int, after: int = 0) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, out.index(find, after) + offset, value)
    return bytes(out)


def _central(data: bytes) -> int:
    return zipfile.ZipFile(io.BytesIO(data)).start_dir


def _with(items, compress=zipfile.ZIP_STORED) -> bytes:
    return make.rezip(items, compress)


MUTATIONS = {
    "no entries": (lambda d: _with([]), "no entries"),
    "non-ASCII name": (lambda d: _with(make.entries(d) + [("archive/caf\u00e9", b"")]), "not a plain path"),
    "backslash": (lambda d: _with(make.entries(d) + [("archive/a\\b", b"")]), "not a plain path"),
    "empty part": (lambda d: _with(make.entries(d) + [("archive//x", b"")]), "not a plain path"),
    "dot part": (lambda d: _with(make.entries(d) + [("archive/./x", b"")]), "not a plain path"),
    "name at the root": (lambda d: _with(make.entries(d) + [("version", b"")]), "not a plain path"),
    "comment": (lambda d: d[:-2] + b"\x02\x00hi", "does not end with its end-of-directory record"),
    "entry count": (lambda d: _patched(d, b"PK\x05\x06", 10, "<H", 99), "declares 99 entries"),
    "gap between entries": (lambda d: _gap(d), "is not where the previous entry ends"),
    "local name": (lambda d: _patched(d, b"archive/version", 0, "<B", ord("X")), "names another file"),
    "encrypted": (lambda d: _patched(d, b"PK\x01\x02", 8, "<H", 1, _central(d)), "encrypted"),
    "bzip2": (lambda d: _patched(d, b"PK\x01\x02", 10, "<H", 12, _central(d)), "compressed other than by deflate"),
    "crc": (lambda d: _patched(d, b"PK\x01\x02", 16, "<L", 0, _central(d)), "CRC-32"),
    "deflate longer than declared": (lambda d: _deflate_lie(), "does not hold the"),
    "flatbuffer magic": (lambda d: d[:4] + b"PTMF" + d[8:], "flatbuffer"),
    "ZIP64 record": (lambda d: _patched(make.base_torchscript(), b"PK\x06\x06", 32, "<Q", 99), "ZIP64 end record"),
}


def _gap(data: bytes) -> bytes:
    """The same entries with 40 bytes between the first and the second (offsets fixed up in the directory)."""
    infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    cut = infos[1].header_offset
    out = bytearray(data[:cut] + bytes(40) + data[cut:])
    at = _central(data) + 40  # the directory moved by 40 too
    for _ in infos:
        at = out.index(b"PK\x01\x02", at)
        offset = struct.unpack_from("<L", out, at + 42)[0]
        struct.pack_into("<L", out, at + 42, offset + 40 if offset >= cut else offset)
        at += 46
    end = out.rindex(b"PK\x05\x06")
    struct.pack_into("<L", out, end + 16, struct.unpack_from("<L", out, end + 16)[0] + 40)
    return bytes(out)


def _deflate_lie() -> bytes:
    """An archive whose deflated entry inflates to 100 bytes but declares (and checksums) 10."""
    data = bytearray(_with(make.entries(_legit())[:3] + [("archive/extra/x", bytes(100))], zipfile.ZIP_DEFLATED))
    at = data.index(b"archive/extra/x", _central(bytes(data))) - 46  # its central directory entry
    struct.pack_into("<L", data, at + 16, zlib.crc32(bytes(10)))
    struct.pack_into("<L", data, at + 24, 10)
    return bytes(data)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_archive_check_refuses_what_two_readers_could_read_differently(mutation):
    legit = _legit()
    archive.check("legit.pt", legit, "TorchScript")
    build, words = MUTATIONS[mutation]
    with pytest.raises(ModelError) as e:
        archive.check("x.pt", build(legit), "TorchScript")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_torchs_own_archives_pass_the_check_with_their_descriptors_and_zip64_records():
    for data in (make.base_torchscript(), make.base_export()):
        checked = archive.check("net", data, "torch")
        assert checked.root == "archive" and "byteorder" in checked.names


# the graph of a torch.export archive ----------------------------------------------------------------------------

@pytest.mark.parametrize("expr", ["Symbol('s77', positive=True, integer=True)", "2*s0 + FloorDiv(s1, 2)",
                                  "Max(1, s0) <= s1**2", "-s0 % 3"])
def test_shape_expressions_torch_writes_pass(expr):
    export_graph.check("g", json.dumps({"v": {"expr_str": expr}}).encode())


@pytest.mark.parametrize("expr", ["eval('1')", "Max('s0', 1)", "Symbol('x').__class__", "s0.real", "10**10**10",
                                  "__import__('os')", "(lambda: 1)()", "[1][0]", "Symbol('x', evil=exec)",
                                  "Symbol('x', s0)", "open", "s0(1)", "1" * 30, "x" * 20_000])
def test_shape_expressions_that_could_run_code_or_not_finish_are_refused(expr):
    with pytest.raises(ModelError, match="shape expression"):
        export_graph.check("g", json.dumps({"v": {"expr_str": expr}}).encode())


@pytest.mark.parametrize("target, ok", [("torch.ops.aten.linear.default", True), ("_operator.getitem", True),
                                        ("torch.sym_float", True), ("torch.os.system", False),
                                        ("torch.ops.aten.__class__.x", False), ("builtins.exec", False), (3, False)])
def test_node_targets_must_be_operators(target, ok):
    raw = json.dumps({"nodes": [{"target": target}]}).encode()
    if ok:
        export_graph.check("g", raw)
    else:
        with pytest.raises(ModelError, match="is not an operator"):
            export_graph.check("g", raw)


def _spec(type_: str | None, context: str | None) -> str:
    return json.dumps([1, {"type": type_, "context": context, "children_spec": []}])


@pytest.mark.parametrize("spec, ok", [(_spec("builtins.dict", '["a", 1]'), True), (_spec(None, None), True),
                                      (_spec("collections.defaultdict", "{}"), False),
                                      (_spec("builtins.dict", '[{"__enum__": true, "fqn": "os:x"}]'), False),
                                      ("[1, 2, 3]", False)])
def test_pytree_specs_must_be_plain_containers(spec, ok):
    raw = json.dumps({"signature": {"in_spec": spec}}).encode()
    if ok:
        export_graph.check("g", raw)
    else:
        with pytest.raises(ModelError, match="spec"):
            export_graph.check("g", raw)


# safetensors headers --------------------------------------------------------------------------------------------

def test_a_header_with_a_long_list_of_huge_dimensions_is_refused_at_once(tmp_path, sparse_safetensors):
    header = {"w": {"dtype": "F32", "shape": [2**62] * 200_000, "data_offsets": [0, 16]}}
    sparse_safetensors(tmp_path / "w.safetensors", header, 16)
    start = time.perf_counter()
    with pytest.raises(ModelError, match="its shape declares more than"):
        load_any(FACTORY, weights=tmp_path / "w.safetensors", input_shape=(3, 32, 32))
    assert time.perf_counter() - start < 5  # the product of 200,000 dimensions of 2^62 takes minutes


def test_bytes_after_the_last_tensor_are_refused_before_the_body_is_read(tmp_path, sparse_safetensors, peak_memory):
    path = tmp_path / "w.safetensors"
    sparse_safetensors(path, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 2**30)  # 1 GB, 8 used

    def refused(load):
        with pytest.raises(ModelError, match="its tensors end at byte 8"):
            load()

    for load in (lambda: load_any(FACTORY, weights=path, input_shape=(3, 32, 32)), lambda: load_any(str(path))):
        assert peak_memory(lambda: refused(load)) < 2**24


# ONNX -----------------------------------------------------------------------------------------------------------

def _external(folder: Path) -> Path:
    """The ONNX net beside its weights in data.bin (as torch.onnx.export writes them by default)."""
    model = make.base_onnx()
    onnx.save_model(model, folder / "net.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="data.bin", size_threshold=0)
    return folder / "net.onnx"


def test_external_data_beside_the_model_is_read_from_its_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    _external(models)
    (elsewhere / "data.bin").write_bytes(bytes((models / "data.bin").stat().st_size))
    monkeypatch.chdir(elsewhere)  # a data.bin of zeros here must not be what loads
    loaded = load_any(str(models / "net.onnx"))
    x = torch.rand(4, *make.SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), make._net()(x), atol=1e-5)
    assert loaded.gradients  # the embedded graph converts to torch operators too


def test_torch_operators_never_read_external_data_themselves(tmp_path):
    from nnmark.models.onnx_torch import OnnxGraph

    model = onnx.load(str(_external(tmp_path)), load_external_data=False)
    with pytest.raises(ModelError, match="keeps its data in another file"):
        OnnxGraph(model)


def test_onnx_runtime_writes_nothing_of_its_own_to_stderr(capfd):
    import onnxruntime as ort

    from nnmark._onnxrt import session

    model = make.base_onnx()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    ort.set_default_logger_severity(0)  # verbose: the session below would log its arena and its unused initializer
    session(model.SerializeToString())
    assert capfd.readouterr().err == ""
