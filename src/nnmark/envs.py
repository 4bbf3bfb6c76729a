"""Execution environments: named ways to run the same weights with other numerics.

Each environment turns a model into an oracle. Fragile samples must stand clear of the noise
between environments (a float64 run or a one-sample-per-call run of an untouched model must not
look tampered); telltale samples are made to tell them apart.

Besides torch's own knobs (``TorchOracle`` options) there are environments that run elsewhere:
"torch-compile" (``torch.compile``, inductor on the CPU; compiled when the oracle is built, so a
machine without a working C compiler lists it as unavailable with the error's first line),
"onnxruntime", "onnxruntime-basic", "onnxruntime-noopt" (ONNX Runtime CPU at graph optimisation
levels ORT_ENABLE_ALL, ORT_ENABLE_BASIC, ORT_DISABLE_ALL; ``OnnxOracle``; needs ``nnmark[onnx]``)
and "onednn-avx2", "onednn-sse41", "onednn-avx512-core" (``ONEDNN_MAX_CPU_ISA`` caps, which must be
set before torch loads, so the model runs in a worker subprocess: ``WorkerOracle``; close the
oracle, or let garbage collection or interpreter exit stop the worker). ONNX Runtime and worker
environments give probabilities and labels but no gradients.

``KNOWN`` holds every environment nnmark can describe; ``ENVIRONMENTS`` those whose requirements
this machine meets (e.g. "cuda" only with a CUDA device). :func:`available` lists every known one
with ``available`` True/False and the reason, and, given a model, also tries to build each
environment's oracle for it (a model TorchScript cannot trace is reported, not raised)::

    for status in envs.available(model, (1, 28, 28)):
        print(status.name, status.available, status.reason)
    oracle = envs.get("float64").oracle(model, (1, 28, 28))
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from nnmark import keys
from nnmark.errors import ArgumentError, EnvironmentMismatch, NnmarkError, first_line
from nnmark.oracles import EndpointOracle, Oracle, TorchOracle
from nnmark.oracles.local import CUDA_FLAGS
from nnmark.oracles import onnx as onnx_oracle
from nnmark.oracles.worker import WorkerOracle

Factory = Callable[..., Oracle]
"""Builds an environment's oracle: ``factory(model, input_shape, **options, **kwargs)``."""


def _always() -> str | None:
    return None


def _needs_cuda() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device (or torch built without CUDA)"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def _needs_cpu(*flags: str) -> Callable[[], str | None]:
    """A requirement: the CPU has every one of ``flags`` (as /proc/cpuinfo names them)."""

    def requirement() -> str | None:
        missing = [f for f in flags if f not in _cpu_flags()]
        return f"the CPU lacks {', '.join(missing)}" if missing else None

    return requirement


def _compiled(model: torch.nn.Module, input_shape: tuple[int, int, int], **kwargs) -> TorchOracle:
    """A ``TorchOracle`` over ``torch.compile`` of a copy of ``model``, compiled now by one forward pass."""
    try:
        with warnings.catch_warnings():  # inductor's imports warn that torch.jit APIs are deprecated
            warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", DeprecationWarning)
            compiled = torch.compile(copy.deepcopy(model).eval())
            with torch.no_grad():
                compiled(torch.zeros(1, *input_shape))
    except Exception as e:  # a compiler failure can surface as almost any exception type
        raise NnmarkError(f"torch.compile failed: {first_line(e)}") from e
    return TorchOracle(compiled, input_shape, **kwargs)


@dataclass(frozen=True)
class Environment:
    """A named oracle factory with its options (default: ``TorchOracle`` numerics options).

    ``requirement`` returns why this machine cannot run the environment, or None when it can.
    """

    name: str
    description: str
    options: dict = field(default_factory=dict)
    requirement: Callable[[], str | None] = _always
    factory: Factory = TorchOracle

    def oracle(self, model: torch.nn.Module, input_shape: tuple[int, int, int], *, device: str = "cpu",
               **kwargs) -> Oracle:
        """An oracle running ``model`` in this environment on ``device`` (an environment that names its own device,
        as "cuda" does, runs there); ``NnmarkError`` if it cannot run here or on it.

        ``kwargs`` (e.g. ``budget``, ``num_classes``) go to the factory.
        """
        reason = self.requirement()
        if reason is not None:
            raise NnmarkError(f"environment {self.name!r} is not available here: {reason}")
        options = dict(self.options)
        if self.factory is TorchOracle:
            options.setdefault("device", device)
        elif device != "cpu":
            raise NnmarkError(f"environment {self.name!r} runs on the CPU only, not on {device}")
        try:
            return self.factory(model, input_shape, **options, **kwargs)
        except NnmarkError as e:
            raise NnmarkError(f"environment {self.name!r} cannot run this model: {e}") from e
        except (RuntimeError, torch.jit.Error) as e:
            raise NnmarkError(f"environment {self.name!r} cannot run this model: {first_line(e)}") from e


@dataclass(frozen=True)
class Status:
    """Whether an environment can run here (and on a given model), and why not."""

    name: str
    description: str
    available: bool
    reason: str


KNOWN: dict[str, Environment] = {
    e.name: e
    for e in (
        Environment("float32", "torch float32, default kernels"),
        Environment("float64", "torch float64", {"dtype": torch.float64}),
        Environment("mkldnn-off", "torch float32 with oneDNN (mkldnn) disabled", {"mkldnn": False}),
        Environment("batch1", "torch float32, one sample per forward call", {"batch_size": 1}),
        Environment("bf16-autocast", "torch float32 weights under CPU bfloat16 autocast", {"autocast_bf16": True}),
        Environment("channels-last", "torch float32, model and inputs in channels_last format", {"channels_last": True}),
        Environment("torchscript-frozen", "torch.jit.trace + torch.jit.freeze, float32", {"torchscript": True}),
        Environment("cuda", "torch float32 on the first CUDA device", {"device": "cuda"}, _needs_cuda),
        Environment("torch-compile", "torch.compile (inductor, CPU), float32", {}, _always, _compiled),
        Environment("onnxruntime", "ONNX Runtime CPU, ORT_ENABLE_ALL graph optimisations",
                    {"optimization": "all"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onnxruntime-basic", "ONNX Runtime CPU, ORT_ENABLE_BASIC graph optimisations",
                    {"optimization": "basic"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onnxruntime-noopt", "ONNX Runtime CPU, ORT_DISABLE_ALL (no graph optimisations)",
                    {"optimization": "disabled"}, onnx_oracle.requirement, onnx_oracle.OnnxOracle),
        Environment("onednn-avx2", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=AVX2",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}, _needs_cpu("avx2"), WorkerOracle),
        Environment("onednn-sse41", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=SSE41",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "SSE41"}}, _needs_cpu("sse4_1"), WorkerOracle),
        Environment("onednn-avx512-core", "torch float32 in a worker with ONEDNN_MAX_CPU_ISA=AVX512_CORE",
                    {"env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}},
                    _needs_cpu("avx512f", "avx512bw", "avx512vl", "avx512dq"), WorkerOracle),
    )
}

ENVIRONMENTS: dict[str, Environment] = {name: e for name, e in KNOWN.items() if e.requirement() is None}
"""The known environments whose requirements this machine meets."""


def get(name: str) -> Environment:
    """The environment called ``name``; ``NnmarkError`` if unknown or not available on this machine."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name]
    if name in KNOWN:
        raise NnmarkError(f"environment {name!r} is not available here: {KNOWN[name].requirement()}")
    raise NnmarkError(f"unknown environment {name!r}; known: {', '.join(KNOWN)}")


def probe(
    model: torch.nn.Module | None = None, input_shape: tuple[int, int, int] | None = None
) -> Iterator[tuple[Status, Oracle | None]]:
    """Each known environment's status, with its oracle for ``model`` when it can run it (else None).

    Without a model only the machine's requirements are checked (every oracle is None). With one, every
    available environment builds its oracle and is asked one all-zero input, so a model an environment
    cannot run (e.g. one TorchScript cannot trace) is listed as unavailable with the error's first line.
    The caller closes the oracles it is given.
    """
    if (model is None) != (input_shape is None):
        raise ArgumentError("pass both model and input_shape, or neither")
    for env in KNOWN.values():
        reason, oracle = env.requirement(), None
        if reason is None and model is not None:
            try:
                oracle = env.oracle(model, input_shape)
                oracle.labels(torch.zeros(1, *input_shape))
            except NnmarkError as e:
                reason, oracle = str(e), None
        yield Status(env.name, env.description, reason is None, reason or ""), oracle


def available(model: torch.nn.Module | None = None, input_shape: tuple[int, int, int] | None = None) -> list[Status]:
    """Every known environment with whether it can run here (and ``model``, if given) and why not.

    Never raises for an environment that cannot; ``probe`` does the checking.
    """
    out = []
    for status, oracle in probe(model, input_shape):
        if oracle is not None:
            oracle.close()
        out.append(status)
    return out


# --- devices ----------------------------------------------------------------------------------------

DEVICE_FORMS = "cpu, cuda, cuda:N, mps or auto"
_DEVICE_RE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def accelerators() -> list[str]:
    """The accelerator device types torch can use here, in the order ``auto`` tries them: cuda, then mps."""
    found = ["cuda"] if torch.cuda.is_available() else []
    return found + (["mps"] if torch.backends.mps.is_available() else [])


def resolve_device(value: str) -> str:
    """The device ``value`` names, checked to be here: cpu, cuda, cuda:N, mps, or auto (the first of
    ``accelerators``, else cpu). ``ArgumentError`` for another form or a device that is not there."""
    text = str(value).strip().lower()
    if text == "auto":
        return (accelerators() or ["cpu"])[0]
    match = _DEVICE_RE.fullmatch(text)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise ArgumentError(f"unknown device {value!r}: expected {DEVICE_FORMS}")
    if match[1] != "cpu" and match[1] not in accelerators():
        raise ArgumentError(f"device {text!r} is not available here: no {match[1]} device (or torch built without it)")
    if match[2] is not None and int(match[2]) >= torch.cuda.device_count():
        raise ArgumentError(f"device {text!r} is not available here: {torch.cuda.device_count()} CUDA device(s)")
    return text


# --- the environment a key records ------------------------------------------------------------------

NUMERICS = ("device", "dtype", "mkldnn", "batch_size", "autocast_bf16", "channels_last", "torchscript")
"""The fields of an environment record that set a model's numerics and can be chosen here (with ``CUDA_FLAGS`` where
either side runs on CUDA). The others (device name, torch version, threads) are reported, never decisive."""
OTHERS = ("device_name", "torch", "threads")
DEFAULT_RECORD = {"device": "cpu", "dtype": "float32", "mkldnn": True, "batch_size": None, "autocast_bf16": False,
                  "channels_last": False, "torchscript": False}
"""The numerics an endpoint is taken to run with: it does not say what its server runs."""
RISK_FACTOR = 2.0
"""A query is at risk when its margin (top-1 minus top-2 probability in the key's environment) is at most this many
times the largest change of its probabilities between the two environments."""
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def unwrapped(oracle: Oracle) -> Oracle:
    """The oracle that answers for ``oracle``: wrappers (access levels, an audit's recorder) followed to it."""
    while getattr(oracle, "inner", None) is not None:
        oracle = oracle.inner
    return oracle


def record(oracle: Oracle) -> dict | None:
    """The environment ``oracle`` runs its model in (``TorchOracle.environment``), as a key records it; None for one
    that runs no local torch model (an endpoint, ONNX Runtime, a worker process)."""
    inner = unwrapped(oracle)
    return inner.environment() if isinstance(inner, TorchOracle) else None


def stamp(key, oracle: Oracle):
    """``key`` with the environment ``oracle`` made it in (``record``) in its config (``keys.ENVIRONMENT``)."""
    made_in = record(oracle)
    if made_in is not None:
        key.config[keys.ENVIRONMENT] = made_in
    return key


def _same(field: str, a, b) -> bool:
    """Whether two values of a numerics field give the same numerics: a batch of one sample per call (the "batch1"
    environment) is its own, any other batch size (a micro-batch of ``--batch-size``, a whole request, an endpoint's
    own batching) is taken as the whole batch's."""
    if field == "batch_size":
        return (a == 1) == (b == 1)
    return a == b


def differences(recorded: dict, here: dict) -> dict[str, list]:
    """{field: [recorded value, value here]} of the numerics fields that differ (``NUMERICS``, and ``CUDA_FLAGS``
    where either side runs on CUDA; batch sizes as ``_same`` compares them)."""
    fields = NUMERICS + (CUDA_FLAGS if "cuda" in (recorded.get("device"), here.get("device")) else ())
    return {f: [recorded.get(f), here.get(f)] for f in fields if not _same(f, recorded.get(f), here.get(f))}


def described(differs: dict[str, list]) -> str:
    """"dtype float32 -> float64, ...": a difference (``differences``) in words."""
    return ", ".join(f"{name} {a} -> {b}" for name, (a, b) in differs.items())


def _oracle_options(made_in: dict) -> dict:
    """The ``TorchOracle`` options that rebuild the environment ``made_in`` records; ``ArgumentError`` when it is
    malformed or its device is not here."""
    try:
        flags = {f: bool(made_in[f]) for f in CUDA_FLAGS} if made_in["device"] == "cuda" else None
        batch = made_in["batch_size"]
        if not (batch is None or (type(batch) is int and batch >= 1)):
            raise ArgumentError(f"batch_size {batch!r}")
        return {"device": resolve_device(made_in["device"]), "dtype": _DTYPES[made_in["dtype"]],
                "mkldnn": bool(made_in["mkldnn"]), "batch_size": batch, "autocast_bf16": bool(made_in["autocast_bf16"]),
                "channels_last": bool(made_in["channels_last"]), "torchscript": bool(made_in["torchscript"]),
                "backend_flags": flags}
    except (KeyError, TypeError) as e:
        raise ArgumentError(f"malformed environment record ({first_line(e)})") from None


def _how_to_run(made_in: dict) -> str:
    """The options that verify in ``made_in``'s environment: --device, and --env where a known one matches it."""
    for name, env in KNOWN.items():
        options = {k: str(v).removeprefix("torch.") if k == "dtype" else v for k, v in env.options.items()}
        if env.factory is TorchOracle and "device" not in options and all(
                {**DEFAULT_RECORD, **options}[f] == made_in.get(f) for f in NUMERICS[1:]):
            return f"with --device {made_in.get('device')} --env {name}"
    return "in the environment the key records (" + ", ".join(f"{f} {made_in.get(f)}" for f in NUMERICS) + ")"


def _at_risk(inner: TorchOracle, made_in: dict, here: dict, queries, reverify: Callable) -> int | None:
    """How many queries the change of environment alone can flip on this model: asked in both environments, those
    the method answers differently (``reverify(oracle).flipped``) or whose margin is within ``RISK_FACTOR`` times
    their spread; None when the key's environment cannot be run here."""
    try:
        there_options = _oracle_options(made_in)
    except ArgumentError:
        return None
    shape, k = inner.input_shape, inner.num_classes
    try:
        with TorchOracle(inner.module, shape, k, **there_options) as there, \
                TorchOracle(inner.module, shape, k, **_oracle_options(here)) as now:
            p_there, p_now = there.probabilities(queries), now.probabilities(queries)
            flips = set(reverify(there).flipped) ^ set(reverify(now).flipped)
    except (RuntimeError, torch.jit.Error):  # a module that cannot be copied, converted or traced there
        return None
    top = p_there.topk(2, dim=1).values
    spread = (p_there - p_now).abs().amax(dim=1)
    near = torch.nonzero(top[:, 0] - top[:, 1] <= RISK_FACTOR * spread).flatten().tolist()
    return len(flips | set(near))


def check_environment(oracle: Oracle, key, verdict, *, fragile: bool, accept: bool = False,
                      reverify: Callable | None = None) -> dict | None:
    """What ``verdict`` states of its environment: {"key", "here", "differs", "others", "accepted", "at_risk"}; None
    for a key that records none (made before keys did).

    The rule, for a failed check of a ``fragile`` key whose numerics differ from here (``differences``; an endpoint
    is taken to run in ``DEFAULT_RECORD``, and differs as well where the environment it publishes (``nnmark serve``
    does) differs; ONNX Runtime and worker environments differ from any torch record):
    a local torch model whose key environment can run here is asked the key in both environments; if the change of
    environment alone flips a query or leaves one within its spread (``_at_risk``; ``reverify(oracle)`` is the
    method's verdict there), or the key's environment cannot run here, or the model is an endpoint,
    ``EnvironmentMismatch``: no TAMPERED is given, unless ``accept`` (the owner accepts the risk). Otherwise the
    verdict stands, noting the difference.
    """
    made_in = key.config.get(keys.ENVIRONMENT)
    if not isinstance(made_in, dict):
        return None
    inner = unwrapped(oracle)
    here = record(inner)
    if here is not None:
        differs = differences(made_in, here)
    elif isinstance(inner, EndpointOracle):  # what it publishes can add a difference, never remove one
        params = (getattr(inner, "metadata", None) or {}).get("parameters")
        published = params.get("environment") if isinstance(params, dict) else None
        differs = {**(differences(made_in, published) if isinstance(published, dict) else {}),
                   **differences(made_in, DEFAULT_RECORD)}
    else:
        differs = {"runtime": ["torch", type(inner).__name__]}
    others = {f: [made_in.get(f), here.get(f)] for f in OTHERS if here is not None and made_in.get(f) != here.get(f)}
    note = {"key": made_in, "here": here, "differs": differs, "others": others, "accepted": False, "at_risk": None}
    if not (differs and fragile and not verdict.passed):
        return note
    if accept:
        return {**note, "accepted": True}
    risky = _at_risk(inner, made_in, here, key.queries, reverify) if here is not None and reverify else None
    if risky == 0:
        return {**note, "at_risk": 0}
    if isinstance(inner, EndpointOracle):
        why = "an endpoint is taken to run on the CPU in float32 and cannot be asked in the key's environment"
    elif here is None:
        why = f"{type(inner).__name__} cannot be asked the key beside the key's environment"
    elif risky is None:
        why = f"the key's environment (device {made_in.get('device')}) cannot run here"
    else:
        why = f"{risky} of its {len(key.queries)} queries answer differently, or lie within the numeric spread, there"
    raise EnvironmentMismatch(
        f"the {key.method} key was made in another environment ({described(differs)}): {why}; a fragile key can fail "
        f"there with no change of the model, so no verdict is given: verify {_how_to_run(made_in)}, or pass "
        "--accept-environment to accept the risk")


CALIBRATION = ("float64", "mkldnn-off", "batch1", "cuda")
"""The environments a fragile method's margin is calibrated across (``calibration_environments``)."""


def calibration_environments() -> list[str]:
    """The environments of ``CALIBRATION`` this machine runs (the CPU variants; the CUDA one where a GPU is here)."""
    return [name for name in CALIBRATION if name in ENVIRONMENTS]


def note_line(note: dict | None) -> str | None:
    """The one line a verdict's environment note (``check_environment``) is shown as; None when nothing differs."""
    if not note or not (note["differs"] or note["others"]):
        return None
    line = f"note: the key was made in another environment ({described({**note['differs'], **note['others']})})"
    if note["accepted"]:
        return line + "; its verdict is given at the owner's risk (--accept-environment)"
    if note["at_risk"] == 0:
        return line + "; no query of the key answers differently there on this model, so the verdict stands"
    return line
