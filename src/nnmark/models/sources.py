"""Model sources: one loader behind every ``--model``, whatever the model is stored as.

``load_any(spec, weights=..., input_shape=..., normalize=...)`` returns a ``LoadedModel``: the module, its
``ModelCard``, the source kind, a digest, and what the kind allows (gradients, training, writing back).
``SOURCES`` holds one entry per kind; what loading each kind executes:

- ``checkpoint``: an nnmark safetensors checkpoint (``models.load``); builds a zoo architecture, runs no user code.
  Its header is checked (``checkpoint.read_header``) and matched to the architecture before the body is read.
- ``factory``: ``package.module:factory`` (imported from ``sys.path`` and the current directory) plus optional
  ``--weights W.safetensors``, a state dict whose header is checked as a checkpoint's and against the factory's
  tensors before its body is read, then loaded strictly. Loading runs the user's Python code.
- ``torchscript``: a TorchScript zip archive (``.pt``, ``.ts``, ``.jit``) loaded with ``torch.jit.load`` after
  ``archive.check``; its code runs in TorchScript's own interpreter and its pickles in TorchScript's C++ unpickler,
  not in Python. A file that is not a TorchScript zip is refused, never unpickled.
- ``export``: a ``torch.export`` archive (``.pt2``) loaded with ``torch.export.load`` after ``archive.check``, an
  allow-list of its entries (no AOTInductor, legacy or pickled payload files), a check of its payload configs
  read by torch's own zip reader (unpickled tensors that fit their bytes), of its sample inputs (a checked
  torch.save zip) and of its graph (``export_graph.check``: no string torch would run as code), and with every
  ``torch.load`` inside forced to ``weights_only=True``.
- ``onnx``: an ONNX file (one image input), its external data read from its own folder only and embedded
  (``onnx_data.embed``). Its graph runs with torch operators (``onnx_torch``) when every operator converts and the
  result matches ONNX Runtime on a probe batch, so methods get gradients; otherwise ONNX Runtime (CPU) answers
  with probabilities and labels only, and ``LoadedModel.note`` says so.

Nothing here calls ``torch.load`` on a pickle or passes ``weights_only=False``. The card's input shape comes from
the checkpoint config, the archive's example input, the ONNX input, a card nnmark stored in the file, or an
explicit ``input_shape``; K from one forward pass on a zero batch.

Example::

    loaded = load_any("mypkg.nets:small_cnn", weights="net.safetensors", input_shape=(3, 32, 32),
                      normalize="imagenet")
    oracle = model_oracle(loaded)            # nnmark.oracles: pixel space [0, 1], the normalisation inside
    save_like(loaded, attacked_model, "attacked.safetensors")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from nnmark._io import atomic_write_bytes
from nnmark._onnxrt import requirement, session
from nnmark.errors import ModelError, NnmarkError, first_line
from nnmark._safetensors import HeaderError, parse_json
from nnmark.models import archive, checkpoint, export_graph, onnx_data
from nnmark.models.card import ModelCard, Normalization, parse_normalize, pixel_model, unwrap
from nnmark.models.onnx_torch import Unconvertible, convert

CARD_KEY = "nnmark.card"
"""Where nnmark stores a card: safetensors metadata key, and (with ``.json``) an extra file in an archive."""
_CARD_FILE = CARD_KEY + ".json"
FACTORY_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_MIN_EXPORT_BATCH = 2  # torch.export specialises a batch of 1, so the example batch that keeps N dynamic is 2
# What torch.export.save writes for its one program "model" (names below the archive's top folder).
_EXPORT_FORMAT, _EXPORT_GRAPH, _EXPORT_SAMPLE = "archive_format", "models/model.json", "data/sample_inputs/model.pt"
_EXPORT_WEIGHTS = "data/weights/model_weights_config.json"
_EXPORT_CONSTANTS = "data/constants/model_constants_config.json"
_EXPORT_ENTRY = re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                           r"models/model\.json|data/sample_inputs/model\.pt|data/weights/model_weights_config\.json|"
                           r"data/constants/model_constants_config\.json|data/weights/weight_\d+|"
                           r"data/constants/tensor_\d+|extra/[\w.-]+")


@dataclass(frozen=True)
class _Raw:
    """What a source kind's reader found: the module and whatever the file says about it."""

    module: nn.Module
    digest: str
    shape: tuple[int, int, int] | None = None
    card: ModelCard | None = None
    config: checkpoint.ModelConfig | None = None
    factory: Callable[[], nn.Module] | None = None
    gradients: bool = True
    note: str = ""


@dataclass(frozen=True)
class Source:
    """One kind of model source.

    Args:
        name: the kind's name (the key in SOURCES).
        executes: what loading it runs (for the README and ``--help``).
        suffixes: the file suffixes it claims (empty for the factory spec).
        read: (spec, weights path, explicit input shape) -> _Raw.
        write: (module as the source holds it, card, config, out path) -> None, or None if it cannot be written.
        trainable: whether attacks and embedding methods can train it.
        layers: whether its layers are torch.nn modules of their own types (nn.Conv2d, nn.Linear, activations), which
            pruning, quantization and AID's activation hooks look for; compiled archives have none.
        limits: why it cannot be trained ("" when it can).
    """

    name: str
    executes: str
    suffixes: tuple[str, ...]
    read: Callable[[str, str | None, tuple[int, int, int] | None], _Raw]
    write: Callable[[nn.Module, ModelCard, checkpoint.ModelConfig | None, Path], None] | None
    trainable: bool = True
    layers: bool = True
    limits: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """A model from any source, with its card and what its kind allows.

    ``module`` is the model as stored (it receives normalised inputs when the card says so); ``model`` is the
    same model in pixel space [0, 1], what oracles, methods and attacks use. ``factory`` builds a fresh, untrained
    model of the same architecture (in the stored input space) when the kind has one (checkpoint, factory).
    ``gradients`` is False for an ONNX graph that runs only in ONNX Runtime; ``note`` then says why, in one line.
    """

    spec: str
    kind: str
    module: nn.Module
    card: ModelCard
    digest: str
    config: checkpoint.ModelConfig | None = None
    factory: Callable[[], nn.Module] | None = None
    gradients: bool = True
    note: str = ""

    @property
    def source(self) -> Source:
        return SOURCES[self.kind]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.card.input_shape

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def data(self) -> str | None:
        """The dataset a checkpoint says it was trained on (None for other kinds)."""
        return None if self.config is None else self.config.data

    @functools.cached_property
    def model(self) -> nn.Module:
        """The model as it sees pixels in [0, 1] (``Normalized`` when the card normalises)."""
        return pixel_model(self.module, self.card)

    def fresh(self) -> nn.Module:
        """A freshly initialised model of the same architecture as it sees pixels in [0, 1] (``factory()`` behind the
        card's normalisation; the caller seeds torch). ModelError for a kind without a factory."""
        self.require("training", "a fresh model of its architecture")
        return pixel_model(self.factory(), self.card)

    @property
    def access(self) -> str:
        """"gradients", or "probabilities" for a graph that runs only in ONNX Runtime."""
        return "gradients" if self.gradients else "probabilities"

    def require(self, what: str, purpose: str) -> None:
        """Raise a one-line ModelError naming ``purpose`` unless this model allows ``what``: "gradients",
        "training", "saving" (writing a changed copy back as the same kind) or "layers" (see ``Source.layers``)."""
        source = self.source
        missing = {
            "gradients": None if self.gradients else self.note,
            "training": None if source.trainable else source.limits,
            "saving": None if source.write else f"nnmark does not write {self.kind} models back",
            "layers": None if source.layers else "its layers are compiled, not the torch.nn modules (nn.Conv2d, "
                                                 "nn.Linear, activations) that pruning, quantization and AID look for",
        }
        if what not in missing:
            raise ValueError(f"what must be one of {sorted(missing)}, got {what!r}")
        if missing[what] is not None:
            raise ModelError(f"{purpose} needs {what}, which this {self.kind} model does not allow: {missing[what]}")


def load_any(spec: str, *, weights: str | os.PathLike | None = None, input_shape: tuple[int, int, int] | None = None,
             normalize: str | Normalization | None = None) -> LoadedModel:
    """Load the model ``spec`` names (a file of any kind in SOURCES, or ``package.module:factory``).

    Args:
        spec: a model file, or ``package.module:factory`` (a callable taking no arguments that returns an nn.Module).
        weights: a safetensors state dict for a factory model (loaded strictly); only with a factory spec.
        input_shape: (C, H, W); overrides what the source says (required when it says nothing).
        normalize: "none", "imagenet", "MEAN,STD", per-channel numbers, or (mean, std); overrides a stored card.
    """
    kind = source_kind(spec)
    if weights is not None and kind.name != "factory":
        raise ModelError(f"--weights goes with a package.module:factory model, not a {kind.name} file")
    raw = kind.read(spec, None if weights is None else os.fspath(weights), input_shape)
    card = _card(spec, raw, input_shape, normalize)
    return LoadedModel(spec, kind.name, raw.module, card, raw.digest, raw.config, raw.factory, raw.gradients, raw.note)


def source_kind(spec: str) -> Source:
    """The entry of SOURCES that ``spec`` names: a factory spec, else the file's suffix; ModelError if none."""
    path = Path(spec)
    if FACTORY_SPEC.fullmatch(spec) and not path.exists():
        return SOURCES["factory"]
    if not path.is_file():
        raise ModelError(f"no model file {spec} (and it is not a package.module:factory spec)")
    for source in SOURCES.values():
        if path.suffix.lower() in source.suffixes:
            return source
    known = ", ".join(s for source in SOURCES.values() for s in source.suffixes)
    raise ModelError(f"cannot tell what kind of model {spec} is from its suffix (known: {known})")


def save_like(loaded: LoadedModel, model: nn.Module, out: str | os.PathLike, *, accuracy: float | None = None) -> None:
    """Write ``model`` (``loaded.model`` or ``loaded.module`` changed, e.g. by an attack) as ``loaded``'s kind.

    A checkpoint stays a checkpoint (its config with ``accuracy``), a factory model becomes safetensors weights for
    the same factory, TorchScript stays TorchScript, a torch.export archive is exported again; each stores the card
    so it loads the same way.
    """
    loaded.require("saving", f"writing {out}")
    config = None if loaded.config is None else dataclasses.replace(loaded.config, accuracy=accuracy)
    loaded.source.write(unwrap(model), loaded.card, config, Path(out))


def _card(spec: str, raw: _Raw, input_shape: tuple[int, int, int] | None,
          normalize: str | Normalization | None) -> ModelCard:
    """The card of ``raw``: explicit arguments first, then a stored card, then what the source says; K measured."""
    shape = input_shape or (raw.card.input_shape if raw.card else raw.shape)
    if shape is None:
        raise ModelError(f"cannot tell the input shape of {spec}: pass --input-shape C,H,W")
    shape = ModelCard(tuple(shape), 2).input_shape  # validated before anything runs on it
    if isinstance(normalize, str):
        normalize = parse_normalize(normalize, shape[0])
    elif normalize is None and raw.card is not None:
        normalize = raw.card.normalize
    k = _num_classes(spec, raw.module, shape)
    if raw.card is not None and raw.card.num_classes != k:
        raise ModelError(f"{spec} stores a card with {raw.card.num_classes} classes but the model returns {k}")
    names = raw.card.class_names if raw.card is not None else None
    return ModelCard(shape, k, names, normalize)


def _num_classes(spec: str, module: nn.Module, shape: tuple[int, int, int]) -> int:
    """K from one forward pass on a zero batch; ModelError unless the output is (1, K)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *shape))
    except NnmarkError:
        raise
    except Exception as e:
        dims = ", ".join(map(str, shape))
        raise ModelError(f"{spec} fails on a zero batch of shape (1, {dims}): {first_line(e)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{spec} must return logits of shape (N, K); on one input it returned {got}")
    return int(out.shape[1])


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _stored_card(text: str | None, path: str) -> ModelCard | None:
    if not text:
        return None
    try:
        return ModelCard.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise ModelError(f"{path} stores a malformed model card: {first_line(e)}") from None
    except ModelError as e:
        raise ModelError(f"{path} stores a bad model card: {e}") from None


def _card_json(card: ModelCard) -> str:
    return json.dumps(card.to_dict(), sort_keys=True)


# checkpoint ---------------------------------------------------------------------------------------------------

def _read_checkpoint(path: str, weights: str | None, input_shape: tuple[int, int, int] | None) -> _Raw:
    module, config = checkpoint.load(path)
    rebuild = functools.partial(checkpoint.build, config.arch, config.input_shape, config.num_classes,
                                width=config.width)
    return _Raw(module, checkpoint.digest(module), config.input_shape, config=config, factory=rebuild)


def _write_checkpoint(module: nn.Module, card: ModelCard, config: checkpoint.ModelConfig | None, out: Path) -> None:
    checkpoint.save(module, config, out)


# factory + safetensors weights ----------------------------------------------------------------------------------

def _read_factory(spec: str, weights: str | None, input_shape: tuple[int, int, int] | None) -> _Raw:
    factory = import_factory(spec)
    module = factory()
    card = None
    if weights is not None:
        tensors, card = _read_weights(weights, spec, module.state_dict())
        module.load_state_dict(tensors, strict=True)
    return _Raw(module.eval(), checkpoint.digest(module), getattr(module, "input_shape", None), card, factory=factory)


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """The current directory first on sys.path while importing (as ``python -m`` has it), then as before."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(spec: str) -> Callable[[], nn.Module]:
    """The factory ``package.module:factory`` names, imported from ``sys.path`` and the current directory, as a
    callable that returns a float32 ``nn.Module``; every failure (importing, a missing or failing factory, a result
    that is not a module) is a one-line ModelError naming ``spec``."""
    if not FACTORY_SPEC.fullmatch(spec):
        raise ModelError(f"{spec!r} is not a package.module:factory spec")
    module_name, _, attr = spec.partition(":")
    with _cwd_on_path():
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ModelError(f"cannot import {module_name} for factory {spec}: {first_line(e)}") from None
        except Exception as e:
            raise ModelError(f"importing {module_name} for factory {spec} failed: {first_line(e)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no factory function {attr!r}")
    return functools.partial(_call_factory, spec, factory)


def _call_factory(spec: str, factory: Callable[[], nn.Module]) -> nn.Module:
    try:
        module = factory()
    except Exception as e:
        raise ModelError(f"factory {spec} failed: {first_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"factory {spec} returned a {type(module).__name__}, not a torch.nn.Module")
    return module.float()


def _read_weights(path: str, spec: str, expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                                  ModelCard | None]:
    """A safetensors state dict for ``spec`` and the card stored with it, the header checked against ``expected``
    before the body is read; a pickle or zip is named as such and never opened."""
    try:
        with open(path, "rb") as fh:
            try:
                head = checkpoint.read_header(fh)
            except HeaderError as e:
                fh.seek(0)
                start = fh.read(4)
                looks = "a zip archive (torch.save?)" if start == b"PK\x03\x04" else (
                    "a pickle" if start[:1] == b"\x80" else f"not valid safetensors ({e})")
                raise ModelError(f"weights {path} are {looks}; nnmark reads weights only from safetensors and never "
                                 "unpickles (convert with safetensors.torch.save_file(model.state_dict(), ...))"
                                 ) from None
            try:
                tensors = checkpoint.read_state(fh, head, expected)
            except ModelError as e:
                raise ModelError(f"weights {path} do not match {spec}: {e}") from None
    except OSError as e:
        raise ModelError(f"cannot read weights {path}: {e.strerror or e}") from None
    metadata = head.metadata if isinstance(head.metadata, dict) else {}
    return tensors, _stored_card(metadata.get(CARD_KEY), path)


def _write_factory(module: nn.Module, card: ModelCard, config: checkpoint.ModelConfig | None, out: Path) -> None:
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in module.state_dict().items()}
    atomic_write_bytes(out, safetensors_save(tensors, metadata={CARD_KEY: _card_json(card)}))


# TorchScript -----------------------------------------------------------------------------------------------------

def _read_torchscript(path: str, weights: str | None, input_shape: tuple[int, int, int] | None) -> _Raw:
    data = _read_bytes(path, "TorchScript archive")
    names = archive.check(path, data, "TorchScript").names
    if "constants.pkl" not in names and not any(n.startswith("code/") for n in names):
        raise ModelError(f"{path} is a zip archive without TorchScript code (a torch.save pickle?); "
                         "nnmark never unpickles model files")
    extra = {_CARD_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise ModelError(f"cannot load TorchScript archive {path}: {first_line(e)}") from None
    return _Raw(module.eval(), checkpoint.digest(module), card=_stored_card(extra[_CARD_FILE], path))


def _write_torchscript(module: nn.Module, card: ModelCard, config: checkpoint.ModelConfig | None, out: Path) -> None:
    if not isinstance(module, torch.jit.ScriptModule):
        raise ModelError(f"cannot write {out} as TorchScript: the changed model is a {type(module).__name__}, "
                         "no longer a TorchScript module")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, buffer, _extra_files={_CARD_FILE: _card_json(card)})
    atomic_write_bytes(out, buffer.getvalue())


# torch.export ----------------------------------------------------------------------------------------------------

def _check_export_archive(path: str, data: bytes) -> None:
    """Refuse a .pt2 archive unless ``archive.check`` passes, it holds only the entries torch.export.save writes for
    one model (no AOTInductor, legacy or pickled payload files), its payload configs (read by torch's own zip
    reader) name only unpickled tensors that fit their bytes, and its graph passes ``export_graph.check``."""
    names = archive.check(path, data, "torch.export").names
    unexpected = [n for n in names if not _EXPORT_ENTRY.fullmatch(n)]
    if unexpected:
        raise ModelError(f"{path} holds {unexpected[0]!r}, which is not an entry torch.export.save writes; nnmark "
                         "loads only exported programs (no AOTInductor code, no pickles)")
    missing = [n for n in (_EXPORT_FORMAT, _EXPORT_GRAPH, _EXPORT_SAMPLE) if n not in names]
    if missing:
        raise ModelError(f"{path} is not a torch.export archive of the current format (no {missing[0]})")
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))  # the reader torch.export.load uses
    for config, prefix in ((_EXPORT_WEIGHTS, "weight_"), (_EXPORT_CONSTANTS, "tensor_")):
        if config in names:
            _check_payloads(path, reader, names, config, prefix)
    archive.check(f"{path} ({_EXPORT_SAMPLE})", reader.get_record(_EXPORT_SAMPLE), "torch.save")
    export_graph.check(path, reader.get_record(_EXPORT_GRAPH))


def _check_payloads(path: str, reader, names: tuple[str, ...], config: str, prefix: str) -> None:
    """ModelError unless every payload in ``config`` is an unpickled tensor file ``prefix<N>`` among ``names`` that
    holds bytes if its declared shape does (torch fills an empty file with zeros of the declared shape)."""
    try:
        entries = parse_json(reader.get_record(config).decode())["config"]
        payloads = [(e["path_name"], e.get("use_pickle", False), e["tensor_meta"]) for e in entries.values()]
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        raise ModelError(f"{path}: {config} is not a valid payload config") from None
    for name, pickled, meta in payloads:
        if pickled is not False or not isinstance(name, str) or not re.fullmatch(re.escape(prefix) + r"\d+", name):
            raise ModelError(f"{path} holds pickled payloads ({config}: {name!r}); nnmark never unpickles model files")
        file = f"{config.rpartition('/')[0]}/{name}"
        if file not in names:
            raise ModelError(f"{path}: {config} names {name}, which the archive does not hold")
        if reader.get_record_size(file) == 0 and not export_graph.declares_empty(meta):
            raise ModelError(f"{path}: payload {name} declares a non-empty tensor but holds no bytes")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every torch.load inside runs with weights_only=True, whatever its caller asks (TORCH_FORCE_WEIGHTS_ONLY_LOAD)."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@contextlib.contextmanager
def _silenced(logger: str) -> Iterator[None]:
    """``logger`` logs nothing meanwhile (torch.export.load logs a failure's traceback before raising it)."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(before)


def _read_export(path: str, weights: str | None, input_shape: tuple[int, int, int] | None) -> _Raw:
    data = _read_bytes(path, "torch.export archive")
    _check_export_archive(path, data)
    extra = {_CARD_FILE: ""}
    try:
        with _weights_only_loads(), _silenced("torch.export"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as e:
        raise ModelError(f"cannot load torch.export archive {path}: {first_line(e)}") from None
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise ModelError(f"{path} takes {len(inputs)} inputs; nnmark needs a model with one image input")
    dims = tuple(inputs[0].meta["val"].shape)[1:]
    shape = tuple(int(d) for d in dims) if len(dims) == 3 and all(isinstance(d, int) for d in dims) else None
    module = program.module()
    module.train = types.MethodType(_export_train, module)  # torch raises on eval() as on train()
    module.eval = types.MethodType(_export_eval, module)
    return _Raw(module, checkpoint.digest(module), shape, _stored_card(extra[_CARD_FILE], path))


def _export_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` for a torch.export module: train(False) is a no-op (it was exported in eval mode), train() an error."""
    if mode:
        raise ModelError(f"a torch.export model cannot be trained: {SOURCES['export'].limits}")
    return module


def _export_eval(module: nn.Module) -> nn.Module:
    return _export_train(module, False)


def _write_export(module: nn.Module, card: ModelCard, config: checkpoint.ModelConfig | None, out: Path) -> None:
    example = torch.zeros(_MIN_EXPORT_BATCH, *card.input_shape)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:
        raise ModelError(f"cannot export the changed model to {out}: {first_line(e)}") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={_CARD_FILE: _card_json(card)})
    atomic_write_bytes(out, buffer.getvalue())


# ONNX ------------------------------------------------------------------------------------------------------------

class OnnxRuntimeModule(nn.Module):
    """An ONNX graph with one image input, run by ONNX Runtime on the CPU: forward only, no gradients.

    Args:
        data: the ONNX file's bytes.
        name: the file, for messages.
    """

    def __init__(self, data: bytes, name: str):
        super().__init__()
        try:
            self.session = session(data)
        except NnmarkError:
            raise
        except Exception as e:
            raise ModelError(f"ONNX Runtime cannot load {name}: {first_line(e)}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelError(f"{name} has {len(inputs)} inputs ({names}); nnmark needs a model with one image input")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        dims = tuple(inputs[0].shape)[1:]
        self.input_shape = tuple(dims) if len(dims) == 3 and all(isinstance(d, int) for d in dims) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run([self.output_name], {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(out).float()


def _read_onnx(path: str, weights: str | None, input_shape: tuple[int, int, int] | None) -> _Raw:
    """The graph in torch (``onnx_torch.convert``) when it converts and matches ONNX Runtime, else ONNX Runtime.
    External data is read from the model's own folder and embedded first (``onnx_data.embed``)."""
    data = _read_bytes(path, "ONNX file")
    model = _parse_onnx(path, data)
    if onnx_data.embed(model, path):
        try:
            data = model.SerializeToString()
        except ValueError as e:  # protobuf's 2 GB limit
            raise ModelError(f"{path} with its external data embedded cannot be loaded: {first_line(e)}") from None
    runtime = OnnxRuntimeModule(data, path)
    shape, digest = input_shape or runtime.input_shape, hashlib.sha256(data).hexdigest()
    if shape is None:  # the card step asks for --input-shape
        return _Raw(runtime, digest, gradients=False)
    try:
        graph = convert(model, ModelCard(tuple(shape), 2).input_shape, runtime)
    except Unconvertible as e:
        note = (f"{Path(path).name} does not run in torch ({e}), so ONNX Runtime answers with probabilities only: "
                "verify and the natural and random baselines run, methods that need input gradients do not")
        return _Raw(runtime, digest, runtime.input_shape, gradients=False, note=note)
    return _Raw(graph, digest, runtime.input_shape)


def _parse_onnx(path: str, data: bytes):
    """``data`` as an ``onnx.ModelProto``; NnmarkError when onnx is missing, ModelError when it does not parse."""
    reason = requirement()
    if reason is not None:
        raise NnmarkError(reason)
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path} is not an ONNX model: {first_line(e)}") from None


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("checkpoint", "rebuilds a zoo architecture from the checkpoint's config; runs no user code",
           (".safetensors",), _read_checkpoint, _write_checkpoint),
    Source("factory", "imports package.module and calls the factory: runs the user's Python code",
           (), _read_factory, _write_factory),
    Source("torchscript", "runs the archive's code in TorchScript's own interpreter (not Python)",
           (".pt", ".ts", ".jit"), _read_torchscript, _write_torchscript, trainable=False, layers=False,
           limits="a copy of a TorchScript module (attacks train a copy) has parameters torch cannot optimise "
                  "(non-leaf tensors); load the same weights through a package.module:factory to train them"),
    Source("export", "runs the archive's ATen graph (torch.export); no Python code from the file",
           (".pt2",), _read_export, _write_export, trainable=False, layers=False,
           limits="a torch.export graph is frozen in eval mode and cannot be trained (torch raises on train())"),
    Source("onnx", "runs the graph with torch operators (nnmark.models.onnx_torch, checked against ONNX Runtime) "
           "or, when it does not convert, in ONNX Runtime; no Python code from the file",
           (".onnx",), _read_onnx, None, trainable=False, layers=False,
           limits="an ONNX graph is inference-only (BatchNormalization frozen, no dropout) and nnmark does not write "
                  "ONNX back; export the model as TorchScript for attacks and embedding methods"),
)}
