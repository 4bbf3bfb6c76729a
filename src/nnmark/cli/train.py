"""``nnmark train``: a fresh model trained on a dataset and saved: a zoo architecture (``--arch``, written as an
nnmark checkpoint) or a user's ``package.module:factory`` (``--model``, written as safetensors weights with the model
card)."""

from __future__ import annotations

import time

import click

from nnmark import models
from nnmark.cli._shared import (
    CliError, FiniteFloat, device_option, emit, json_option, micro_batch_option, model_source_options, model_to_train,
    out_option, with_model_source, with_progress,
)
from nnmark.models.training import micro_batches

DEFAULT_EPOCHS = 8


@click.command()
@click.option("--arch", type=click.Choice(models.ARCHITECTURES),
              help="Zoo architecture; it takes pixels in [0, 1] as they are (no --normalize).")
@click.option("--model", "model_path", metavar="PACKAGE.MODULE:FACTORY",
              help="Or your own architecture: the factory's fresh model (with --input-shape and --normalize).")
@model_source_options
@click.option("--data", "data_spec", required=True, help="mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR.")
@click.option("--epochs", type=click.IntRange(1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=models.DEFAULT_LR, show_default=True,
              help="Adam learning rate (cosine decay).")
@click.option("--batch-size", type=click.IntRange(1), default=models.DEFAULT_BATCH_SIZE, show_default=True)
@micro_batch_option()
@click.option("--width", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True,
              help="Channel width multiplier (--arch only).")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and batch order.")
@device_option(help="Where it trains: cpu, cuda, cuda:N, mps, or auto (the first accelerator); the file written is "
                    "the same on any device.")
@out_option("--out", help="Checkpoint (--arch) or weights (--model, the same kind) to write (.safetensors).")
@json_option
@with_model_source
@with_progress
def train(arch, model_source, data_spec, epochs, lr, batch_size, micro_batch, width, seed, device, out, as_json,
          progress) -> None:
    """Train a fresh model on a dataset and save it: a zoo architecture, or your own factory's.

    A --model factory is trained in pixel space [0, 1] with its --normalize inside, on the data converted to its
    --input-shape (gray <-> RGB, resized); the weights are written with the model card, so they load again with
    just --model and --weights. A zoo --arch model takes pixels in [0, 1] as they are: --normalize, --input-shape
    and --weights go with --model only.

    \b
    Example:
      nnmark train --arch lenet5 --data mnist5k --epochs 8 --out lenet5.safetensors
      nnmark train --model mypkg.nets:small_cnn --input-shape 3,32,32 --normalize imagenet \\
          --data mnist5k --out net.safetensors
    """
    model, ds, write, loaded = model_to_train(arch, model_source, data_spec, width=width, seed=seed,
                                              purpose="nnmark train")
    if loaded is not None and loaded.kind != "factory":
        raise CliError(f"--model takes a package.module:factory here; {model_source.path} is a {loaded.kind} model "
                       "(for a checkpoint pass its --arch)")
    model = model.to(device)
    start = time.perf_counter()
    with micro_batches(micro_batch):
        models.train(model, ds.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    acc = models.accuracy(model, ds.test)
    write(model.cpu(), acc, out)
    name = arch or model_source.path
    row = {"out": out, ("arch" if arch else "model"): name, "data": data_spec, "epochs": epochs, "test_accuracy": acc,
           "seconds": seconds}
    emit(row, as_json,
         f"{name} on {data_spec}: test accuracy {acc:.2%} after {epochs} epochs ({seconds:.1f} s) -> {out}")
