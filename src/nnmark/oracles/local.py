"""A white-box oracle over a local ``torch.nn.Module``, with the numerics knobs environments vary."""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import warnings
from typing import TYPE_CHECKING

import torch

from nnmark.errors import ArgumentError, InputError
from nnmark.oracles.base import LogitsOracle, LossFn, Oracle, ProbabilitiesOracle

if TYPE_CHECKING:
    from nnmark.models.sources import LoadedModel

CUDA_FLAGS = ("tf32_matmul", "tf32_cudnn", "cudnn_deterministic", "cudnn_benchmark")
"""The CUDA backend flags an environment record holds (``cuda_flags``)."""

# torch warns about Intel-GPU TF32 whenever oneDNN flags are toggled on a CPU build: not ours to act on.
warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")

DEFAULT_BATCH_SIZE = 16
"""Inputs per forward/backward when marking, verifying or attacking a local model (``--batch-size``): peak memory
follows it, not the number of queries (a ResNet-50 at 224x224 takes about 100 MiB per input for a gradient)."""


def cuda_flags() -> dict[str, bool]:
    """The CUDA backend flags in force now: TF32 for matmul and for cuDNN, cuDNN deterministic and benchmark."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


@contextlib.contextmanager
def _cuda_flags_set(flags: dict[str, bool]):
    """Run the block with the CUDA backend ``flags`` (``CUDA_FLAGS``), restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = flags["tf32_matmul"]
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=flags["cudnn_benchmark"],
                                        deterministic=flags["cudnn_deterministic"], allow_tf32=flags["tf32_cudnn"]):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def device_name(device: torch.device) -> str:
    """What ``device`` is: a CUDA card's name, the CPU's model name (else its architecture), or the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name() if device.type == "cpu" else device.type


@functools.cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine() or "cpu"


class ModuleInputs:
    """Context manager: while open, records the input of every ``kind`` module (a type or a tuple of types) of
    ``model`` (flattened per sample).

    ``take()`` returns the recorded tensors, one (N, units) per module call in forward order, and forgets them.
    """

    def __init__(self, model: torch.nn.Module, kind: type[torch.nn.Module] | tuple[type[torch.nn.Module], ...]):
        self.modules = [m for m in model.modules() if isinstance(m, kind)]
        self._handles: list = []
        self._seen: list[torch.Tensor] = []

    def __enter__(self) -> ModuleInputs:
        self._handles = [m.register_forward_pre_hook(self._record) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._seen = [], []

    def _record(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._seen.append(inputs[0].flatten(1))

    def take(self) -> list[torch.Tensor]:
        seen, self._seen = self._seen, []
        return seen


class _Through(torch.nn.Module):
    """``model(transform(x))``."""

    def __init__(self, transform, model: torch.nn.Module):
        super().__init__()
        self.transform, self.model = transform, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


class TorchOracle(LogitsOracle):
    """White-box access to a local model: labels, probabilities, input gradients and hidden activations.

    Args:
        model: a module mapping (N, C, H, W) inputs in [0, 1] to logits (N, K); put in eval mode.
        input_shape: (C, H, W).
        num_classes: K; read from one forward pass when None.
        budget: the most inputs answered in total (None: no limit).
        dtype: the floating type the model runs in (float32, float64, bfloat16).
        mkldnn: False runs every call with oneDNN (mkldnn) disabled.
        batch_size: inputs per forward call; None answers a whole batch in one call, 1 one sample per call.
        autocast_bf16: run every call under ``torch.autocast("cpu", dtype=torch.bfloat16)``; its bfloat16
            logits are widened (exactly) to float32 before softmax and argmax.
        channels_last: run a copy of the model, and the inputs, in channels_last memory format.
        torchscript: run ``torch.jit.freeze(torch.jit.trace(model, example))`` of a copy instead of the
            module (traced once at construction on one all-zero input); input gradients still flow.
        device: where the model runs ("cpu", "cuda", ...); inputs go there and answers come back to the CPU.
        backend_flags: the CUDA backend flags (``CUDA_FLAGS``) every call runs with; None: those in force.

    Labels are the argmax of the logits in ``dtype``; probabilities are its softmax returned as float32,
    as an endpoint would send them. The caller's module is never modified: options that change it work
    on a copy.
    """

    access = "internals"

    def __init__(
        self,
        model: torch.nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        budget: int | None = None,
        dtype: torch.dtype = torch.float32,
        mkldnn: bool = True,
        batch_size: int | None = None,
        autocast_bf16: bool = False,
        channels_last: bool = False,
        torchscript: bool = False,
        device: str | torch.device = "cpu",
        backend_flags: dict[str, bool] | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ArgumentError("batch_size must be >= 1 or None")
        if backend_flags is not None and set(backend_flags) != set(CUDA_FLAGS):
            raise ArgumentError(f"backend_flags must name exactly {', '.join(CUDA_FLAGS)}")
        self.module = model
        self.model = model.eval()
        self.dtype = dtype
        self.mkldnn = mkldnn
        self.batch_size = batch_size
        self.autocast_bf16 = autocast_bf16
        self.channels_last = channels_last
        self.torchscript = torchscript
        self.backend_flags = backend_flags
        self.device = torch.device(device)
        if dtype != torch.float32 or channels_last or self.device.type != "cpu":
            self.model = copy.deepcopy(self.model).to(self.device, dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        example = torch.zeros(1, *input_shape, dtype=dtype)
        if torchscript:
            with torch.no_grad(), self._numerics(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", DeprecationWarning)
                self.model = torch.jit.freeze(torch.jit.trace(copy.deepcopy(self.model), self._placed(example)))
        if num_classes is None:
            with torch.no_grad(), self._numerics():
                num_classes = self._forward(self._placed(example)).shape[1]
        super().__init__(input_shape, num_classes, budget)

    def seen_through(self, transform) -> TorchOracle:
        """A float32 TorchOracle over ``transform`` then the model (``Oracle.seen_through``)."""
        return TorchOracle(_Through(transform, self.model), self.input_shape, self.num_classes, budget=self.budget,
                           dtype=self.dtype, device=self.device)

    def environment(self) -> dict:
        """Where and how this oracle runs its model, as a key records it: the numerics options (device type,
        dtype, oneDNN, batch size, bfloat16 autocast, channels_last, TorchScript), the CUDA backend flags (TF32,
        cuDNN deterministic and benchmark), and what cannot be chosen here (device name, torch version, threads)."""
        return {
            "device": self.device.type, "dtype": str(self.dtype).removeprefix("torch."),
            "mkldnn": self.mkldnn and bool(torch.backends.mkldnn.enabled), "batch_size": self.batch_size,
            "autocast_bf16": self.autocast_bf16, "channels_last": self.channels_last, "torchscript": self.torchscript,
            **(self.backend_flags or cuda_flags()),
            "device_name": device_name(self.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        }

    def module_inputs(self, kind: type[torch.nn.Module] | tuple[type[torch.nn.Module], ...]) -> ModuleInputs:
        """Records the inputs of the model's ``kind`` modules (a type or a tuple of types) during this oracle's calls
        (use as a context manager)."""
        return ModuleInputs(self.model, kind)

    def _numerics(self):
        stack = contextlib.ExitStack()
        if not self.mkldnn:
            stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        if self.autocast_bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if self.backend_flags is not None:
            stack.enter_context(_cuda_flags_set(self.backend_flags))
        return stack

    def _placed(self, c: torch.Tensor) -> torch.Tensor:
        """``c`` in this oracle's dtype, device and memory format."""
        c = c.to(self.device, self.dtype)
        return c.contiguous(memory_format=torch.channels_last) if self.channels_last else c

    def _forward(self, c: torch.Tensor) -> torch.Tensor:
        """The model's logits for an already placed chunk (bfloat16 autocast outputs widened to float32)."""
        out = self.model(c)
        return out.float() if self.autocast_bf16 else out

    def _chunks(self, x: torch.Tensor):
        step = x.shape[0] if self.batch_size is None else self.batch_size
        return x.split(step)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) in ``dtype`` (float32 under bfloat16 autocast), uncounted (callers spent the queries)."""
        with torch.no_grad(), self._numerics():
            out = torch.cat([self._forward(self._placed(c)) for c in self._chunks(x)]).cpu()
        if out.shape != (x.shape[0], self.num_classes):
            raise InputError(f"model returned shape {tuple(out.shape)}, expected ({x.shape[0]}, {self.num_classes})")
        return out

    def _gradient(self, loss_fn: LossFn, x: torch.Tensor, on: str,
                  per_sample: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        losses, grads = [], []
        with self._numerics():
            for c, *rows in zip(self._chunks(x), *map(self._chunks, per_sample)):
                c = self._placed(c.detach()).requires_grad_(True)
                out = self._forward(c)
                loss = loss_fn(torch.softmax(out, dim=1) if on == "probabilities" else out,
                               *(r.to(c.device) for r in rows))
                if loss.shape != (c.shape[0],):
                    raise ArgumentError(f"loss_fn must return one value per sample, got shape {tuple(loss.shape)}")
                (g,) = torch.autograd.grad(loss.sum(), c)
                losses.append(loss.detach().cpu())
                grads.append(g.cpu().contiguous())
        return torch.cat(losses).to(x.dtype), torch.cat(grads).to(x.dtype)


def model_oracle(loaded: LoadedModel, *, budget: int | None = None) -> Oracle:
    """An oracle over ``loaded.model`` (any source kind, pixel space [0, 1], the card's shape and K).

    White box where the kind gives gradients; otherwise (ONNX Runtime) probabilities and labels only, so a method
    that needs gradients gets a one-line ``AccessError`` instead of a failed backward pass.
    """
    card = loaded.card
    if loaded.access == "gradients":
        return TorchOracle(loaded.model, card.input_shape, card.num_classes, budget=budget)
    return ProbabilitiesOracle(TorchOracle(loaded.model, card.input_shape, card.num_classes), budget)
