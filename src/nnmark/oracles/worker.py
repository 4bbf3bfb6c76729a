"""An oracle whose model runs in a worker subprocess with its own environment variables.

Some numerics can only be chosen before torch loads: ``ONEDNN_MAX_CPU_ISA`` caps the instruction
set oneDNN (mkldnn) dispatches to (``AVX2``, ``SSE41``, ``AVX512_CORE``, ...) and is read once per
process. ``WorkerOracle`` therefore starts ``python -m nnmark.oracles.worker MODEL C,H,W`` with the
variables set, hands it the model in a temp file (removed once the worker has loaded it) and asks it
for logits over its stdin/stdout pipes. The file is a safetensors checkpoint (``nnmark.models.save``)
for a model of an nnmark architecture; any other module (a user's factory model, its normalisation
wrapper, a TorchScript or torch.export source) goes as a ``torch.jit.trace`` archive, used only when
the trace answers a probe batch as the module does (to ``TRACE_ATOL`` of the logits' scale), and run
in the worker without graph optimisations, so it calls the same kernels as the eager module.

Protocol (never pickle; all integers uint32 little-endian, arrays raw float32 little-endian,
row-major):
    worker -> parent, once: b"R" + len + UTF-8 JSON {"num_classes", "env": {name: value seen by the
        worker}, "torch", "mkldnn"}
    parent -> worker:  b"P" + n + n*C*H*W float32 inputs      (logits request)
    worker -> parent:  b"O" + n + K + n*K float32 logits  |  b"E" + len + UTF-8 message
    parent -> worker:  b"Q" (or end of stdin): exit
The worker moves its stdout to a private descriptor and points file descriptor 1 at stderr, so
anything a library prints (e.g. ``ONEDNN_VERBOSE``) cannot corrupt the protocol.

Answers are the float32 model's logits; labels are their argmax and probabilities their float32
softmax, computed in the parent as ``TorchOracle`` computes them, so a worker without variables
answers exactly as the "float32" environment. No gradients (``AccessError``).

Example::

    with WorkerOracle(model, (1, 28, 28), env={"ONEDNN_MAX_CPU_ISA": "SSE41"}) as oracle:
        y = oracle.labels(x)
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref

import torch

from nnmark.errors import ArgumentError, ModelError, NnmarkError
from nnmark.oracles.base import LogitsOracle

_U32 = struct.Struct("<I")
TRACE_ATOL = 1e-5
"""How far (relative to the largest logit) a traced module may answer a probe batch from the module itself."""
_PROBE = 8


def config_for(model: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int):
    """The ``ModelConfig`` that rebuilds ``model`` (same class, same tensor shapes); ``NnmarkError`` if none.

    Tries each architecture at the width its first weight implies (its first dimension over the
    architecture's at width 1) and at width 1.
    """
    from nnmark import models

    state = {n: t.shape for n, t in model.state_dict().items()}
    first = next(iter(state.values()), None)
    for arch in models.ARCHITECTURES:
        with torch.device("meta"):
            base = models.build(arch, input_shape, num_classes)
        base_first = next(iter(base.state_dict().values()))
        widths = {1.0} | ({first[0] / base_first.shape[0]} if first is not None and len(first) else set())
        for width in sorted(widths):
            try:
                with torch.device("meta"):
                    candidate = models.build(arch, input_shape, num_classes, width=width)
            except ModelError:  # that width is beyond the architecture's limits: not this one
                continue
            shapes = {n: t.shape for n, t in candidate.state_dict().items()}
            if type(candidate) is type(model) and shapes == state:
                return models.ModelConfig(arch, tuple(input_shape), num_classes, width=width)
    raise NnmarkError(f"cannot rebuild a {type(model).__name__} in a worker: it matches no nnmark architecture "
                      "(pass config=ModelConfig(...))")


def _write_model(model: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int, config,
                 folder: str) -> str:
    """The file the worker loads ``model`` from: a checkpoint when ``config`` (or ``config_for``) rebuilds it, else
    a ``torch.jit.trace`` archive checked on a probe batch; ``NnmarkError`` when neither can carry the model."""
    from nnmark import models

    if config is None:
        try:
            config = config_for(model, input_shape, num_classes)
        except NnmarkError:
            pass
    if config is not None:
        path = os.path.join(folder, "model.safetensors")
        models.save(model, config, path)
        return path
    probe = torch.rand(_PROBE, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, probe[:2], check_trace=False)
        with torch.jit.optimized_execution(False):
            got = traced(probe)
        want = model(probe)
    except Exception as e:  # tracing fails in many ways (control flow, non-tensor outputs, a runtime session)
        raise NnmarkError(f"cannot run a {type(model).__name__} in a worker: it matches no nnmark architecture and "
                          f"torch.jit.trace fails ({type(e).__name__})") from None
    if got.shape != want.shape or (got - want).abs().max() > TRACE_ATOL * want.abs().max().clamp(min=1):
        raise NnmarkError(f"cannot run a {type(model).__name__} in a worker: its torch.jit.trace answers differently "
                          "(data-dependent control flow?)")
    path = os.path.join(folder, "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, path)
    return path


def _read_exact(fd: int, n: int, timeout: float | None) -> bytes:
    """``n`` bytes from ``fd``; short on end of file; ``TimeoutError`` after ``timeout`` s without data."""
    chunks, got = [], 0
    while got < n:
        if timeout is not None and not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _stop(process: subprocess.Popen, stderr) -> None:
    """Ask the worker to exit, kill it if it does not within 5 s, and release its pipes."""
    if process.poll() is None:
        try:
            process.stdin.write(b"Q")
            process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, stderr):
        try:
            stream.close()
        except OSError:
            pass


class WorkerOracle(LogitsOracle):
    """Labels and probabilities of a float32 model run in a subprocess with ``env`` set.

    Args:
        model: the module; copied to the worker once (as a checkpoint or a trace, see the module docstring), so
            later changes to it are not seen.
        input_shape: (C, H, W).
        num_classes: K (default: the model's, from one local forward pass).
        env: environment variables for the worker (e.g. {"ONEDNN_MAX_CPU_ISA": "SSE41"}); the worker's
            OMP_NUM_THREADS is this process's ``torch.get_num_threads()``.
        config: the ``ModelConfig`` to rebuild the model from (default: :func:`config_for`, else a trace).
        budget: the most inputs answered in total (None: no limit).
        timeout: seconds to wait for the worker to start or answer before it is killed.

    The oracle owns the process: use it as a context manager or call :meth:`close`; it is also stopped
    when the oracle is garbage collected and at interpreter exit. A dead or silent worker raises
    ``NnmarkError`` with the end of its stderr.
    """

    access = "probabilities"

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, int, int], num_classes: int | None = None, *,
                 env: dict[str, str] | None = None, config=None, budget: int | None = None, timeout: float = 120.0):
        if timeout <= 0:
            raise ArgumentError("timeout must be > 0")
        if num_classes is None:
            with torch.no_grad():
                num_classes = model.eval()(torch.zeros(1, *input_shape)).shape[1]
        super().__init__(input_shape, num_classes, budget)
        self.env = dict(env or {})
        self.timeout = timeout
        self._lock = threading.Lock()  # one request on the pipes at a time (a server answers from threads)
        with tempfile.TemporaryDirectory(prefix="nnmark-worker-") as folder:
            with torch.no_grad():
                path = _write_model(model.eval(), self.input_shape, self.num_classes, config, folder)
            child_env = {**os.environ, **self.env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
            self._stderr = tempfile.TemporaryFile()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nnmark.oracles.worker", path, ",".join(map(str, self.input_shape))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=child_env,
            )
            self._finalizer = weakref.finalize(self, _stop, self.process, self._stderr)
            kind, body = self._receive()
        if kind != b"R":
            self.close()
            raise NnmarkError(f"worker did not start: {body.decode(errors='replace')}")
        self.info = json.loads(body)
        if self.info["num_classes"] != self.num_classes:
            self.close()
            raise NnmarkError(f"worker model has {self.info['num_classes']} classes, expected {self.num_classes}")

    def close(self) -> None:
        """Stop the worker (idempotent)."""
        self._finalizer()

    def _dead(self, why: str) -> NnmarkError:
        code = self.process.poll()
        try:
            self._stderr.seek(0)
            tail = self._stderr.read()[-600:].decode(errors="replace").strip()
        except (OSError, ValueError):
            tail = ""
        self.close()
        return NnmarkError(f"oracle worker {why} (exit code {code}){': ' + tail if tail else ''}")

    def _receive(self) -> tuple[bytes, bytes]:
        """One message from the worker: (kind, payload after its kind byte)."""
        fd = self.process.stdout.fileno()
        try:
            kind = _read_exact(fd, 1, self.timeout)
            if kind == b"O":
                head = _read_exact(fd, 8, self.timeout)
                if len(head) == 8:
                    n, k = struct.unpack("<II", head)
                    data = _read_exact(fd, 4 * n * k, self.timeout)
                    if len(data) == 4 * n * k:
                        return kind, head + data
            elif kind in (b"R", b"E"):
                head = _read_exact(fd, 4, self.timeout)
                if len(head) == 4:
                    (size,) = _U32.unpack(head)
                    data = _read_exact(fd, size, self.timeout)
                    if len(data) == size:
                        return kind, data
        except TimeoutError:
            raise self._dead(f"gave no answer within {self.timeout:g} s") from None
        raise self._dead("died" if not kind else f"sent a malformed message ({kind!r})")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, K) from the worker, uncounted (callers spent the queries)."""
        data = x.detach().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
        with self._lock:
            if not self._finalizer.alive:
                raise NnmarkError("oracle worker is closed")
            try:
                self.process.stdin.write(b"P" + _U32.pack(len(x)) + data)
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise self._dead("died") from None
            kind, body = self._receive()
        if kind == b"E":
            raise NnmarkError(f"oracle worker failed: {body.decode(errors='replace')}")
        n, k = struct.unpack("<II", body[:8])
        if (n, k) != (len(x), self.num_classes):
            raise self._dead(f"answered shape ({n}, {k}) for ({len(x)}, {self.num_classes})")
        return torch.frombuffer(bytearray(body[8:]), dtype=torch.float32).reshape(n, k)


def _load(path: str) -> torch.nn.Module:
    """The model the parent wrote to ``path`` (``_write_model``): a checkpoint, or a trace run unoptimised."""
    from nnmark import models

    if path.endswith(".safetensors"):
        return models.load(path)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.load(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return traced(x)
    return run


def _serve(path: str, shape: str) -> int:
    """The worker's loop: load the model at ``path`` (inputs of shape "C,H,W"), then answer logits requests until
    told to quit."""
    out = os.dup(1)
    os.dup2(2, 1)  # library output (e.g. ONEDNN_VERBOSE) goes to stderr, never into the protocol
    stdin = sys.stdin.buffer

    def send(kind: bytes, payload: bytes) -> None:
        message = kind + payload
        view = memoryview(message)
        while view:
            view = view[os.write(out, view):]

    input_shape = tuple(int(v) for v in shape.split(","))
    try:
        model = _load(path)
        with torch.no_grad():
            k = model(torch.zeros(1, *input_shape)).shape[1]
    except Exception as e:  # report any load failure to the parent instead of dying silently
        message = f"{type(e).__name__}: {e}".encode()
        send(b"E", _U32.pack(len(message)) + message)
        return 1
    seen = {name: os.environ.get(name) for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")}
    hello = json.dumps({"num_classes": int(k), "env": seen, "torch": torch.__version__,
                        "mkldnn": torch.backends.mkldnn.is_available()}).encode()
    send(b"R", _U32.pack(len(hello)) + hello)
    per_input = 4 * input_shape[0] * input_shape[1] * input_shape[2]
    while True:
        kind = stdin.read(1)
        if kind in (b"", b"Q"):
            return 0
        head = stdin.read(4)
        if kind != b"P" or len(head) != 4:
            return 2
        (n,) = _U32.unpack(head)
        data = stdin.read(n * per_input)
        if len(data) != n * per_input:
            return 2
        x = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(n, *input_shape)
        try:
            with torch.no_grad():
                z = model(x).float().contiguous()
        except Exception as e:  # the parent gets the message and may go on
            message = f"{type(e).__name__}: {e}".encode()
            send(b"E", _U32.pack(len(message)) + message)
            continue
        send(b"O", struct.pack("<II", *z.shape) + z.numpy().astype("<f4", copy=False).tobytes())


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], sys.argv[2]))
