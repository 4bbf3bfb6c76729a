"""``nnmark attack NAME``: change a model as an adversary or an accident would (model -> new model).

One command per entry of ``nnmark.attacks.ATTACKS``, generated from it: the command's help is the attack's
summary and what it applies to; its options are the attack's options (``Spec.options``: the name with
dashes, the type, ``Literal[...]`` as a choice, a bool as a flag, the default from the attack's module and
the parameter's docstring line as help). What every attack shares is written once here: ``--model`` and
``--out``, and the data each kind of attack needs (``DATA``: ``--data`` for the attacker split, ``--to`` for
another domain, the overwriting attack's own watermark set).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import click
import torch

from nnmark import data, models
from nnmark.attacks import ATTACKS, Spec
from nnmark.attacks.distill import SAME_ARCH
from nnmark.attacks.transfer import NEW_DOMAIN
from nnmark.cli._shared import (
    CliError, FiniteFloat, Group, click_option, dataset_for, load_model, model_option, out_option,
)
from nnmark.data.roles import attacker_data
from nnmark.marks.ownership import coupled
from nnmark.suspect import ModelSource

EXAMPLE = "nnmark attack {name} --model lenet5.safetensors --out attacked.safetensors{more}"

DATA_HELP = "Dataset (default: the model's); the attacker uses its attacker split."


def _data_option(help_text: str = DATA_HELP):
    return click.option("--data", "data_spec", help=help_text)


@dataclass(frozen=True)
class _DataSource:
    """How the CLI gets one data kind: its options, a function (config, their values) -> (data, description), and
    what its required options add to a command's example."""

    options: tuple[Callable, ...]
    load: Callable[[models.LoadedModel, dict], tuple[tuple, str]]
    example: str = ""


def _attacker(config: models.LoadedModel, given: dict) -> tuple[tuple, str]:
    split = attacker_data(dataset_for(config, given["data_spec"]))
    return (split.x, split.y), f"on {len(split)} attacker images"


def _domain(config: models.LoadedModel, given: dict) -> tuple[tuple, str]:
    new = data.load_for(given["to_spec"], config)  # converted to the model's input; DataError names both K
    return (new.train,), f"on {given['to_spec']} converted to {tuple(config.input_shape)}"


def _watermark(config: models.LoadedModel, given: dict) -> tuple[tuple, str]:
    ds = dataset_for(config, given["data_spec"])
    split = attacker_data(ds)
    k = given["k"] or math.floor(coupled.WM_FRACTION * len(ds.train))
    try:
        i, j, t = coupled.pick_classes(config.num_classes, given["seed"], given["base"], given["target"])
        x_wm = coupled.make_triggers(split, (i, j), k, kind=given["kind"], r=given["r"],
                                     generator=torch.Generator().manual_seed(given["seed"]))
    except ValueError as e:
        raise CliError(str(e)) from e
    return (x_wm, torch.full((k,), t), split), f"with {k} {given['kind']} triggers {i}, {j} -> {t}"


SOURCES: dict[str, _DataSource] = {
    "none": _DataSource((), lambda config, given: ((), "")),
    "attacker": _DataSource((_data_option(),), _attacker),
    "domain": _DataSource((click.option("--to", "to_spec", default=NEW_DOMAIN, show_default=True,
                                        help="The new domain (same number of classes), resized to the model's input "
                                             "shape; trains on its train split."),), _domain),
    "watermark": _DataSource((
        _data_option("Dataset (default: the model's); triggers and clean data from its attacker split."),
        click.option("--base", type=(int, int), required=True,
                     help="The attacker's base classes i j (its triggers are drawn by --seed)."),
        click.option("--target", type=int, required=True, help="The attacker's target class t."),
        click.option("--kind", type=click.Choice(coupled.KINDS), default=coupled.KINDS[0], show_default=True,
                     help="Trigger fusion (Wen et al. eq. 2b / 3b)."),
        click.option("--r", type=FiniteFloat(), default=coupled.PAPER_RATIOS[0], show_default=True,
                     help="Invisible-fusion ratio r in (0, 1)."),
        click.option("--k", type=click.IntRange(1), help="Number of new triggers (default: under 1% of the training "
                                                          "data, as the owner's)."),
    ), _watermark, " --base 1 2 --target 3"),
}
"""Data kind (``nnmark.attacks.registry.DATA``) -> where the command gets that data."""


def _describe(spec: Spec, values: dict) -> str:
    """"name option value, ...": what the command did, with every option's value."""
    shown = (f"{v:g}" if isinstance(v, float) else str(v) for v in values.values())
    return f"{spec.name} " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in zip(values, shown))


def _command(spec: Spec) -> click.Command:
    data_source = SOURCES[spec.data]
    options = spec.options

    def run(model_source: ModelSource, out: str, **given) -> None:
        model, config = load_model(model_source, needs=spec.model_needs, purpose=f"nnmark attack {spec.name}")
        values = {o.name: given.pop(o.name) for o in options}
        inputs, where = data_source.load(config, {**given, "seed": values.get("seed", 0)})
        result = spec(model, *inputs, **values)
        attacked, report = result if spec.reports else (result, None)
        what = _describe(spec, values) + (f" {where}" if where else "") + (f"; {report}" if report else "")
        _save_attacked(attacked, config, out, what, values.get("student_arch", SAME_ARCH))

    for option in reversed(options):
        run = click_option(option)(run)
    for decorate in reversed(data_source.options):
        run = decorate(run)
    run = model_option(out_option("--out", help="Attacked model to write, as the same kind as --model.")(run))
    example = EXAMPLE.format(name=spec.name, more=data_source.example)
    doc = f"{spec.summary}\n\nApplies to: {spec.applies_to}.\n\n\b\nExample:\n  {example}"
    return click.command(spec.name, help=doc, short_help=spec.summary)(run)


@click.group(cls=Group)
def attack() -> None:
    """Change a model the way an adversary or an accident would (model -> new model).

    \b
    Example:
      nnmark attack finetune --model lenet5.safetensors --out ft.safetensors --lr 1e-4 --steps 100
    """


for _spec in ATTACKS.values():
    attack.add_command(_command(_spec))


def _save_attacked(model: torch.nn.Module, loaded: models.LoadedModel, out: str, what: str, arch: str) -> None:
    """Write the attacked ``model`` as ``loaded``'s source kind, or, for a student of another zoo architecture
    ``arch``, as an nnmark checkpoint of that architecture in pixel space (with its test accuracy if the model names
    its data)."""
    test = data.load_for(loaded.data, loaded).test if loaded.data else None
    accuracy = models.accuracy(model, test) if test is not None else None
    if arch == SAME_ARCH:
        models.save_like(loaded, model, out, accuracy=accuracy)
    else:
        models.save(model, models.ModelConfig(arch, loaded.input_shape, loaded.num_classes, data=loaded.data,
                                              accuracy=accuracy), out)
    acc = "" if accuracy is None else f" (test accuracy {accuracy:.2%})"
    click.echo(f"{what}{acc} -> {out}")
