"""The model card: what a classifier expects (input shape, classes, preprocessing), and the wrapper that applies it.

Every method works in pixel space: queries are (N, C, H, W) in [0, 1], so PSNR, SSIM and the [0, 1] clip mean
what they say. A model trained on normalised inputs receives ``(x - mean) / std`` per channel; ``Normalized``
makes that step part of the model as the oracle sees it, and the card written into every key file records it,
so a later check (in memory, on disk or behind an endpoint) asks the same question.

Example::

    card = ModelCard((3, 32, 32), 10, normalize=parse_normalize("imagenet", channels=3))
    oracle = TorchOracle(Normalized(model, card), card.input_shape)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nnmark.errors import ModelError

MAX_CHANNELS = 16
MAX_SIDE = 4096
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 200
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
NORMALIZE_HELP = "none | imagenet | MEAN,STD (every channel) | M1,..,MC,S1,..,SC (per channel)"

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
"""(mean, std), one value per channel: the model receives (x - mean) / std of pixels x in [0, 1]."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_normalize(normalize: object, channels: int) -> Normalization | None:
    if normalize is None:
        return None
    if not (isinstance(normalize, (tuple, list)) and len(normalize) == 2):
        raise ModelError(f"normalize must be null or [mean, std], got {normalize!r}")
    out = []
    for name, values in zip(("mean", "std"), normalize):
        if not (isinstance(values, (tuple, list)) and len(values) == channels):
            raise ModelError(f"normalize {name} must hold {channels} number(s), one per channel, got {values!r}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ModelError(f"normalize {name} must be finite numbers, got {values!r}")
        out.append(tuple(float(v) for v in values))
    if not all(s > 0 for s in out[1]):
        raise ModelError(f"normalize std must be > 0 in every channel, got {out[1]}")
    return out[0], out[1]


@dataclass(frozen=True)
class ModelCard:
    """What a classifier expects; validated on creation.

    Args:
        input_shape: (C, H, W) of one input, C <= MAX_CHANNELS, H and W <= MAX_SIDE.
        num_classes: K, 2 <= K <= MAX_CLASSES.
        class_names: K names (each at most MAX_CLASS_NAME characters), or None.
        normalize: None, or (mean, std) with C values each (std > 0): the model receives (x - mean) / std.
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    normalize: Normalization | None = None

    def __post_init__(self) -> None:
        shape = self.input_shape
        if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(_is_int(d) and d >= 1 for d in shape)):
            raise ModelError(f"input shape must be 3 positive integers (C, H, W), got {shape!r}")
        if shape[0] > MAX_CHANNELS or max(shape[1:]) > MAX_SIDE:
            raise ModelError(f"input shape {tuple(shape)} is too large (at most {MAX_CHANNELS} channels, "
                             f"sides of {MAX_SIDE})")
        if not _is_int(self.num_classes) or not 2 <= self.num_classes <= MAX_CLASSES:
            raise ModelError(f"num_classes must be an integer in [2, {MAX_CLASSES}], got {self.num_classes!r}")
        names = self.class_names
        if names is not None:
            if not (isinstance(names, (tuple, list)) and len(names) == self.num_classes):
                raise ModelError(f"class_names must hold {self.num_classes} names, got {names!r:.80}")
            if not all(isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME for n in names):
                raise ModelError(f"class names must be non-empty strings of at most {MAX_CLASS_NAME} characters")
            object.__setattr__(self, "class_names", tuple(names))
        object.__setattr__(self, "input_shape", tuple(shape))
        object.__setattr__(self, "normalize", _check_normalize(self.normalize, shape[0]))

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists, not tuples) that ``from_dict`` reads back."""
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "normalize": None if self.normalize is None else [list(self.normalize[0]), list(self.normalize[1])],
        }

    @classmethod
    def from_dict(cls, d: object) -> ModelCard:
        """The card ``d`` (from ``to_dict``, e.g. read from a key file) describes; ModelError if it is malformed."""
        fields = {"input_shape", "num_classes", "class_names", "normalize"}
        if not isinstance(d, dict):
            raise ModelError(f"a model card must be a JSON object, got {type(d).__name__}")
        if unknown := sorted(set(d) - fields):
            raise ModelError(f"model card has unknown field(s): {', '.join(map(str, unknown))}")
        if missing := sorted({"input_shape", "num_classes"} - set(d)):
            raise ModelError(f"model card lacks field(s): {', '.join(missing)}")
        return cls(**d)


def parse_normalize(text: str, channels: int) -> Normalization | None:
    """The normalisation ``text`` names for a ``channels``-channel model (see NORMALIZE_HELP); ModelError if bad."""
    text = text.strip().lower()
    if text == "none":
        return None
    if text in PRESETS:
        mean, std = PRESETS[text]
        if len(mean) != channels:
            raise ModelError(f"--normalize {text} is for {len(mean)}-channel input, the model has {channels}")
        return mean, std
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ModelError(f"--normalize must be {NORMALIZE_HELP}, got {text!r}") from None
    if len(values) == 2:
        values = [values[0]] * channels + [values[1]] * channels
    if len(values) != 2 * channels:
        counts = "2" if channels == 1 else f"2 or {2 * channels}"
        raise ModelError(f"--normalize needs {counts} numbers for {channels} channel(s), got {len(values)}")
    return _check_normalize((values[:channels], values[channels:]), channels)


class Normalized(nn.Module):
    """``model`` behind its card's normalisation: forward(x) = model((x - mean) / std) for pixels x in [0, 1].

    mean and std are non-persistent buffers, so the state dict is ``model``'s under the prefix ``model.``.
    """

    def __init__(self, model: nn.Module, normalize: Normalization):
        super().__init__()
        self.model = model
        mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in normalize)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def pixel_model(model: nn.Module, card: ModelCard) -> nn.Module:
    """``model`` as it sees pixels in [0, 1]: wrapped in ``Normalized`` when the card normalises, else itself."""
    return model if card.normalize is None else Normalized(model, card.normalize)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``Normalized`` wrapper (the one a source kind saves), else ``model`` itself."""
    return model.model if isinstance(model, Normalized) else model
