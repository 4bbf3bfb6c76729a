"""``nnmark license`` (one fine-tuned copy of a model per licensee, and the signed licence registry) and ``nnmark
trace`` (which licensee a leaked model came from), over ``nnmark.marks.ownership.licensing``."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from nnmark import keyinfo, keys, marks
from nnmark.cli._shared import (
    CliError, FiniteFloat, device_option, emit, json_option, micro_batch_option, model_option, with_progress,
    with_secret,
)
from nnmark.cli.suspect import suspect_options
from nnmark.marks.ownership import licensing
from nnmark.models.training import micro_batches

REGISTRY = "registry.key"
"""The licence registry's file name in --out."""

TRACE_HELP = """\b
Exit codes: 0 a licensee is named (TRACED TO ...), 1 none (NO LICENSEE, or UNMARKED SOURCE: the unmarked
model the copies were made from), 2 an error (a bad or altered registry, a wrong secret, an unreachable model).
A licensee is named when its p-value is at most epsilon / N: the chance that any innocent one is named is at most
epsilon (the registry's, 1e-4 by default), whatever the suspect is."""


def _names(licensees: str | None, count: int | None) -> list[str]:
    """--licensees a,b,c or --count N (licensee-01 ...): exactly one of the two."""
    if (licensees is None) == (count is None):
        raise CliError("pass exactly one of --licensees NAME,NAME,... and --count N")
    if count is not None:
        return [f"licensee-{i + 1:0{len(str(count))}d}" for i in range(count)]
    return licensing.check_names([n.strip() for n in licensees.split(",")])


def _check_out(out: str) -> Path:
    """--out: a folder that does not exist yet, in a folder that does."""
    path = Path(out)
    if path.exists():
        raise CliError(f"{out} exists: licence copies are written to a new folder")
    if not path.resolve().parent.is_dir():
        raise CliError(f"folder {str(path.resolve().parent)!r} does not exist")
    return path


def _report(index: int, total: int, row: dict) -> None:
    click.echo(f"[{index + 1}/{total}] {row['licensee']}: accuracy {row['accuracy']:.2%} "
               f"({-100 * row['accuracy_drop']:+.2f} points), {row['seconds']:.1f} s", err=True)


@click.command("license")
@model_option(help="The trained model to copy (any trainable source; each copy is written as its kind).")
@click.option("--data", "data_spec", help="Dataset (default: the one the model was trained on).")
@click.option("--licensees", help="Comma-separated licensee names (they name the copies' files).")
@click.option("--count", type=click.IntRange(1, 10_000), help="Or this many licensees, licensee-01 ...")
@click.option("--out", required=True, type=click.Path(), help="New folder for the copies and registry.key.")
@click.option("--families", type=click.IntRange(1), default=licensing.FAMILIES, show_default=True,
              help="Families m of the code scheme (at most N_c (N_c - 1) / 2).")
@click.option("--per-family", type=click.IntRange(1), default=licensing.PER_FAMILY, show_default=True,
              help="Trigger queries per family a trace asks.")
@click.option("--epochs", type=click.IntRange(1), default=licensing.EPOCHS, show_default=True,
              help="Fine-tuning epochs per copy.")
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=licensing.LR, show_default=True,
              help="Fine-tuning learning rate (Adam, cosine decay).")
@click.option("--clean", type=click.IntRange(1), default=licensing.CLEAN, show_default=True,
              help="Training images in each copy's fine-tuning set.")
@click.option("--epsilon", type=FiniteFloat(0, 1, min_open=True, max_open=True), default=licensing.EPSILON,
              show_default=True, help="Bound on the chance that a trace names any innocent licensee.")
@click.option("--feature-weight", type=FiniteFloat(0), default=licensing.FEATURE_WEIGHT, show_default=True,
              help="Weight of the term that keeps each trigger's features among its symbol's images (carries the "
                   "codeword through RTAL); 0 for a model whose last layer is not nn.Linear.")
@click.option("--max-drop", type=FiniteFloat(0), default=100 * licensing.MAX_DROP, show_default=True,
              help="Most test-accuracy points a copy may lose; a copy that loses more stops the command.")
@click.option("--seed", type=int, default=0, show_default=True, help="With the secret, draws families and codewords.")
@micro_batch_option(what="Fine-tuning the copies")
@device_option(help="Where the copies are fine-tuned: cpu, cuda, cuda:N, mps, or auto (the first accelerator); the "
                    "files written are the same kind on any device.")
@with_secret
@json_option
@with_progress
def license(model_source, data_spec, licensees, count, out, families, per_family, epochs, lr, clean, epsilon,
            feature_weight, max_drop, seed, micro_batch, device, secret_file, unsigned, as_json, progress) -> None:
    """Make one fine-tuned copy of a model per licensee, and the signed registry that traces a leak to it.

    Writes --out/NAME.<the model's extension> per licensee and --out/registry.key (signed with the secret, which
    also derives the codewords). Each copy's test accuracy is measured against the model's and reported.

    \b
    Example:
      nnmark license --model lenet5.safetensors --licensees alice,bob,carol --out licensed --secret-file secret
      nnmark license --model lenet5.safetensors --count 16 --out fleet --secret-file secret --json
    """
    from nnmark.cli._shared import model_to_train

    names = _names(licensees, count)
    target = _check_out(out)
    secret = keys.read_secret(secret_file)
    if secret is None:
        raise CliError(f"licence copies need a secret (it derives the codewords and signs the registry): pass "
                       f"--secret-file FILE or set {keys.SECRET_ENV}")
    model, ds, write, loaded = model_to_train(None, model_source, data_spec, width=1.0, seed=seed, fresh=False,
                                              purpose="nnmark license")
    start = time.perf_counter()
    with micro_batches(micro_batch):
        copies, key = licensing.license_copies(
            model.to(device), ds, names, secret=secret, families=families, per_family=per_family, epochs=epochs,
            lr=lr, clean=clean, epsilon=epsilon, feature_weight=feature_weight, seed=seed,
            progress=(lambda i, name, row: _report(i, len(names), row)) if progress else None)
    rows = key.config["licensees"]
    if worse := [r["licensee"] for r in rows if r["accuracy_drop"] * 100 > max_drop]:
        raise CliError(f"copies for {', '.join(worse)} lose more than {max_drop:g} accuracy points; nothing is "
                       "written: lower --lr or --epochs, or raise --clean")
    key.config["model_card"] = loaded.card.to_dict()
    suffix = Path(model_source.path).suffix if Path(model_source.path).suffix else ".safetensors"
    for row in rows:
        row["file"] = row["licensee"] + suffix
    _write(target, copies, rows, write, key, None if unsigned else secret)
    summary = {"out": str(target), "registry": str(target / REGISTRY), "scheme": licensing.DEFAULT_SCHEME,
               "families": key.config["families"], "queries": len(key.expected), "epsilon": epsilon,
               "source_accuracy": key.config["source_accuracy"], "licensees": rows,
               "seconds": time.perf_counter() - start, "signed": not unsigned}
    text = "\n".join([f"{r['licensee']}: {target / r['file']} accuracy {r['accuracy']:.2%} "
                      f"({-100 * r['accuracy_drop']:+.2f} points)" for r in rows]
                     + [f"registry: {target / REGISTRY} ({len(rows)} licensees, {licensing.DEFAULT_SCHEME} scheme, "
                        f"{len(key.expected)} queries per trace)"])
    emit(summary, as_json, text)


def _write(target: Path, copies, rows: list[dict], write, key: keys.KeyFile, secret: bytes | None) -> None:
    """Every copy and the registry into a temporary folder beside ``target``, then renamed to it: an interrupted
    command leaves no half-written folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.resolve().parent))
    try:
        for model, row in zip(copies, rows):
            write(model, row["accuracy"], str(tmp / row["file"]))
        keys.save(key, tmp / REGISTRY, secret=secret)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _text(verdict) -> str:
    """The verdict as a line: TRACED TO ... with each p-value, or NO LICENSEE / UNMARKED SOURCE with the best one."""
    d = verdict.details
    level = f"epsilon / N = {d['max_p_value']:.3g}"
    if verdict.passed:
        who = ", ".join(f"{a['licensee']} (p = {a['p_value']:.3g})" for a in d["accused"])
        head = f"TRACED TO {who} <= {level}"
    else:
        head = (f"{verdict.decision.upper()}: the likeliest licensee, {d['most_likely']}, has p = {d['p_value']:.3g} > "
                f"{level}; {d['source_agreement']:.0%} of answers as the unmarked source's")
    return f"{click.style(head, fg='green' if verdict.passed else 'red', bold=True)}; {verdict.queries} queries spent"


@click.command(epilog=TRACE_HELP)
@click.argument("registry_path", type=click.Path(dir_okay=False))
@suspect_options
@with_secret
@json_option
@with_progress
def trace(registry_path, suspect, secret_file, unsigned, as_json, progress) -> None:
    """Name the licensee whose copy a suspect model came from (labels only): 0 named, 1 none, 2 on error.

    \b
    Example:
      nnmark trace licensed/registry.key --model licensed/bob.safetensors --secret-file secret
      nnmark trace licensed/registry.key --model licensed/carol.safetensors --secret-file secret --json
    """
    key = keys.load(registry_path, secret=keys.read_secret(secret_file), allow_unsigned=unsigned)
    if key.method != licensing.METHOD:
        raise CliError(f"trace needs a licence registry ({licensing.METHOD}), not a {key.method} key (use verify)")
    with suspect.opened(card=keyinfo.card_of(key), defaults=key.config.get("endpoint"),
                        progress=progress) as (oracle, where, digest):
        verdict = marks.verify(oracle, key)
    copy = next((r["licensee"] for r in key.config["licensees"] if digest and r.get("digest") == digest), None)
    if as_json:
        emit({**verdict.to_dict(), "registry": registry_path, **where, "identical_to_copy_of": copy}, True)
    else:
        click.echo(_text(verdict))
        if copy is not None:
            click.echo(f"the weights are {copy}'s copy, bit for bit")
    sys.exit(0 if verdict.passed else 1)
