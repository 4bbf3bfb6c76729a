"""ONNX external data, read from the model file's own folder only and embedded before anything runs the graph.

An ONNX tensor may keep its bytes in another file (``data_location = EXTERNAL``, ``location`` relative to the
model). nnmark hands ONNX Runtime the model's bytes, and ONNX Runtime (like ``onnx.numpy_helper``) would then
resolve ``location`` against the current directory, so ``embed`` reads every external tensor itself and puts
its bytes in the model: ``location`` must be a plain relative path inside the model's folder (no absolute path,
no ``..``, no symbolic link leading out), naming a regular file (no device or FIFO) that holds the
``offset``/``length`` range; anything else is a one-line ModelError naming the tensor. A model with external
data must fit protobuf's 2 GB once embedded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from nnmark._io import open_regular
from nnmark.errors import ModelError


def embed(model, path: str) -> bool:
    """Embed the external data of every tensor in ``model`` (an ``onnx.ModelProto`` read from ``path``), read
    from ``path``'s folder; whether there was any."""
    from onnx import TensorProto

    folder = Path(path).resolve().parent
    external = [t for t in _tensors(model) if t.data_location == TensorProto.EXTERNAL]
    for tensor in external:
        tensor.raw_data = _read(tensor, folder, path)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    return bool(external)


def _tensors(model) -> Iterator:
    """Every TensorProto of ``model``: initializers, sparse ones, node attributes, in every subgraph and function."""
    graphs, nodes = [model.graph], [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for a in nodes.pop().attribute:
            yield from (a.t, *a.tensors)
            yield from (t for s in (a.sparse_tensor, *a.sparse_tensors) for t in (s.values, s.indices))
            graphs.extend((a.g, *a.graphs))


def _read(tensor, folder: Path, path: str) -> bytes:
    """The bytes of one external tensor, from a regular file inside ``folder``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    where = f"{path}: tensor {tensor.name!r} keeps its data in {info.get('location', '')!r}"
    try:
        offset, length = int(info.get("offset", 0)), info.get("length")
        length = None if length is None else int(length)
    except ValueError:
        raise ModelError(f"{where} with a malformed offset or length") from None
    file = _inside(folder, info.get("location", ""), where)
    try:
        fd = open_regular(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise ModelError(f"{where}, which cannot be read: {e.strerror or e}") from None
    if fd is None:
        raise ModelError(f"{where}, which is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        status = os.fstat(fh.fileno())
        length = status.st_size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > status.st_size:
            raise ModelError(f"{where}, bytes {offset} to {offset + length} of a {status.st_size}-byte file")
        fh.seek(offset)
        return fh.read(length)


def _inside(folder: Path, location: str, where: str) -> Path:
    """``folder / location`` when ``location`` is a plain relative path that stays inside ``folder`` once symbolic
    links are followed; ModelError otherwise."""
    parts = PurePosixPath(location).parts
    if not location or "\\" in location or "\0" in location or PurePosixPath(location).is_absolute() or (
            ".." in parts):
        raise ModelError(f"{where}; nnmark reads external data only from a plain path beside the model")
    file = folder.joinpath(*parts)
    if not file.resolve().is_relative_to(folder):
        raise ModelError(f"{where}, a link leading outside the model's folder")
    return file.resolve()
