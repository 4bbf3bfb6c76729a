"""``nnmark bench NAME``: one subcommand per benchmark module in ``nnmark.bench``; each writes to docs/.

The benchmarks in ANY_MODEL also take ``--model`` (with ``--weights``, ``--input-shape``, ``--normalize``) and
``--data``: they train one model per seed, and with ``--model`` each seed trains a fresh model of that source's
architecture (a ``package.module:factory`` or an nnmark checkpoint; the weights it holds are not used) on ``--data``
converted to its card, with its normalisation inside the model, so the tables have the same rows as the zoo run.
TorchScript, torch.export and ONNX sources cannot be trained and are refused in one line (exit 2). The tables name
the model (source kind, card, accuracy) and go to ``NAME-MODEL.md``, next to the zoo's ``NAME.md``.

The benchmarks in SETTABLE also take ``--set NAME=VALUE`` (repeatable): one parameter of the run changed (VALUE in
JSON), checked by the module before anything is trained and named in the report's command.
"""

from __future__ import annotations

import importlib
import inspect
import json

import click

from nnmark.cli._shared import (
    MODEL_HELP, CliError, Group, device_option, load_model, model_source_options, with_model_source, with_progress,
)
from nnmark.suspect import ModelSource

BENCHMARKS = {
    "dbi": ("dbi", "DBI vs natural and random samples under fine-tuning and weight noise (Yin et al., Tables 4 and 8)."),
    "integrity": ("integrity", "Validset, DBI, AID and Pairs under backdoor, fine-tuning, pruning and int8 quantization "
                  "(Gao et al.)."),
    "ownership-fingerprint": ("metafinger", "MetaFinger and IPGuard under model and input modifications, and on "
                              "independent models (Yang et al.)."),
    "ownership": ("ownership", "SAC, MetaFinger, IPGuard and embedded watermarks against a thief's distilled, "
                  "extracted and retrained copies, vs independent models (TPR at zero false claims, AUC, audit)."),
    "ownership-pools": ("metafinger_pools", "MetaFinger pool study: thief-aware pool designs (attacked copies as "
                        "positives, distilled independents as negatives), their cost and what they buy."),
    "ownership-api": ("dawn", "DAWN: a served API watermarks the copies a thief extracts through it, vs independent "
                      "models (served accuracy, TPR at zero false claims, AUC)."),
    "ownership-watermark": ("coupled", "Function-coupled watermarks vs backdoor and frontier-stitching watermarks "
                            "under fine-tuning, transfer, pruning and overwriting (Wen et al.)."),
    "trace": ("trace", "Which licensee leaked it: license / trace's two schemes through thefts, collusion and "
              "independent models."),
    "audit": ("audit", "Queries to a decision, sequential vs whole key, and the false-claim rate of early stopping."),
    "telltale": ("innformant", "iNNformant boundary samples: success, PSNR, steps, cost and identify through "
                 "nnmark serve."),
    "cli": ("cli", "Cold start of nnmark --help, --version, models.load and verify beside a bare import torch."),
    "endpoints": ("endpoints", "Verify locally and over REST JSON, REST binary and gRPC against nnmark serve, MLServer "
                  "and KServe: wall time, bytes and the ratio to local."),
    "scale": ("scale", "Seconds, ratio to the forward+backward floor and peak memory of every model-alone method from "
              "LeNet-5 to ResNet-50 and ViT-S/16, with projections to the default iterations."),
    "sources": ("sources", "Load, forward and gradient cost of the same weights as eager torch, TorchScript, "
                "torch.export and ONNX (torch operators and ONNX Runtime)."),
    "watch": ("watch", "nnmark watch against nnmark serve replicas: CPU, memory, swap to alert, outages, key exposure."),
}
"""Benchmark command name -> (module in nnmark.bench, help)."""
ANY_MODEL = ("dbi", "integrity")
"""The benchmarks that take --model and --data."""
SETTABLE = ("ownership",)
"""The benchmarks whose parameters ``--set`` changes (their ``run`` takes ``overrides``)."""
SET_HELP = ("Change one parameter of the run: NAME=VALUE, VALUE in JSON (a bare word is a string); repeatable. NAME "
            "is one of the report's Parameters (victims, watermarks, watermark_thefts, epochs, ...); the report's "
            "command names each change.")
ANY_MODEL_HELP = ("\n\nWith --model, every seed trains a fresh model of that source's architecture (a "
                  "package.module:factory or an nnmark checkpoint; the weights it holds are not used) on --data "
                  "converted to its input shape, its normalisation inside, so the tables have the same rows; "
                  "TorchScript, torch.export and ONNX models cannot be trained and are refused. Its tables go to "
                  "NAME-MODEL.md beside the zoo's.")


@click.group(cls=Group)
def bench() -> None:
    """Run a benchmark and write its tables to docs/benchmarks/.

    \b
    Example:
      nnmark bench dbi --quick --out-dir /tmp/bench
    """


def _foreign(source: ModelSource | None, data_spec: str | None) -> dict:
    """The ``run`` arguments for --model and --data: none without --model (and an error if --data is given)."""
    if source is None:
        if data_spec is not None:
            raise CliError("--data: only with --model")
        return {}
    _, loaded = load_model(source)
    return {"model": loaded, "data_spec": data_spec}


def _overrides(settings: tuple[str, ...]) -> dict:
    """The ``run`` argument for --set: ``{"overrides": {NAME: VALUE}}`` from NAME=VALUE options (VALUE parsed as
    JSON, else kept as a string); none without --set."""
    overrides = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise CliError(f"--set {setting!r}: give NAME=VALUE, e.g. --set 'victims=[\"resnet20\"]'")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return {"overrides": overrides} if overrides else {}


def _on_device(run, name: str, device: str) -> dict:
    """The ``run`` argument for --device: ``device`` where the benchmark takes one; a benchmark that does not runs on
    the CPU, and another device is refused."""
    if "device" in inspect.signature(run).parameters:
        return {"device": device}
    if device != "cpu":
        raise CliError(f"bench {name} runs on the CPU only: --device cpu")
    return {}


def _model_options(f):
    """--model, its source options and --data, for the benchmarks in ANY_MODEL."""
    f = click.option("--data", "data_spec", help="With --model: the data to train and mark it on (mnist5k, digits, "
                     "cifar10:DIR, npz:FILE, folder:DIR; default: the dataset its checkpoint names).")(f)
    f = model_source_options(with_model_source(f))
    return click.option("--model", "model_path", type=click.Path(dir_okay=False),
                        help=f"{MODEL_HELP} Its architecture replaces the zoo's (see above).")(f)


def _bench_command(name: str, module: str, doc: str) -> None:
    any_model = name in ANY_MODEL
    example = f"nnmark bench {name} --quick" + (" --set 'watermark_thefts=[\"RTAL\"]'" if name in SETTABLE else "")
    example += " --out-dir /tmp/bench"
    if any_model:
        example += (f"\n  nnmark bench {name} --model nnmark.bench.heldout:groupnorm_gelu --normalize imagenet "
                    "--data mnist5k --seeds 1")

    @with_progress
    def command(quick, seeds, out_dir, device, progress, model_source=None, data_spec=None, settings=()) -> None:
        bench_module = importlib.import_module(f"nnmark.bench.{module}")
        path = bench_module.run(quick=quick, seeds=seeds, out_dir=out_dir, progress=progress,
                                **_on_device(bench_module.run, name, device), **_foreign(model_source, data_spec),
                                **_overrides(settings))
        click.echo(f"wrote {path}")

    if any_model:
        command = _model_options(command)
    if name in SETTABLE:
        command = click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help=SET_HELP)(command)
    command = device_option(command, help="Where the models run: cpu, cuda, cuda:N, mps, or auto (the first "
                                          "accelerator); a benchmark that runs on the CPU only refuses another.")
    command = click.option("--out-dir", type=click.Path(file_okay=False), default="docs/benchmarks",
                           show_default=True)(command)
    command = click.option("--seeds", type=click.IntRange(1),
                           help="Number of seeds (default: the full run's, quick 1).")(command)
    command = click.option("--quick", is_flag=True,
                           help="Minutes, not the full run: fewer seeds, samples and iterations.")(command)
    bench.command(name, short_help=doc,
                  help=f"{doc}{ANY_MODEL_HELP if any_model else ''}\n\n\b\nExample:\n  {example}")(command)


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)
