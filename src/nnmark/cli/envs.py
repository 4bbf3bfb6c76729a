"""``nnmark envs``: the execution environments available here and how far their outputs differ."""

from __future__ import annotations

import click
from tqdm.auto import tqdm

from nnmark import envs as environments
from nnmark.cli._shared import dataset_for, emit, json_option, load_model, model_option, with_progress

DEFAULT_N = 200


@click.command("envs")
@model_option
@click.option("--data", "data_spec", help="Dataset whose test images are compared (default: the model's).")
@click.option("--n", type=click.IntRange(1), default=DEFAULT_N, show_default=True, help="Test images compared.")
@json_option
@with_progress
def envs(model_source, data_spec, n, as_json, progress) -> None:
    """List the execution environments here and how far their outputs differ from float32.

    \b
    Example:
      nnmark envs --model lenet5.safetensors
    """
    model, config = load_model(model_source)
    x = dataset_for(config, data_spec).test.x[:n]
    shape = tuple(config.input_shape)
    reference = environments.get("float32").oracle(model, shape)
    p0, y0 = reference.probabilities(x), reference.labels(x)
    rows = []
    probed = environments.probe(model, shape)
    for status, oracle in tqdm(probed, desc="envs", unit="env", total=len(environments.KNOWN),
                               disable=not progress, leave=False):
        row = {"name": status.name, "available": oracle is not None, "description": status.description,
               "reason": status.reason}
        if oracle is not None:
            try:
                row["max_abs_dp"] = (oracle.probabilities(x) - p0).abs().max().item()
                row["labels_differ"] = int((oracle.labels(x) != y0).sum())
            finally:
                oracle.close()
        rows.append(row)
    if as_json:
        emit({"model": model_source.path, "n": len(x), "environments": rows}, True)
        return
    click.echo(f"{'environment':<20} {'available':<10} {'max |dp|':>10} {'labels differ':>14}  description")
    for r in rows:
        if r["available"]:
            click.echo(f"{r['name']:<20} {'yes':<10} {r['max_abs_dp']:>10.2e} {r['labels_differ']:>14}  {r['description']}")
        else:
            click.echo(f"{r['name']:<20} {'no':<10} {'':>10} {'':>14}  {r['reason']}")
