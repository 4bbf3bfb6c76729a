"""The model a benchmark trains once per seed: a zoo architecture, or the architecture of a ``--model`` source.

``zoo(arch)`` is nnmark's own architecture (the committed zoo results). ``foreign(loaded, data_spec)`` takes a
``models.LoadedModel`` that can be trained (a ``package.module:factory`` or an nnmark checkpoint): every seed gets a
``loaded.fresh()`` (its factory behind the card's normalisation), trained on ``data_spec`` as the card
takes it (``data.load_for``: channels converted, resized bilinearly), so methods and attacks work in pixel space
[0, 1] and the tables have the same rows as the zoo run. The weights the source holds are not used (the benchmark
trains its own, one model per seed). Sources that cannot be trained (TorchScript, torch.export, ONNX) are refused
in one line: the benchmarks fine-tune, backdoor and retrain models, and a table without those rows would not be
the same table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from nnmark import data, models
from nnmark.bench.common import ARCH_NAMES
from nnmark.data.conform import DEFAULT_INTERPOLATION
from nnmark.errors import ArgumentError
from nnmark.models.card import PRESETS

Builder = Callable[[tuple[int, int, int], int], nn.Module]
"""(input shape, number of classes) -> a fresh, untrained model in pixel space [0, 1]."""
PURPOSE = "a benchmark with --model (it trains a fresh model per seed)"


@dataclass(frozen=True)
class Subject:
    """What a benchmark trains.

    Args:
        name: how the tables name the model.
        build: a fresh model per call (the caller seeds torch's RNG).
        card: the foreign model's card (the data are converted to it), None for a zoo architecture.
        data: the foreign model's dataset spec, None for a zoo architecture (the benchmark's cases name theirs).
        record: the foreign source as the JSON result keeps it (spec, kind, card, data), empty for a zoo one.
    """

    name: str
    build: Builder
    card: models.ModelCard | None = None
    data: str | None = None
    record: dict = field(default_factory=dict)

    def dataset(self, spec: str) -> data.Dataset:
        """The dataset ``spec`` as this model takes it."""
        return data.load(spec) if self.card is None else data.load_for(spec, self.card)

    def result_fields(self) -> dict:
        """What a result records of the model: nothing for a zoo architecture, else ``{"model": record}``."""
        return {"model": self.record} if self.record else {}

    def stem(self, bench: str) -> str:
        """The output files' stem: ``bench`` for the zoo, ``bench-NAME`` for a foreign model (never the zoo's)."""
        return f"{bench}-{self.record['slug']}" if self.record else bench

    def command(self, bench: str) -> str:
        """``bench`` and the options that name this model (what ``common.header`` puts after ``nnmark bench``)."""
        if not self.record:
            return bench
        r = self.record
        shape = ",".join(map(str, r["card"]["input_shape"]))
        return (f"{bench} --model {r['spec']} --input-shape {shape} --normalize {_normalize_option(r['card'])} "
                f"--data {r['data']}")


def zoo(arch: str) -> Subject:
    """nnmark's own architecture ``arch`` (a key of ``models.ARCHITECTURES``)."""
    return Subject(ARCH_NAMES.get(arch, arch), lambda shape, k: models.build(arch, shape, k))


def foreign(loaded: models.LoadedModel, data_spec: str | None = None) -> Subject:
    """The architecture of ``loaded`` (a source that can be trained), trained on ``data_spec`` (default: the dataset
    its checkpoint names); ModelError if the source cannot be trained, ArgumentError if there is no dataset."""
    loaded.require("training", PURPOSE)
    data_spec = data_spec or loaded.data
    if not data_spec:
        raise ArgumentError(f"{loaded.spec} names no dataset to train it on: pass --data")
    card = loaded.card
    name, slug = _names(loaded.spec, loaded.kind)
    record = {"name": name, "slug": slug, "spec": loaded.spec, "kind": loaded.kind, "card": card.to_dict(),
              "data": data_spec}
    return Subject(name, lambda shape, k: loaded.fresh(), card, data_spec, record)


def describe(record: dict) -> str:
    """A paragraph naming a foreign model (from a result's ``model`` record): source, card and data."""
    card = record["card"]
    c, h, w = card["input_shape"]
    norm = card["normalize"]
    seen = ("pixels x in [0, 1]" if norm is None else
            f"(x - mean) / std of pixels x in [0, 1], mean {_numbers(norm[0])}, std {_numbers(norm[1])}")
    return (f"Model: `{record['spec']}`, a {record['kind']} source: every seed trains a fresh model of its "
            "architecture (the weights the source holds are not used). "
            f"Card: input {c}x{h}x{w}, {card['num_classes']} classes; the model receives {seen}. Data: "
            f"{record['data']} as the card takes it (channels converted, {DEFAULT_INTERPOLATION} resize to {h}x{w}).")


def fewer_seeds(seeds: int, full: int, command: str) -> str:
    """A sentence for a run's intro when it ran fewer seeds than the full run (and was not ``--quick``), else ""."""
    if seeds >= full or "--quick" in command.split():
        return ""
    return f" {seeds} seed(s) instead of the full run's {full} (`--seeds`), to keep the run time sane on this machine."


def _names(spec: str, kind: str) -> tuple[str, str]:
    """How tables name the source (the factory's or the file's name) and the file-name part for its outputs
    (``module-factory`` with the module's last part, or the file's stem)."""
    if kind == "factory":
        module, _, name = spec.partition(":")
        slug = f"{module.rsplit('.', 1)[-1]}-{name}"
    else:
        name = slug = Path(spec).stem
    return name, re.sub(r"[^A-Za-z0-9_.-]", "_", slug)


def _numbers(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _normalize_option(card: dict) -> str:
    """The ``--normalize`` value that gives ``card``'s normalisation: none, a preset's name, or the numbers."""
    norm = card["normalize"]
    if norm is None:
        return "none"
    for name, (mean, std) in PRESETS.items():
        if list(mean) == norm[0] and list(std) == norm[1]:
            return name
    return ",".join(map(str, norm[0] + norm[1]))
