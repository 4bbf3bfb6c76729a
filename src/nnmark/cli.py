"""The ``nnmark`` command line: train, mark, attack, verify, bench.

Exit codes: 0 = done / check passed (intact), 1 = check failed (tampered), 2 = error (bad input,
bad file, bad signature, over budget, ...), reported as one line on stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import click
import torch

from nnmark import __version__, data, envs, keys, marks, models, shadow
from nnmark.attacks import (
    MODES, backdoor, finetune, finetune_mode, measure, overwrite, prune, quantize_int8, relative_weight_noise, resize,
    transfer, weight_noise,
)
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import NnmarkError
from nnmark.metrics import sample_quality
from nnmark.marks.integrity import aid, baselines, dbi, pairing
from nnmark.marks.ownership import backdoor_wm, coupled, frontier, ipguard, metafinger
from nnmark.marks.telltale import innformant
from nnmark.oracles import TorchOracle


class CliError(click.ClickException):
    """An error the user can act on: one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NnmarkError as e:
            raise CliError(str(e)) from e
        except OSError as e:
            raise CliError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from e


def progress_enabled() -> bool:
    """Progress bars on an interactive stderr, unless NNMARK_PROGRESS=0."""
    return os.environ.get("NNMARK_PROGRESS", "1") != "0" and sys.stderr.isatty()


def _secret_for_writing(secret_file: str | None, unsigned: bool) -> bytes | None:
    secret = keys.read_secret(secret_file)
    if secret is None and not unsigned:
        raise CliError("no secret to sign the key: pass --secret-file FILE or set NNMARK_SECRET (or --unsigned)")
    return None if unsigned else secret


def _dataset_for(config: models.ModelConfig, spec: str | None) -> data.Dataset:
    spec = spec or config.data
    if not spec:
        raise CliError("the model's checkpoint names no dataset: pass --data")
    ds = data.load(spec)
    if ds.shape != tuple(config.input_shape):
        raise CliError(f"data {spec} has inputs {ds.shape}, the model expects {tuple(config.input_shape)}")
    return ds


secret_options = [
    click.option("--secret-file", type=click.Path(dir_okay=False), help="File holding the HMAC secret (else NNMARK_SECRET)."),
    click.option("--unsigned", is_flag=True, help="Write/accept a key file without a signature."),
]


def with_secret(f):
    for opt in reversed(secret_options):
        f = opt(f)
    return f


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnmark")
def main() -> None:
    """nnmark: query samples that protect trained neural networks."""


@main.command()
@click.option("--arch", type=click.Choice(models.ARCHITECTURES), required=True)
@click.option("--data", "data_spec", required=True, help="mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR.")
@click.option("--epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=models.DEFAULT_LR, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=models.DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@click.option("--json", "as_json", is_flag=True)
def train(arch, data_spec, epochs, lr, batch_size, width, seed, out, as_json) -> None:
    """Train a zoo model and save it as a safetensors checkpoint."""
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
    if as_json:
        click.echo(json.dumps(row))
    else:
        click.echo(f"{arch} on {data_spec}: test accuracy {acc:.2%} after {epochs} epochs ({seconds:.1f} s) -> {out}")


@main.group()
def mark() -> None:
    """Make a key file of query samples from a model."""


def _mark_common(f):
    f = click.option("--json", "as_json", is_flag=True)(f)
    f = with_secret(f)
    f = click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Chooses the source samples.")(f)
    f = click.option("--n", type=click.IntRange(1), default=100, show_default=True, help="Number of query samples.")(f)
    f = click.option("--data", "data_spec", help="Dataset (default: the one the model was trained on).")(f)
    f = click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)(f)
    return f


def _sources(model_path: str, data_spec: str | None, n: int, seed: int, split: str):
    """The model, its dataset, n images of ``split`` ("train" or "natural_pool") drawn by ``seed``, and the
    key meta that records them: (model, dataset, images, meta)."""
    model, config = models.load(model_path)
    ds = _dataset_for(config, data_spec)
    source = ds.train if split == "train" else natural_pool(ds)
    if n > len(source):
        raise CliError(f"asked for {n} samples but only {len(source)} are available")
    idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return model, ds, source.x[idx], {"data": ds.name, "split": split, "indices": idx.tolist(), "seed": seed}


def _finish_mark(key: keys.KeyFile, out: str, secret: bytes | None, summary: dict, as_json: bool) -> None:
    keys.save(key, out, secret=secret)
    summary = {"out": out, "method": key.method, "n": len(key.expected), "signed": secret is not None, **summary}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))


@mark.command("dbi")
@_mark_common
@click.option("--eps", type=click.FloatRange(0, min_open=True), help="Step size (default 1e-4 one-channel, 1e-5 otherwise).")
@click.option("--itr", type=click.IntRange(0), default=dbi.PAPER_ITR, show_default=True)
@click.option("--direction", type=click.Choice(["descent", "ascent"]), default="descent", show_default=True,
              help="descent minimises D(p) (the paper's aim); ascent follows eq. 4 as printed.")
def mark_dbi(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, eps, itr, direction) -> None:
    """DBI fragile samples (Yin et al.) from training images."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train")
    start = time.perf_counter()
    key = dbi.create(
        TorchOracle(model, ds.shape, ds.num_classes), x, eps=eps, itr=itr,
        direction=-1 if direction == "descent" else 1, model_digest=models.digest(model), meta=meta,
        progress=progress_enabled(),
    )
    quality = sample_quality(key.queries, key.extras["sources"])
    _finish_mark(key, out, secret, {**quality, "seconds": time.perf_counter() - start}, as_json)


@mark.command("aid")
@_mark_common
@click.option("--itr", type=click.IntRange(0), default=aid.PAPER_ITR, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=aid.PAPER_LR, show_default=True,
              help="Adam learning rate on the inputs.")
@click.option("--beta", type=click.FloatRange(0), default=aid.DEFAULT_BETA, show_default=True,
              help="Weight of the neuron-coverage term.")
def mark_aid(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, itr, lr, beta) -> None:
    """AID edge-points (Aramoon et al.) from training images: on the boundary, with many neurons active."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train")
    start = time.perf_counter()
    key = aid.create(
        TorchOracle(model, ds.shape, ds.num_classes), x, itr=itr, lr=lr, beta=beta,
        model_digest=models.digest(model), meta=meta, progress=progress_enabled(),
    )
    summary = {"coverage_start": key.config["coverage_start"], "coverage_end": key.config["coverage_end"],
               "seconds": time.perf_counter() - start}
    _finish_mark(key, out, secret, summary, as_json)


@mark.command("ipguard")
@_mark_common
@click.option("--k", type=click.FloatRange(0), default=ipguard.DEFAULT_K, show_default=True,
              help="Logit margin of each point's label over its runner-up class (small: unique but fragile).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=ipguard.DEFAULT_LR, show_default=True)
@click.option("--iterations", type=click.IntRange(1), default=ipguard.DEFAULT_ITERATIONS, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=ipguard.DEFAULT_THRESHOLD, show_default=True,
              help="Least matching rate of a match.")
def mark_ipguard(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, k, lr, iterations,
                 threshold) -> None:
    """IPGuard fingerprint (Cao et al.): points near the model's classification boundary, from training images."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train")
    start = time.perf_counter()
    key = ipguard.create(
        TorchOracle(model, ds.shape, ds.num_classes), x, k=k, lr=lr, iterations=iterations, seed=seed,
        threshold=threshold, model_digest=models.digest(model), meta=meta, progress=progress_enabled(),
    )
    _finish_mark(key, out, secret, {"converged": key.config["converged"], "seconds": time.perf_counter() - start},
                 as_json)


@mark.command("natural")
@_mark_common
def mark_natural(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json) -> None:
    """Baseline: natural test images labelled by the model ("non-fragile")."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "natural_pool")
    key = baselines.natural(TorchOracle(model, ds.shape, ds.num_classes), x, model_digest=models.digest(model),
                            meta=meta)
    _finish_mark(key, out, secret, {}, as_json)


@mark.command("random")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)
@click.option("--n", type=click.IntRange(1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True)
@with_secret
@click.option("--json", "as_json", is_flag=True)
def mark_random(model_path, n, seed, out, secret_file, unsigned, as_json) -> None:
    """Baseline: uniform-noise images labelled by the model."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, config = models.load(model_path)
    oracle = TorchOracle(model, tuple(config.input_shape), config.num_classes)
    key = baselines.random_noise(oracle, n, seed=seed, model_digest=models.digest(model))
    _finish_mark(key, out, secret, {}, as_json)


@mark.command("pairs")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)
@click.option("--n-pairs", type=click.IntRange(1), default=150, show_default=True, help="Pairs to try (the paper: 150).")
@click.option("--user-id", required=True, help="Whom the key is for; with the secret it derives the secret binary head.")
@click.option("--lam", type=click.FloatRange(0), default=pairing.DEFAULT_LAMBDA, show_default=True,
              help="lambda of eq. 6.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=pairing.PAPER_LR, show_default=True,
              help="Stage-1 Adam step.")
@click.option("--max-itr", type=click.IntRange(0), default=pairing.PAPER_MAX_ITR, show_default=True,
              help="Stage-1 iterations at most.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=pairing.PAPER_ALPHA, show_default=True,
              help="Stage-2 step (eq. 7).")
@click.option("--max-steps", type=click.IntRange(1), default=pairing.DEFAULT_MAX_STEPS, show_default=True,
              help="Stage-2 steps at most.")
@click.option("--margin", type=click.FloatRange(0), default=pairing.DEFAULT_MARGIN, show_default=True,
              help="Head margin each member keeps from the boundary (0: the paper's adjacent pair; the "
                   "default is the smallest with no false alarm in other numeric environments).")
@click.option("--activation-on", type=click.Choice(pairing.ACTIVATIONS), default="logits", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the random starting pixels.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write.")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def mark_pairs(model_path, n_pairs, user_id, lam, lr, max_itr, alpha, max_steps, margin, activation_on, seed, out,
               secret_file, unsigned, as_json) -> None:
    """Sensitive sample pairs (Gao et al.) around a secret per-user binary head."""
    secret = keys.read_secret(secret_file)
    if secret is None:
        raise CliError("pairs keys need a secret (it derives the user's head): pass --secret-file FILE or set NNMARK_SECRET")
    model, config = models.load(model_path)
    oracle = TorchOracle(model, tuple(config.input_shape), config.num_classes)
    start = time.perf_counter()
    key = pairing.create(
        oracle, n_pairs, secret=secret, user_id=user_id, lam=lam, lr=lr, max_itr=max_itr, alpha=alpha,
        max_steps=max_steps, margin=margin, activation_on=activation_on, seed=seed,
        model_digest=models.digest(model), progress=progress_enabled(),
    )
    summary = {"pairs": key.config["n_pairs"], "dropped": key.config["dropped"], "seconds": time.perf_counter() - start}
    _finish_mark(key, out, None if unsigned else secret, summary, as_json)


def _embed_options(f):
    """The options of commands that train a watermarked model from scratch and write it with its key."""
    for option in reversed([
        click.option("--arch", type=click.Choice(models.ARCHITECTURES), required=True),
        click.option("--data", "data_spec", required=True, help="mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR."),
        click.option("--epochs", type=click.IntRange(1), default=8, show_default=True),
        click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--out-model", type=click.Path(dir_okay=False), required=True,
                     help="Watermarked checkpoint to write."),
        click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write."),
        with_secret,
        click.option("--json", "as_json", is_flag=True),
    ]):
        f = option(f)
    return f


def _embed_and_save(embed, summary_keys: tuple[str, ...], *, arch, data_spec, width, seed, out_model, out,
                    secret_file, unsigned, as_json) -> None:
    """Train a fresh ``arch`` model with ``embed(model, ds) -> (model, key)``; write the model and the key."""
    secret = _secret_for_writing(secret_file, unsigned)
    ds = data.load(data_spec)
    torch.manual_seed(seed)
    model = models.build(arch, ds.shape, ds.num_classes, width=width)
    start = time.perf_counter()
    try:
        wm_model, key = embed(model, ds)
    except ValueError as e:
        raise CliError(str(e)) from e
    config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=data_spec,
                                accuracy=key.config["clean_accuracy"], seed=seed)
    models.save(wm_model, config, out_model)
    summary = {k: key.config[k] for k in summary_keys}
    _finish_mark(key, out, secret, {"out_model": out_model, **summary, "seconds": time.perf_counter() - start}, as_json)


@mark.command("coupled")
@_embed_options
@click.option("--kind", type=click.Choice(coupled.KINDS), default="direct", show_default=True,
              help="direct: x_i top-left, x_j bottom-right on white (eq. 2); invisible: r*x_i + (1-r)*x_j (eq. 3).")
@click.option("--r", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Invisible-fusion ratio (paper: 0.5, 0.7, 0.9).")
@click.option("--base", type=(int, int), help="Base classes i j (default: drawn from --seed).")
@click.option("--target", type=int, help="Target class t, not i or j (default: drawn from --seed).")
@click.option("--keep-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Fraction of each weight tensor the random mask keeps (1/keep-ratio scaling).")
@click.option("--finetune-lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True,
              help="eta' of the training-time fine-tuning pass.")
@click.option("--no-mask", is_flag=True, help="Train with the full W (ablation).")
@click.option("--no-tt-finetune", is_flag=True, help="Skip the training-time fine-tuning pass (ablation).")
@click.option("--wm-repeat", type=click.IntRange(1), default=coupled.WM_REPEAT, show_default=True,
              help="Copies of each watermark trigger in the training data per epoch.")
def mark_coupled(kind, r, base, target, epochs, keep_ratio, finetune_lr, no_mask, no_tt_finetune, wm_repeat, seed,
                 **common) -> None:
    """Function-coupled watermark (Wen et al.): train a watermarked model and its key of 90 fused triggers."""
    _embed_and_save(
        lambda model, ds: coupled.embed(model, ds, kind=kind, r=r, base=base, target=target, epochs=epochs,
                                        keep_ratio=keep_ratio, finetune_lr=finetune_lr, seed=seed, masked=not no_mask,
                                        tt_finetune=not no_tt_finetune, wm_repeat=wm_repeat,
                                        progress=progress_enabled()),
        ("kind", "base", "target", "success", "rate_plain", "clean_accuracy"), seed=seed, **common,
    )


@mark.command("zhang")
@_embed_options
@click.option("--kind", type=click.Choice(backdoor_wm.ZHANG_KINDS), default="content", show_default=True,
              help="content: 'TEST' stamped on source-class images; noise: Gaussian noise on them; "
                   "unrelated: patches of scikit-learn's sample photos.")
@click.option("--source", type=int, help="Source class i (default: drawn from --seed; unused by unrelated).")
@click.option("--target", type=int, help="Target class t, not i (default: drawn from --seed).")
def mark_zhang(kind, source, target, epochs, seed, **common) -> None:
    """Backdoor watermark of Zhang et al. (content, noise or unrelated triggers -> t): a watermarked model and its key."""
    _embed_and_save(
        lambda model, ds: backdoor_wm.embed(model, ds, kind=kind, source=source, target=target, epochs=epochs,
                                            seed=seed, progress=progress_enabled()),
        ("kind", "source", "target", "success", "rate_plain", "clean_accuracy"), seed=seed, **common,
    )


@mark.command("adi")
@click.option("--arch", type=click.Choice(models.ARCHITECTURES), help="Train from scratch (with --data).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Fine-tune this pretrained checkpoint.")
@click.option("--data", "data_spec", help="Dataset (required with --arch; default: the pretrained model's).")
@click.option("--epochs", type=click.IntRange(1), help="Default 8 from scratch, 3 fine-tuning.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=models.DEFAULT_LR, show_default=True,
              help="Adam lr, cosine decay.")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out-model", type=click.Path(dir_okay=False), required=True, help="Watermarked checkpoint to write.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write.")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def mark_adi(arch, model_path, data_spec, epochs, lr, width, seed, out_model, out, secret_file, unsigned,
             as_json) -> None:
    """Backdoor watermark of Adi et al.: 90 abstract images with random labels, from scratch or fine-tuned in."""
    if (arch is None) == (model_path is None):
        raise CliError("pass either --arch (train from scratch) or --model (fine-tune a pretrained checkpoint)")
    secret = _secret_for_writing(secret_file, unsigned)
    if model_path:
        model, config = models.load(model_path)
        ds = _dataset_for(config, data_spec)
        config.data = data_spec or config.data
    else:
        if not data_spec:
            raise CliError("--arch needs --data")
        ds = data.load(data_spec)
        torch.manual_seed(seed)
        model = models.build(arch, ds.shape, ds.num_classes, width=width)
        config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=data_spec, seed=seed)
    pretrained = model_path is not None
    start = time.perf_counter()
    wm_model, key = backdoor_wm.embed(model, ds, kind="abstract", epochs=epochs or (3 if pretrained else 8),
                                      lr=lr, seed=seed,
                                      pretrained=pretrained, progress=progress_enabled())
    config.accuracy = key.config["clean_accuracy"]
    models.save(wm_model, config, out_model)
    summary = {k: key.config[k] for k in ("pretrained", "success", "null", "clean_accuracy")}
    _finish_mark(key, out, secret, {"out_model": out_model, **summary, "seconds": time.perf_counter() - start}, as_json)


@mark.command("frontier")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True, help="Trained model to mark.")
@click.option("--data", "data_spec", help="Dataset (default: the model's).")
@click.option("--eps", type=click.FloatRange(0, min_open=True), default=frontier.EPS, show_default=True,
              help="FGSM step of the key's adversaries.")
@click.option("--epochs", type=click.IntRange(1), default=frontier.EMBED_EPOCHS, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=frontier.EMBED_LR, show_default=True,
              help="Adam lr of the fine-tune that stitches the key in.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out-model", type=click.Path(dir_okay=False), required=True, help="Watermarked checkpoint to write.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write.")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def mark_frontier(model_path, data_spec, eps, epochs, lr, seed, out_model, out, secret_file, unsigned, as_json) -> None:
    """Frontier stitching (Le Merrer et al.): fine-tune a trained model on true and false FGSM adversaries."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, config = models.load(model_path)
    ds = _dataset_for(config, data_spec)
    start = time.perf_counter()
    try:
        wm_model, key = frontier.embed(model, ds, eps=eps, epochs=epochs, lr=lr, seed=seed,
                                       progress=progress_enabled())
    except ValueError as e:
        raise CliError(str(e)) from e
    config.data, config.accuracy = ds.name, key.config["clean_accuracy"]
    models.save(wm_model, config, out_model)
    summary = {k: key.config[k] for k in ("success_before", "success", "null", "clean_accuracy")}
    _finish_mark(key, out, secret, {"out_model": out_model, **summary, "seconds": time.perf_counter() - start}, as_json)


@mark.command("innformant")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)
@click.option("--data", "data_spec", help="Dataset (default: the one the model was trained on).")
@click.option("--n", type=click.IntRange(1), default=50, show_default=True, help="Natural test images to start from.")
@click.option("--envs", "env_names", default="float32,float64", show_default=True,
              help="Comma-separated environments to tell apart; the first is the reference (the licensed one).")
@click.option("--direction", type=click.Choice(["sign", "l2"]), default="sign", show_default=True,
              help="sign: the paper's step; l2: normalised-gradient step (higher PSNR).")
@click.option("--local-max", type=click.IntRange(0), default=2000, show_default=True)
@click.option("--remote-max", type=click.IntRange(0), default=500, show_default=True)
@click.option("--target", type=click.FloatRange(0, min_open=True), default=1e-6, show_default=True,
              help="Stop the local phase once delta_conf is below this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the starting images.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Key file to write.")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def mark_innformant(model_path, data_spec, n, env_names, direction, local_max, remote_max, target, seed, out,
                    secret_file, unsigned, as_json) -> None:
    """iNNformant boundary samples (Schloegl et al.) whose labels tell the environments apart."""
    secret = _secret_for_writing(secret_file, unsigned)
    names = [e.strip() for e in env_names.split(",") if e.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise CliError("--envs needs at least two different environments")
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "natural_pool")
    oracles = {name: envs.get(name).oracle(model, ds.shape) for name in names}
    start = time.perf_counter()
    local = oracles[names[0]] if oracles[names[0]].can("gradients") else envs.get("float32").oracle(model, ds.shape)
    key = innformant.create(
        local, oracles, x, target=target, local_max=local_max, remote_max=remote_max, direction=direction,
        model_digest=models.digest(model), meta=meta, progress=progress_enabled(),
    )
    rows = innformant.report(key)
    singled = {name: sum(name in r["singles_out"] for r in rows) for name in names}
    psnrs = sorted(r["psnr"] for r in rows)
    summary = {"found": len(rows), "of": n, "psnr_median_db": psnrs[len(psnrs) // 2],
               "singles_out": singled, "seconds": time.perf_counter() - start}
    _finish_mark(key, out, secret, summary, as_json)


@mark.command("metafinger")
@_mark_common
@click.option("--candidates", type=click.IntRange(1), help="Training images to start from (default 2n).")
@click.option("--negatives", type=click.IntRange(1), default=shadow.DEFAULT_NEGATIVES, show_default=True,
              help="Negative train families (models trained from scratch, each with AF augmentations).")
@click.option("--val-negatives", type=click.IntRange(1), default=shadow.DEFAULT_VAL_NEGATIVES, show_default=True,
              help="Independent negative validation models (screen and null calibration).")
@click.option("--af", type=click.IntRange(0), default=shadow.DEFAULT_AF, show_default=True,
              help="Augmentation factor: eq. 1 copies per model.")
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=shadow.DEFAULT_ALPHA, show_default=True,
              help="Eq. 1 noise std(param)/alpha before the fine-tune.")
@click.option("--shadow-epochs", type=click.IntRange(1), default=shadow.DEFAULT_EPOCHS, show_default=True)
@click.option("--finetune-epochs", type=click.IntRange(0), default=shadow.DEFAULT_FINETUNE_EPOCHS, show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=metafinger.PAPER_EPOCHS, show_default=True,
              help="Meta-training epochs N_epoch.")
@click.option("--k", type=click.IntRange(1), default=metafinger.PAPER_K, show_default=True)
@click.option("--lam", type=click.FloatRange(0), default=metafinger.PAPER_LAMBDA, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=metafinger.PAPER_LR, show_default=True)
@click.option("--augment-inputs/--no-augment-inputs", default=metafinger.DEFAULT_AUGMENT_INPUTS, show_default=True,
              help="Meta-train on one random input transformation of X per step (the authors' code).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=metafinger.DEFAULT_THRESHOLD, show_default=True,
              help="Least query accuracy of a match.")
@click.option("--max-p-value", type=click.FloatRange(0, 1, min_open=True), default=metafinger.DEFAULT_MAX_P_VALUE,
              show_default=True, help="A match also needs the binomial p-value below this.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Shadow-model cache (default ~/.cache/nnmark/shadow).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True)
@click.option("--executor", type=click.Choice(shadow.EXECUTORS), default="process", show_default=True)
@click.option("--ray-address", help="Ray cluster for --executor ray (default: a local instance).")
def mark_metafinger(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, candidates, negatives,
                    val_negatives, af, alpha, shadow_epochs, finetune_epochs, epochs, k, lam, lr, augment_inputs,
                    threshold, max_p_value, cache_dir, workers, executor, ray_address) -> None:
    """MetaFinger fingerprint (Yang et al.): images only the model and models derived from it label as expected."""
    secret = _secret_for_writing(secret_file, unsigned)
    model, config = models.load(model_path)
    ds = _dataset_for(config, data_spec)
    digest = models.digest(model)
    specs = shadow.pool_specs(config.arch, ds.name, digest, negatives=negatives, val_negatives=val_negatives, af=af,
                              alpha=alpha, seed=config.seed or 0, epochs=shadow_epochs, finetune_epochs=finetune_epochs)
    start = time.perf_counter()
    pool = shadow.build_pool([s for group in specs.values() for s in group],
                             cache_dir=cache_dir or shadow.default_cache_dir(), base=model, workers=workers,
                             executor=executor, ray_address=ray_address, progress=progress_enabled())
    shadow_seconds, start = time.perf_counter() - start, time.perf_counter()
    key = metafinger.create(
        model, *(pool.select(specs[name]) for name in metafinger.POOLS), ds.train.x, n=n, candidates=candidates,
        epochs=epochs, k=k, lam=lam, lr=lr, augment_inputs=augment_inputs, seed=seed, threshold=threshold,
        max_p_value=max_p_value, model_digest=digest, meta={"data": ds.name, "arch": config.arch, "alpha": alpha, "af": af},
        progress=progress_enabled(),
    )
    summary = {"shadow_models_trained": len(pool.trained), "shadow_seconds": shadow_seconds,
               "meta_seconds": time.perf_counter() - start, "p0": key.config["p0"]}
    _finish_mark(key, out, secret, summary, as_json)


def attack_io(f):
    """The --model (checkpoint to attack) and --out (attacked checkpoint) options every attack takes."""
    f = click.option("--out", type=click.Path(dir_okay=False), required=True, help="Attacked checkpoint to write.")(f)
    return click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)(f)


@main.group()
def attack() -> None:
    """Change a model the way an adversary or an accident would (model -> new model)."""


@attack.command("finetune")
@attack_io
@click.option("--data", "data_spec", help="Dataset (default: the model's); the attacker uses its attacker split.")
@click.option("--lr", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--steps", type=click.IntRange(0), default=100, show_default=True, help="SGD minibatch steps.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--freeze-bn", is_flag=True, help="Keep BatchNorm running statistics as they are (eval-mode BatchNorm).")
def attack_finetune(model_path, out, data_spec, lr, steps, batch_size, seed, freeze_bn) -> None:
    """Fine-tune all layers with SGD on attacker data disjoint from the key's samples."""
    model, config = models.load(model_path)
    split = attacker_data(_dataset_for(config, data_spec))
    attacked = finetune(model, split.x, split.y, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                        freeze_bn=freeze_bn)
    bn = ", BatchNorm statistics frozen" if freeze_bn else ""
    _save_attacked(attacked, config, out,
                   f"fine-tuned {steps} SGD steps at lr {lr:g} on {len(split)} attacker images{bn}")


@attack.command("noise")
@attack_io
@click.option("--std", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_noise(model_path, out, std, seed) -> None:
    """Add Gaussian noise N(0, std^2) to every parameter."""
    model, config = models.load(model_path)
    _save_attacked(weight_noise(model, std, seed=seed), config, out, f"added N(0, {std:g}^2) to every parameter")


@attack.command("relnoise")
@attack_io
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_relnoise(model_path, out, alpha, seed) -> None:
    """Add N(0, (std(param)/alpha)^2) noise to each parameter tensor (MetaFinger eq. 1)."""
    model, config = models.load(model_path)
    _save_attacked(relative_weight_noise(model, alpha, seed=seed), config, out,
                   f"added N(0, (std/{alpha:g})^2) to every parameter tensor")


@attack.command("finetune-mode")
@attack_io
@click.option("--mode", type=click.Choice(MODES), required=True, help="Adi et al.: fine-tune / re-train last or all layers.")
@click.option("--data", "data_spec", help="Dataset (default: the model's); the attacker uses its attacker split.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_finetune_mode(model_path, out, mode, data_spec, epochs, lr, seed) -> None:
    """FTLL, FTAL, RTLL or RTAL on attacker data disjoint from the key's samples."""
    model, config = models.load(model_path)
    split = attacker_data(_dataset_for(config, data_spec))
    attacked = finetune_mode(model, split.x, split.y, mode=mode, epochs=epochs, lr=lr, seed=seed)
    _save_attacked(attacked, config, out, f"{mode}, {epochs} epochs at lr {lr:g} on {len(split)} attacker images")


@attack.command("transfer")
@attack_io
@click.option("--to", "to_spec", default="digits", show_default=True,
              help="The new domain (same number of classes), resized to the model's input shape; trains on its train split.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_transfer(model_path, out, to_spec, epochs, lr, seed) -> None:
    """Transfer learning: train all layers on another domain with the same classes (Adam, Wen et al. sec. 5.3)."""
    model, config = models.load(model_path)
    new = data.load(to_spec)
    if new.num_classes != config.num_classes:
        raise CliError(f"{to_spec} has {new.num_classes} classes, the model {config.num_classes}")
    train_split, test_split = (resize(s, tuple(config.input_shape)) for s in (new.train, new.test))
    attacked = transfer(model, train_split, lr=lr, epochs=epochs, seed=seed)
    _save_attacked(attacked, config, out, f"transferred to {to_spec}, {epochs} epochs at lr {lr:g} "
                   f"({to_spec} test accuracy {models.accuracy(attacked, test_split):.2%}); on the original data:")


@attack.command("overwrite")
@attack_io
@click.option("--data", "data_spec", help="Dataset (default: the model's); triggers and clean data from its attacker split.")
@click.option("--base", type=(int, int), required=True, help="The attacker's base classes i j.")
@click.option("--target", type=int, required=True, help="The attacker's target class t.")
@click.option("--kind", type=click.Choice(coupled.KINDS), default="direct", show_default=True)
@click.option("--r", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5, show_default=True)
@click.option("--k", type=click.IntRange(1), default=36, show_default=True, help="Number of new triggers.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_overwrite(model_path, out, data_spec, base, target, kind, r, k, epochs, lr, seed) -> None:
    """Overwriting: train a second coupled watermark (i, j -> t) into the model with the attacker's data."""
    model, config = models.load(model_path)
    split = attacker_data(_dataset_for(config, data_spec))
    try:
        i, j, t = coupled.pick_classes(config.num_classes, seed, base, target)
        x_wm = coupled.make_triggers(split, (i, j), k, kind=kind, r=r, generator=torch.Generator().manual_seed(seed))
    except ValueError as e:
        raise CliError(str(e)) from e
    attacked = overwrite(model, x_wm, torch.full((k,), t), split, lr=lr, epochs=epochs, seed=seed)
    _save_attacked(attacked, config, out, f"overwrote with {k} {kind} triggers {i}, {j} -> {t} ({epochs} epochs at lr {lr:g})")


@attack.command("prune")
@attack_io
@click.option("--fraction", type=click.FloatRange(0, 1, max_open=True), required=True)
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True)
def attack_prune(model_path, out, fraction, scope) -> None:
    """Zero the smallest-magnitude fraction of Conv2d/Linear weights (L1, global or per layer)."""
    model, config = models.load(model_path)
    pruned = prune(model, fraction, scope=scope)
    _save_attacked(pruned, config, out, f"pruned {fraction:.2%} of weights ({scope}); sparsity {measure.sparsity(pruned):.2%}")


@attack.command("quantize")
@attack_io
@click.option("--granularity", type=click.Choice(["tensor", "channel"]), default="tensor", show_default=True)
def attack_quantize(model_path, out, granularity) -> None:
    """Symmetric int8 weight quantization, dequantized back to float32 (per tensor or per output channel)."""
    model, config = models.load(model_path)
    _save_attacked(quantize_int8(model, granularity=granularity), config, out,
                   f"int8 per-{granularity} weight quantization")


@attack.command("backdoor")
@attack_io
@click.option("--data", "data_spec", help="Dataset (default: the model's); the attacker uses its attacker split.")
@click.option("--target", type=click.IntRange(0), default=0, show_default=True)
@click.option("--n-poison", type=click.IntRange(1), default=10, show_default=True)
@click.option("--patch", type=click.IntRange(1), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True,
              help="Adam step (the paper's 1e-5 needs thousands of steps on LeNet-5).")
@click.option("--max-steps", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_backdoor(model_path, out, data_spec, target, n_poison, patch, lr, max_steps, seed) -> None:
    """BadNets: a white corner patch on a few attacker images relabelled as the target, fine-tuned in."""
    model, config = models.load(model_path)
    ds = _dataset_for(config, data_spec)
    split = attacker_data(ds)
    attacked, report = backdoor(model, split.x, split.y, target=target, max_steps=max_steps, test=natural_pool(ds),
                                n_poison=n_poison, patch=patch, lr=lr, seed=seed)
    _save_attacked(attacked, config, out, f"backdoor to class {target}: {report.steps} steps, poison success "
                   f"{report.poison_success:.0%}, held-out trigger success {report.heldout_success:.0%}")


def _save_attacked(model: torch.nn.Module, config: models.ModelConfig, out: str, what: str) -> None:
    config.accuracy = None
    if config.data:
        config.accuracy = models.accuracy(model, data.load(config.data).test)
    models.save(model, config, out)
    acc = "" if config.accuracy is None else f" (test accuracy {config.accuracy:.2%})"
    click.echo(f"{what}{acc} -> {out}")


def _read_token(token_file: str | None) -> bytes | None:
    """The bearer token in ``token_file`` (surrounding whitespace stripped), else $NNMARK_TOKEN, else None."""
    if token_file is None:
        token = os.environ.get("NNMARK_TOKEN", "").strip().encode()
        return token or None
    try:
        with open(token_file, "rb") as fh:
            token = fh.read().strip()
    except OSError as e:
        raise CliError(f"{token_file}: cannot read token file: {e.strerror or e}") from None
    if not token:
        raise CliError(f"{token_file}: token file is empty")
    return token


env_option = click.option("--env", "env_name", type=click.Choice(list(envs.KNOWN)), default="float32",
                          show_default=True, help="Execution environment the local model runs in.")


@main.command()
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)
@env_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--model-name", default="model", show_default=True, help="The {name} in /v2/models/{name}.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Bearer token file (else NNMARK_TOKEN; none: open).")
@click.option("--output", type=click.Choice(["probabilities", "logits"]), default="probabilities", show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=256, show_default=True)
@click.option("--budget", type=click.IntRange(0), help="Most queries the server will answer in total.")
def serve(model_path, env_name, host, port, model_name, token_file, output, max_batch, budget) -> None:
    """Serve a model over HTTP with the Open Inference Protocol v2 (JSON)."""
    from nnmark import serve as serving

    model, config = models.load(model_path)
    oracle = envs.get(env_name).oracle(model, tuple(config.input_shape), budget=budget)
    token = _read_token(token_file)
    try:
        app = serving.create_app(oracle, model_name=model_name, token=token, output=output, max_batch=max_batch)
    except ValueError as e:
        raise CliError(str(e)) from e
    click.echo(f"serving {model_path} ({env_name}, {output}) as http://{host}:{port}/v2/models/{model_name}"
               f"{' with a bearer token' if token else ' WITHOUT a token'}", err=True)
    serving.run(app, host=host, port=port, log_level="warning")


@main.command()
@click.argument("key_path", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Local checkpoint to verify.")
@env_option
@click.option("--endpoint", help="Verify the model behind this OIP v2 base URL instead of --model.")
@click.option("--model-name", default="model", show_default=True, help="The endpoint's model name.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Bearer token file for --endpoint (else NNMARK_TOKEN).")
@click.option("--budget", type=click.IntRange(0), help="Most queries verification may spend.")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def verify(key_path, model_path, env_name, endpoint, model_name, token_file, budget, secret_file, unsigned,
           as_json) -> None:
    """Ask a model a key file's queries: exit 0 if the check passes, 1 if it fails, 2 on error."""
    if (model_path is None) == (endpoint is None):
        raise CliError("pass exactly one of --model FILE and --endpoint URL")
    secret = keys.read_secret(secret_file)
    key = keys.load(key_path, secret=secret, allow_unsigned=unsigned)
    if endpoint:
        from nnmark.oracles.remote import HttpOracle

        with HttpOracle(endpoint, model_name=model_name, token=_read_token(token_file), budget=budget) as oracle:
            verdict = marks.verify(oracle, key, secret=secret)
        where, digest_ok = {"endpoint": endpoint, "model_name": model_name}, None
    else:
        model, config = models.load(model_path)
        oracle = envs.get(env_name).oracle(model, tuple(config.input_shape), budget=budget)
        verdict = marks.verify(oracle, key, secret=secret)
        where = {"model": model_path, "env": env_name}
        digest_ok = models.digest(model) == key.model_digest if key.model_digest else None
    if as_json:
        click.echo(json.dumps({**verdict.to_dict(), "key": key_path, **where, "model_digest_matches": digest_ok}))
    else:
        n = verdict.details.get("n", len(key.expected))
        click.echo(f"{verdict.decision.upper()}: {verdict.statistic_name} {verdict.statistic:.2%}; "
                   f"{len(verdict.flipped)}/{n} answers differ from the key; {verdict.queries} queries spent")
        if verdict.flipped:
            click.echo(f"flipped: {verdict.flipped}")
    sys.exit(0 if verdict.passed else 1)


@main.command()
@click.argument("key_path", type=click.Path(dir_okay=False))
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Local checkpoint to ask.")
@env_option
@click.option("--endpoint", help="Ask the model behind this OIP v2 base URL instead of --model.")
@click.option("--model-name", default="model", show_default=True, help="The endpoint's model name.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Bearer token file for --endpoint (else NNMARK_TOKEN).")
@with_secret
@click.option("--json", "as_json", is_flag=True)
def identify(key_path, model_path, env_name, endpoint, model_name, token_file, secret_file, unsigned, as_json) -> None:
    """Which execution environment answers? Exit 0 if it is the key's reference environment, 1 if not."""
    if (model_path is None) == (endpoint is None):
        raise CliError("pass exactly one of --model FILE and --endpoint URL")
    key = keys.load(key_path, secret=keys.read_secret(secret_file), allow_unsigned=unsigned)
    if key.method != innformant.METHOD:
        raise CliError(f"identify needs an {innformant.METHOD} key, not a {key.method} key (use verify)")
    if endpoint:
        from nnmark.oracles.remote import HttpOracle

        with HttpOracle(endpoint, model_name=model_name, token=_read_token(token_file)) as oracle:
            verdict = innformant.verify(oracle, key)
    else:
        model, config = models.load(model_path)
        verdict = innformant.verify(envs.get(env_name).oracle(model, tuple(config.input_shape)), key)
    if as_json:
        click.echo(json.dumps({**verdict.to_dict(), "key": key_path}))
    else:
        click.echo(f"{verdict.decision} (reference: {key.config['reference']}); {verdict.queries} queries spent")
        for name, count in verdict.details["match_table"].items():
            click.echo(f"  {name:<20} {count}/{len(key.expected)} boundary samples match")
    sys.exit(0 if verdict.passed else 1)


@main.command("envs")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), required=True)
@click.option("--data", "data_spec", help="Dataset whose test images are compared (default: the model's).")
@click.option("--n", type=click.IntRange(1), default=200, show_default=True)
def list_envs(model_path, data_spec, n) -> None:
    """The execution environments available here, and how far their outputs differ on test images."""
    model, config = models.load(model_path)
    x = _dataset_for(config, data_spec).test.x[:n]
    reference = envs.get("float32").oracle(model, tuple(config.input_shape))
    p0, y0 = reference.probabilities(x), reference.labels(x)
    click.echo(f"{'environment':<20} {'available':<10} {'max |dp|':>10} {'labels differ':>14}  description")
    for status, oracle in envs.probe(model, tuple(config.input_shape)):
        if oracle is None:
            click.echo(f"{status.name:<20} {'no':<10} {'':>10} {'':>14}  {status.reason}")
            continue
        try:
            dp = (oracle.probabilities(x) - p0).abs().max().item()
            differ = int((oracle.labels(x) != y0).sum())
        finally:
            oracle.close()
        click.echo(f"{status.name:<20} {'yes':<10} {dp:>10.2e} {differ:>14}  {status.description}")


@main.group()
def bench() -> None:
    """Benchmarks that write their tables to docs/benchmarks/."""


BENCHMARKS = {
    "dbi": ("dbi", "DBI vs natural and random samples under fine-tuning and weight noise (Yin et al., Tables 4 and 8)."),
    "integrity": ("integrity", "Validset, DBI, AID and Pairs under backdoor, fine-tuning, pruning and int8 quantization "
                  "(Gao et al.)."),
    "ownership-fingerprint": ("metafinger", "MetaFinger and IPGuard under model and input modifications, and on "
                              "independent models (Yang et al.)."),
    "ownership-watermark": ("coupled", "Function-coupled watermarks vs backdoor and frontier-stitching watermarks "
                            "under fine-tuning, transfer, pruning and overwriting (Wen et al.)."),
    "telltale": ("innformant", "iNNformant boundary samples: success, PSNR, steps, cost and identify through "
                 "nnmark serve."),
}
"""Benchmark command name -> (module in nnmark.bench, help)."""


def _bench_command(name: str, module: str, doc: str) -> None:
    @bench.command(name, help=doc)
    @click.option("--quick", is_flag=True, help="Minutes, not the full run: fewer seeds, samples and iterations.")
    @click.option("--seeds", type=click.IntRange(1), help="Number of seeds (default: the full run's, quick 1).")
    @click.option("--out-dir", type=click.Path(file_okay=False), default="docs/benchmarks", show_default=True)
    def command(quick, seeds, out_dir) -> None:
        bench_module = importlib.import_module(f"nnmark.bench.{module}")
        path = bench_module.run(quick=quick, seeds=seeds, out_dir=out_dir, progress=progress_enabled())
        click.echo(f"wrote {path}")


for _name, (_module, _doc) in BENCHMARKS.items():
    _bench_command(_name, _module, _doc)
