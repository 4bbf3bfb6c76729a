"""``nnmark attack NAME``: change a model as an adversary or an accident would (model -> new model).

One command per entry of ``nnmark.attacks.ATTACKS``, generated from it: the command's help is the attack's
summary and what it applies to; its options are the attack's options (``Spec.options``: the name with
dashes, the type, ``Literal[...]`` as a choice, a bool as a flag, the default from the attack's module and
the parameter's docstring line as help). What every attack shares is written once here: ``--model``,
``--out`` and ``--json``, and the data each kind of attack needs (``DATA``: ``--data`` for the attacker split,
``--to`` for another domain, the overwriting attack's own watermark set). An attack registered with an ``oracle``
form (extraction: it needs nothing but answers) takes the suspect options of ``verify`` instead of ``--model``
(``cli.suspect.suspect_options``): exactly one of ``--model`` and ``--endpoint``, the endpoint asked through the
one builder every command uses, and its copy written as an nnmark checkpoint of its zoo ``--student-arch``. An attack
that trains (it has ``--lr``) also takes ``--micro-batch`` (``models.training.micro_batches``).
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
    CliError, FiniteFloat, Group, click_option, dataset_for, device_option, emit, json_option, load_model,
    micro_batch_option, model_option, out_option,
)
from nnmark.cli.suspect import ENDPOINT_OPTIONS, SuspectOptions, suspect_options
from nnmark.data import Dataset, Split
from nnmark.data.roles import attacker_data
from nnmark.marks.ownership import coupled
from nnmark.models.training import micro_batches
from nnmark.suspect import DEFAULT_ENV, ModelSource

EXAMPLE = "nnmark attack {name} --model lenet5.safetensors --out attacked.safetensors{more}"
ENDPOINT_EXAMPLE = ("nnmark attack {name} --endpoint http://127.0.0.1:8000 --token-file token --data mnist5k@thief "
                    "--student-arch lenet5 --out stolen.safetensors")

OUT_HELP = ("Attacked model to write, as the same kind as --model.",
            "Copy to write: the same kind as --model, or an nnmark checkpoint of another --student-arch (always with "
            "--endpoint).")
DATA_HELP = ("Dataset (default: the model's). The attacker's images: the training split of a spec ending @thief (the "
             "thief's half), else the attacker split (the second half of the test split).")
THIEF_HELP = DATA_HELP.replace("(default: the model's)", "(default: the model's; required with --endpoint)")
MICRO_BATCH = micro_batch_option()


def _data_option(help_text: str = DATA_HELP):
    return click.option("--data", "data_spec", help=help_text)


@dataclass(frozen=True)
class _DataSource:
    """How the CLI gets one data kind: its options, a function (config, their values) -> (data, description), and
    what its required options add to a command's example."""

    options: tuple[Callable, ...]
    load: Callable[[models.LoadedModel, dict], tuple[tuple, str]]
    example: str = ""


def thief_images(ds: Dataset) -> Split:
    """The attacker's own images: the training split of a spec ending @thief (the thief's half of ``data.halves``),
    else the attacker split (``roles.attacker_data``), whether the attack runs on a --model or an --endpoint."""
    return ds.train if ds.name.endswith("@thief") else attacker_data(ds)


def _attacker(config: models.LoadedModel, given: dict) -> tuple[tuple, str]:
    split = thief_images(dataset_for(config, given["data_spec"]))
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

    def run(out: str, as_json: bool, **given) -> None:
        values = {o.name: given.pop(o.name) for o in options}
        with micro_batches(given.pop("micro_batch", None)):
            attack_and_write(out, as_json, values, given)

    def attack_and_write(out: str, as_json: bool, values: dict, given: dict) -> None:
        suspect = given.pop("suspect", None)
        if suspect is not None and suspect.endpoints:
            _on_endpoint(spec, suspect, values, given["data_spec"], out, as_json)
            return
        source = given.pop("model_source") if suspect is None else _local(suspect)
        device = given.pop("device") if suspect is None else suspect.device
        model, config = load_model(source, needs=spec.model_needs, purpose=f"nnmark attack {spec.name}")
        inputs, where = data_source.load(config, {**given, "seed": values.get("seed", 0)})
        result = spec(model.to(device), *inputs, **values)
        attacked, report = result if spec.reports else (result, None)
        what = _describe(spec, values) + (f" {where}" if where else "") + (f"; {report}" if str(report or "") else "")
        arch = values.get("student_arch", SAME_ARCH)
        write = _like(config) if arch == SAME_ARCH else _checkpoint(arch, config, config.data)
        test = data.load_for(config.data, config).test if config.data else None
        _finish(attacked, test, write, what, out, as_json, {"attack": spec.name, "model": source.path})

    for option in reversed(options):
        run = click_option(option)(run)
    if any(o.name == "lr" for o in options):
        run = MICRO_BATCH(run)
    for decorate in reversed((_data_option(THIEF_HELP),) if spec.oracle else data_source.options):
        run = decorate(run)
    run = out_option("--out", help=OUT_HELP[bool(spec.oracle)])(json_option(run))
    examples = [EXAMPLE.format(name=spec.name, more=data_source.example)]
    if spec.oracle:
        run = suspect_options(run, taken=tuple(o.name for o in options if o.name in ENDPOINT_OPTIONS))
        examples.append(ENDPOINT_EXAMPLE.format(name=spec.name))
    else:
        run = model_option(device_option(run, help="Where the attack runs on --model: cpu, cuda, cuda:N, mps, or "
                                                   "auto (the first accelerator); the file written is the same on any "
                                                   "device."))
    doc = f"{spec.summary}\n\nApplies to: {spec.applies_to}.\n\n\b\nExample:\n  " + "\n  ".join(examples)
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


def _local(suspect: SuspectOptions) -> ModelSource:
    """The --model of an attack that can also run on an endpoint; the endpoint's query options are refused."""
    if suspect.budget is not None or suspect.env != DEFAULT_ENV:
        raise CliError("--budget and --env: only with --endpoint (an attack on --model changes the model itself; "
                       "--queries says how many the thief asks)")
    return suspect.model


def _on_endpoint(spec: Spec, suspect: SuspectOptions, values: dict, data_spec: str | None, out: str,
                 as_json: bool) -> None:
    """Run ``spec``'s oracle form against the --endpoint on the thief's images of ``data_spec`` (converted to the
    endpoint's input shape), and write the copy as a checkpoint of its --student-arch."""
    if not data_spec:
        raise CliError("--endpoint needs --data: the thief's own images")
    with suspect.opened() as (oracle, where, _):
        ds = data.load_for(data_spec, models.ModelCard(oracle.input_shape, oracle.num_classes))
        thief = thief_images(ds)
        result = spec.oracle(oracle, thief.x, thief.y, **values)
        queries = oracle.queries
    copy = result[0] if spec.reports else result
    what = (f"{_describe(spec, values)} on {len(thief)} thief images of {data_spec} from {where['endpoint']}; "
            f"{queries} queries spent")
    _finish(copy, ds.test, _checkpoint(values["student_arch"], oracle, data_spec), what, out, as_json,
            {"attack": spec.name, **where, "queries": queries})


def _like(loaded: models.LoadedModel) -> Callable:
    """Writes an attacked model of ``loaded``'s architecture as ``loaded``'s source kind."""
    return lambda model, accuracy, out: models.save_like(loaded, model, out, accuracy=accuracy)


def _checkpoint(arch: str, shape: data.ModelInput, data_spec: str | None) -> Callable:
    """Writes a student of zoo architecture ``arch`` as an nnmark checkpoint in pixel space, for ``shape``'s input
    shape and classes, naming ``data_spec``."""
    def write(model: torch.nn.Module, accuracy: float | None, out: str) -> None:
        models.save(model, models.ModelConfig(arch, shape.input_shape, shape.num_classes, data=data_spec,
                                              accuracy=accuracy), out)
    return write


def _finish(model: torch.nn.Module, test: Split | None, write: Callable, what: str, out: str, as_json: bool,
            row: dict) -> None:
    """Write ``model`` (``write(model, accuracy, out)``) with its accuracy on ``test`` (None: not measured), and
    print what was done: ``what``, or with ``as_json`` one object, ``row`` with the output and the accuracy."""
    accuracy = models.accuracy(model, test) if test is not None else None
    write(model.cpu(), accuracy, out)
    acc = "" if accuracy is None else f" (test accuracy {accuracy:.2%})"
    emit({**row, "out": out, "test_accuracy": accuracy}, as_json, f"{what}{acc} -> {out}")
