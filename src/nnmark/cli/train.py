"""``nnmark train``: a zoo model trained on a dataset, saved as a safetensors checkpoint."""

from __future__ import annotations

import time

import click
import torch

from nnmark import data, models
from nnmark.cli._shared import emit, json_option, out_option, progress_enabled

DEFAULT_EPOCHS = 8


@click.command()
@click.option("--arch", type=click.Choice(models.ARCHITECTURES), required=True, help="Zoo architecture.")
@click.option("--data", "data_spec", required=True, help="mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR.")
@click.option("--epochs", type=click.IntRange(1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=models.DEFAULT_LR, show_default=True,
              help="Adam learning rate (cosine decay).")
@click.option("--batch-size", type=click.IntRange(1), default=models.DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Channel width multiplier.")
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation and batch order.")
@out_option("--out", help="Checkpoint to write (.safetensors).")
@json_option
def train(arch, data_spec, epochs, lr, batch_size, width, seed, out, as_json) -> None:
    """Train a zoo model on a dataset and save a safetensors checkpoint.

    \b
    Example:
      nnmark train --arch lenet5 --data mnist5k --epochs 8 --out lenet5.safetensors
    """
    ds = data.load(data_spec)
    torch.manual_seed(seed)
    model = models.build(arch, ds.shape, ds.num_classes, width=width)
    start = time.perf_counter()
    models.train(model, ds.train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress_enabled())
    seconds = time.perf_counter() - start
    acc = models.accuracy(model, ds.test)
    config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=data_spec, accuracy=acc, seed=seed)
    models.save(model, config, out)
    row = {"out": out, "arch": arch, "data": data_spec, "epochs": epochs, "test_accuracy": acc, "seconds": seconds}
    emit(row, as_json, f"{arch} on {data_spec}: test accuracy {acc:.2%} after {epochs} epochs ({seconds:.1f} s) -> {out}")
