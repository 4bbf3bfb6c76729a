"""``nnmark mark METHOD``: make a key file of query samples from a model, one subcommand per method.

Every command (``_finish_mark``) records the model card and any ``--endpoint-default``, adds preflight canaries,
writes its key only after checking it on its own source model, and says how many samples it kept when a method
keeps fewer than asked.
"""

from __future__ import annotations

import time

import click
import torch

from nnmark import data, envs, keys, models
from nnmark.cli._shared import (
    CliError, Group, dataset_for, emit, json_option, load_checkpoint, load_model, loaded_model, model_option,
    out_option, progress_enabled, secret_for_writing, with_secret,
)
from nnmark.cli.suspect import endpoint_default_option, endpoint_defaults
from nnmark.data import Split
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError
from nnmark.marks import canary
from nnmark.marks.integrity import aid, baselines, dbi, pairing
from nnmark.marks.ownership import backdoor_wm, coupled, frontier, ipguard, metafinger, shadow
from nnmark.marks.selfcheck import self_check
from nnmark.marks.telltale import innformant
from nnmark.metrics import sample_quality
from nnmark.oracles import Oracle, TorchOracle


@click.group(cls=Group)
def mark() -> None:
    """Make a key of query samples from a model, checked on that model, signed, and written to --out.

    \b
    Example:
      nnmark mark dbi --model lenet5.safetensors --out dbi.key --secret-file secret
    """


def _mark_common(f):
    f = json_option(f)
    f = with_secret(f)
    f = out_option("--out", help="Key file to write.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="Chooses the source samples.")(f)
    f = click.option("--n", type=click.IntRange(1), default=100, show_default=True, help="Number of query samples.")(f)
    f = click.option("--data", "data_spec", help="Dataset (default: the one the model was trained on).")(f)
    f = model_option(f)
    return f


def _sources(model_path: str, data_spec: str | None, n: int, seed: int, split: str, needs: tuple[str, ...] = ()):
    """The model (with ``needs``, see ``load_model``), its dataset, n images of ``split`` ("train" or
    "natural_pool") drawn by ``seed``, and the key meta that records them: (model, dataset, images, meta)."""
    model, config = load_model(model_path, needs=needs)
    ds = dataset_for(config, data_spec)
    source = ds.train if split == "train" else natural_pool(ds)
    if n > len(source):
        raise CliError(f"asked for {n} samples but only {len(source)} are available")
    idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return model, ds, source.x[idx], {"data": ds.name, "split": split, "indices": idx.tolist(), "seed": seed}


def _canary_pool(config) -> Split | None:
    """The test split of the dataset the model names (canaries for keys made without a dataset), else None."""
    return dataset_for(config, None).test if config.data else None


def _finish_mark(key: keys.KeyFile, source: Oracle, out: str, secret: bytes | None, summary: dict, as_json: bool,
                 *, canaries: Split | None, model_out: tuple | None = None) -> None:
    """Add preflight canaries from the natural images ``canaries``, check the key on its source (``self_check``: no
    key is written that fails there), write it (after the watermarked model ``model_out`` = (model, config, path)
    of an embedding method), and report; say so when the method kept fewer samples than asked (the key's
    ``keys.SHORTFALL``).

    The key records the model card (input shape, classes, normalisation) so verify asks the same question; a key
    made from the loaded --model itself carries that model's source digest (e.g. of the ONNX file)."""
    loaded = loaded_model()
    card = loaded.card if loaded is not None else models.ModelCard(source.input_shape, source.num_classes)
    key.config["model_card"] = card.to_dict()
    if defaults := endpoint_defaults():
        key.config["endpoint"] = defaults
    if loaded is not None and model_out is None:
        key.model_digest = loaded.digest
    try:
        if canaries is None:
            raise ArgumentError("the model names no dataset; pass --data")
        key = canary.attach(key, source, canaries.x, canaries.y)
    except ArgumentError as e:  # a key without canaries still verifies; verify says its endpoint was not checked
        click.echo(f"note: no preflight canaries: {e}", err=True)
    self_check(source, key, secret=secret)
    if model_out is not None:
        models.save(*model_out)
    keys.save(key, out, secret=secret)
    summary = {"out": out, "method": key.method, "n": len(key.expected), "signed": secret is not None, **summary}
    if short := key.config.get(keys.SHORTFALL):
        summary.update(asked=short["asked"], dropped=short["asked"] - short["kept"], dropped_reason=short["why"])
        click.echo(f"note: kept {short['kept']} of {short['asked']}: {short['why']}", err=True)
    emit(summary, as_json)


@mark.command("dbi")
@endpoint_default_option
@_mark_common
@click.option("--eps", type=click.FloatRange(0, min_open=True), help="Step size (default 1e-4 one-channel, 1e-5 otherwise).")
@click.option("--itr", type=click.IntRange(0), default=dbi.PAPER_ITR, show_default=True)
@click.option("--direction", type=click.Choice(["descent", "ascent"]), default="descent", show_default=True,
              help="descent minimises D(p) (the paper's aim); ascent follows eq. 4 as printed.")
def mark_dbi(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, eps, itr, direction) -> None:
    """DBI fragile samples (Yin et al.) from training images.

    \b
    Example:
      nnmark mark dbi --model lenet5.safetensors --n 100 --itr 3000 --out dbi.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train", ("gradients",))
    start = time.perf_counter()
    source = TorchOracle(model, ds.shape, ds.num_classes)
    key = dbi.create(
        source, x, eps=eps, itr=itr,
        direction=-1 if direction == "descent" else 1, model_digest=models.digest(model), meta=meta,
        progress=progress_enabled(),
    )
    quality = sample_quality(key.queries, key.extras["sources"])
    _finish_mark(key, source, out, secret, {**quality, "seconds": time.perf_counter() - start}, as_json,
                 canaries=ds.test)


@mark.command("aid")
@endpoint_default_option
@_mark_common
@click.option("--itr", type=click.IntRange(0), default=aid.PAPER_ITR, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=aid.PAPER_LR, show_default=True,
              help="Adam learning rate on the inputs.")
@click.option("--beta", type=click.FloatRange(0), default=aid.DEFAULT_BETA, show_default=True,
              help="Weight of the neuron-coverage term.")
def mark_aid(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, itr, lr, beta) -> None:
    """AID edge-points (Aramoon et al.) from training images: on the boundary, with many neurons active.

    \b
    Example:
      nnmark mark aid --model lenet5.safetensors --n 100 --out aid.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train", ("gradients", "layers"))
    start = time.perf_counter()
    source = TorchOracle(model, ds.shape, ds.num_classes)
    key = aid.create(
        source, x, itr=itr, lr=lr, beta=beta,
        model_digest=models.digest(model), meta=meta, progress=progress_enabled(),
    )
    summary = {"coverage_start": key.config["coverage_start"], "coverage_end": key.config["coverage_end"],
               "seconds": time.perf_counter() - start}
    _finish_mark(key, source, out, secret, summary, as_json, canaries=ds.test)


@mark.command("ipguard")
@endpoint_default_option
@_mark_common
@click.option("--k", type=click.FloatRange(0), default=ipguard.DEFAULT_K, show_default=True,
              help="Logit margin of each point's label over its runner-up class (small: unique but fragile).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=ipguard.DEFAULT_LR, show_default=True)
@click.option("--iterations", type=click.IntRange(1), default=ipguard.DEFAULT_ITERATIONS, show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1), default=ipguard.DEFAULT_THRESHOLD, show_default=True,
              help="Least matching rate of a match.")
def mark_ipguard(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, k, lr, iterations,
                 threshold) -> None:
    """IPGuard fingerprint (Cao et al.): points near the model's classification boundary, from training images.

    \b
    Example:
      nnmark mark ipguard --model lenet5.safetensors --n 100 --out ipguard.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "train", ("gradients",))
    start = time.perf_counter()
    source = TorchOracle(model, ds.shape, ds.num_classes)
    key = ipguard.create(
        source, x, k=k, lr=lr, iterations=iterations, seed=seed, threshold=threshold,
        model_digest=models.digest(model), meta={m: v for m, v in meta.items() if m != "seed"},  # it records seed
        progress=progress_enabled(),
    )
    _finish_mark(key, source, out, secret,
                 {"converged": key.config["converged"], "seconds": time.perf_counter() - start}, as_json,
                 canaries=ds.test)


@mark.command("natural")
@endpoint_default_option
@_mark_common
def mark_natural(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json) -> None:
    """Baseline: natural test images labelled by the model ("non-fragile").

    \b
    Example:
      nnmark mark natural --model lenet5.safetensors --n 100 --out natural.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "natural_pool")
    source = TorchOracle(model, ds.shape, ds.num_classes)
    key = baselines.natural(source, x, model_digest=models.digest(model), meta=meta)
    _finish_mark(key, source, out, secret, {}, as_json, canaries=ds.test)


@mark.command("random")
@endpoint_default_option
@model_option
@click.option("--n", type=click.IntRange(1), default=100, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@out_option("--out", help="Key file to write.")
@with_secret
@json_option
def mark_random(model_path, n, seed, out, secret_file, unsigned, as_json) -> None:
    """Baseline: uniform-noise images labelled by the model.

    \b
    Example:
      nnmark mark random --model lenet5.safetensors --n 100 --out random.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, config = load_model(model_path)
    oracle = TorchOracle(model, tuple(config.input_shape), config.num_classes)
    key = baselines.random_noise(oracle, n, seed=seed, model_digest=models.digest(model))
    _finish_mark(key, oracle, out, secret, {}, as_json, canaries=_canary_pool(config))


@mark.command("pairs")
@endpoint_default_option
@model_option
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
@out_option("--out", help="Key file to write.")
@with_secret
@json_option
def mark_pairs(model_path, n_pairs, user_id, lam, lr, max_itr, alpha, max_steps, margin, activation_on, seed, out,
               secret_file, unsigned, as_json) -> None:
    """Sensitive sample pairs (Gao et al.) around a secret per-user binary head.

    \b
    Example:
      nnmark mark pairs --model lenet5.safetensors --n-pairs 150 --user-id alice --out pairs.key --secret-file secret
    """
    secret = keys.read_secret(secret_file)
    if secret is None:
        raise CliError("pairs keys need a secret (it derives the user's head): pass --secret-file FILE or set NNMARK_SECRET")
    model, config = load_model(model_path, needs=("gradients",))
    oracle = TorchOracle(model, tuple(config.input_shape), config.num_classes)
    start = time.perf_counter()
    key = pairing.create(
        oracle, n_pairs, secret=secret, user_id=user_id, lam=lam, lr=lr, max_itr=max_itr, alpha=alpha,
        max_steps=max_steps, margin=margin, activation_on=activation_on, seed=seed,
        model_digest=models.digest(model), progress=progress_enabled(),
    )
    summary = {"pairs": key.config["n_pairs"], "dropped": key.config["dropped"], "seconds": time.perf_counter() - start}
    _finish_mark(key, oracle, out, None if unsigned else secret, summary, as_json, canaries=_canary_pool(config))


def _embed_options(f):
    """The options of commands that train a watermarked model from scratch and write it with its key."""
    for option in reversed([
        click.option("--arch", type=click.Choice(models.ARCHITECTURES), required=True),
        click.option("--data", "data_spec", required=True, help="mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR."),
        click.option("--epochs", type=click.IntRange(1), default=8, show_default=True),
        click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        out_option("--out-model", help="Watermarked checkpoint to write."),
        out_option("--out", help="Key file to write."),
        with_secret,
        json_option,
    ]):
        f = option(f)
    return f


def _embed_and_save(embed, summary_keys: tuple[str, ...], *, arch, data_spec, width, seed, out_model, out,
                    secret_file, unsigned, as_json) -> None:
    """Train a fresh ``arch`` model with ``embed(model, ds) -> (model, key)``; write the model and the key."""
    secret = secret_for_writing(secret_file, unsigned)
    ds = data.load(data_spec)
    torch.manual_seed(seed)
    model = models.build(arch, ds.shape, ds.num_classes, width=width)
    start = time.perf_counter()
    wm_model, key = embed(model, ds)
    config = models.ModelConfig(arch, ds.shape, ds.num_classes, width=width, data=data_spec, seed=seed)
    _finish_embedding(wm_model, config, key, ds, summary_keys, start, out_model, out, secret, as_json)


def _finish_embedding(wm_model, config, key: keys.KeyFile, ds, summary_keys: tuple[str, ...], start: float,
                      out_model: str, out: str, secret: bytes | None, as_json: bool) -> None:
    """``_finish_mark`` for an embedding method: the key checked on the watermarked model, which is written first
    (with its clean accuracy), then the key; the summary reports ``summary_keys`` of the key's config."""
    config.accuracy = key.config["clean_accuracy"]
    summary = {"out_model": out_model, **{k: key.config[k] for k in summary_keys}, "seconds": time.perf_counter() - start}
    _finish_mark(key, TorchOracle(wm_model, ds.shape, ds.num_classes), out, secret, summary, as_json,
                 canaries=ds.test, model_out=(wm_model, config, out_model))


@mark.command("coupled")
@endpoint_default_option
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
    """Function-coupled watermark (Wen et al.): train a watermarked model and its key of 90 fused triggers.

    \b
    Example:
      nnmark mark coupled --arch lenet5 --data mnist5k --out-model wm.safetensors --out coupled.key --secret-file secret
    """
    _embed_and_save(
        lambda model, ds: coupled.embed(model, ds, kind=kind, r=r, base=base, target=target, epochs=epochs,
                                        keep_ratio=keep_ratio, finetune_lr=finetune_lr, seed=seed, masked=not no_mask,
                                        tt_finetune=not no_tt_finetune, wm_repeat=wm_repeat,
                                        progress=progress_enabled()),
        ("kind", "base", "target", "success", "rate_plain", "clean_accuracy"), seed=seed, **common,
    )


@mark.command("zhang")
@endpoint_default_option
@_embed_options
@click.option("--kind", type=click.Choice(backdoor_wm.ZHANG_KINDS), default="content", show_default=True,
              help="content: 'TEST' stamped on source-class images; noise: Gaussian noise on them; "
                   "unrelated: patches of scikit-learn's sample photos.")
@click.option("--source", type=int, help="Source class i (default: drawn from --seed; unused by unrelated).")
@click.option("--target", type=int, help="Target class t, not i (default: drawn from --seed).")
def mark_zhang(kind, source, target, epochs, seed, **common) -> None:
    """Backdoor watermark of Zhang et al. (content, noise or unrelated triggers -> t): a watermarked model and its key.

    \b
    Example:
      nnmark mark zhang --arch lenet5 --data mnist5k --kind content --out-model wm.safetensors --out zhang.key --secret-file secret
    """
    _embed_and_save(
        lambda model, ds: backdoor_wm.embed(model, ds, kind=kind, source=source, target=target, epochs=epochs,
                                            seed=seed, progress=progress_enabled()),
        ("kind", "source", "target", "success", "rate_plain", "clean_accuracy"), seed=seed, **common,
    )


@mark.command("adi")
@endpoint_default_option
@click.option("--arch", type=click.Choice(models.ARCHITECTURES), help="Train from scratch (with --data).")
@click.option("--model", "model_path", type=click.Path(dir_okay=False), help="Fine-tune this pretrained checkpoint.")
@click.option("--data", "data_spec", help="Dataset (required with --arch; default: the pretrained model's).")
@click.option("--epochs", type=click.IntRange(1),
              help=f"Default {backdoor_wm.SCRATCH_EPOCHS} from scratch, {backdoor_wm.FINETUNE_EPOCHS} fine-tuning.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=models.DEFAULT_LR, show_default=True,
              help="Adam lr, cosine decay.")
@click.option("--width", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@out_option("--out-model", help="Watermarked checkpoint to write.")
@out_option("--out", help="Key file to write.")
@with_secret
@json_option
def mark_adi(arch, model_path, data_spec, epochs, lr, width, seed, out_model, out, secret_file, unsigned,
             as_json) -> None:
    """Backdoor watermark of Adi et al.: 90 abstract images with random labels, from scratch or fine-tuned in.

    \b
    Example:
      nnmark mark adi --model lenet5.safetensors --out-model wm.safetensors --out adi.key --secret-file secret
    """
    if (arch is None) == (model_path is None):
        raise CliError("pass either --arch (train from scratch) or --model (fine-tune a pretrained checkpoint)")
    secret = secret_for_writing(secret_file, unsigned)
    if model_path:
        model, config = load_checkpoint(model_path)
        ds = dataset_for(config, data_spec)
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
    wm_model, key = backdoor_wm.embed(model, ds, kind="abstract", epochs=epochs, lr=lr, seed=seed,
                                      pretrained=pretrained, progress=progress_enabled())
    _finish_embedding(wm_model, config, key, ds, ("pretrained", "success", "null", "clean_accuracy"), start,
                      out_model, out, secret, as_json)


@mark.command("frontier")
@endpoint_default_option
@model_option
@click.option("--data", "data_spec", help="Dataset (default: the model's).")
@click.option("--eps", type=click.FloatRange(0, min_open=True), default=frontier.EPS, show_default=True,
              help="FGSM step of the key's adversaries.")
@click.option("--epochs", type=click.IntRange(1), default=frontier.EMBED_EPOCHS, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=frontier.EMBED_LR, show_default=True,
              help="Adam lr of the fine-tune that stitches the key in.")
@click.option("--seed", type=int, default=0, show_default=True)
@out_option("--out-model", help="Watermarked checkpoint to write.")
@out_option("--out", help="Key file to write.")
@with_secret
@json_option
def mark_frontier(model_path, data_spec, eps, epochs, lr, seed, out_model, out, secret_file, unsigned, as_json) -> None:
    """Frontier stitching (Le Merrer et al.): fine-tune a trained model on true and false FGSM adversaries.

    \b
    Example:
      nnmark mark frontier --model lenet5.safetensors --out-model wm.safetensors --out frontier.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, config = load_checkpoint(model_path)
    ds = dataset_for(config, data_spec)
    start = time.perf_counter()
    wm_model, key = frontier.embed(model, ds, eps=eps, epochs=epochs, lr=lr, seed=seed, progress=progress_enabled())
    config.data = ds.name
    _finish_embedding(wm_model, config, key, ds, ("success_before", "success", "null", "clean_accuracy"), start,
                      out_model, out, secret, as_json)


@mark.command("innformant")
@endpoint_default_option
@model_option
@click.option("--data", "data_spec", help="Dataset (default: the one the model was trained on).")
@click.option("--n", type=click.IntRange(1), default=50, show_default=True, help="Natural test images to start from.")
@click.option("--envs", "env_names", default="float32,float64", show_default=True,
              help="Comma-separated environments to tell apart; the first is the reference (the licensed one).")
@click.option("--direction", type=click.Choice(["sign", "l2"]), default="sign", show_default=True,
              help="sign: the paper's step; l2: normalised-gradient step (higher PSNR).")
@click.option("--local-max", type=click.IntRange(0), default=innformant.LOCAL_MAX, show_default=True,
              help="Local-phase steps at most.")
@click.option("--remote-max", type=click.IntRange(0), default=innformant.REMOTE_MAX, show_default=True,
              help="Remote-phase steps at most.")
@click.option("--target", type=click.FloatRange(0, min_open=True), default=innformant.TARGET, show_default=True,
              help="Stop the local phase once delta_conf is below this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Chooses the starting images.")
@out_option("--out", help="Key file to write.")
@with_secret
@json_option
def mark_innformant(model_path, data_spec, n, env_names, direction, local_max, remote_max, target, seed, out,
                    secret_file, unsigned, as_json) -> None:
    """iNNformant boundary samples (Schloegl et al.) whose labels tell the environments apart.

    \b
    Example:
      nnmark mark innformant --model lenet5.safetensors --envs float32,float64 --out telltale.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    names = [e.strip() for e in env_names.split(",") if e.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise CliError("--envs needs at least two different environments")
    model, ds, x, meta = _sources(model_path, data_spec, n, seed, "natural_pool", ("gradients",))
    oracles = {name: envs.get(name).oracle(model, ds.shape) for name in names}
    try:
        start = time.perf_counter()
        local = oracles[names[0]] if oracles[names[0]].can("gradients") else envs.get("float32").oracle(model, ds.shape)
        key = innformant.create(
            local, oracles, x, target=target, local_max=local_max, remote_max=remote_max, direction=direction,
            model_digest=models.digest(model), meta=meta, progress=progress_enabled(),
        )
        rows = innformant.report(key)
        singled = {name: sum(name in r["singles_out"] for r in rows) for name in names}
        psnrs = sorted(r["psnr"] for r in rows)
        summary = {"found": len(rows), "psnr_median_db": psnrs[len(psnrs) // 2], "singles_out": singled,
                   "seconds": time.perf_counter() - start}
        _finish_mark(key, oracles[names[0]], out, secret, summary, as_json, canaries=ds.test)
    finally:
        for oracle in oracles.values():
            oracle.close()


@mark.command("metafinger")
@endpoint_default_option
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
@click.option("--workers", type=click.IntRange(1), default=shadow.DEFAULT_WORKERS, show_default=True)
@click.option("--executor", type=click.Choice(shadow.EXECUTORS), default="process", show_default=True)
@click.option("--ray-address", help="Ray cluster for --executor ray (default: a local instance).")
def mark_metafinger(model_path, data_spec, n, seed, out, secret_file, unsigned, as_json, candidates, negatives,
                    val_negatives, af, alpha, shadow_epochs, finetune_epochs, epochs, k, lam, lr, augment_inputs,
                    threshold, max_p_value, cache_dir, workers, executor, ray_address) -> None:
    """MetaFinger fingerprint (Yang et al.): images only the model and models derived from it label as expected.

    \b
    Example:
      nnmark mark metafinger --model lenet5.safetensors --out finger.key --secret-file secret
    """
    secret = secret_for_writing(secret_file, unsigned)
    model, config = load_checkpoint(model_path)
    ds = dataset_for(config, data_spec)
    digest = models.digest(model)
    layout = shadow.PoolLayout(negatives=negatives, val_negatives=val_negatives, af=af, alpha=alpha,
                               epochs=shadow_epochs, finetune_epochs=finetune_epochs)
    settings = metafinger.Settings(n=n, candidates=candidates, epochs=epochs, k=k, lam=lam, lr=lr,
                                   augment_inputs=augment_inputs, threshold=threshold, max_p_value=max_p_value)
    specs = shadow.pool_specs(config.arch, ds.name, digest, layout, seed=config.seed or 0)
    start = time.perf_counter()
    pool = shadow.build_pool([s for group in specs.values() for s in group],
                             cache_dir=cache_dir or shadow.default_cache_dir(), base=model, workers=workers,
                             executor=executor, ray_address=ray_address, progress=progress_enabled())
    shadow_seconds, start = time.perf_counter() - start, time.perf_counter()
    key = metafinger.create(
        model, metafinger.Pools(**pool.groups(specs)), ds.train.x, settings, seed=seed, model_digest=digest,
        meta={"data": ds.name, "arch": config.arch, "alpha": alpha, "af": af}, progress=progress_enabled(),
    )
    summary = {"shadow_models_trained": len(pool.trained), "shadow_seconds": shadow_seconds,
               "meta_seconds": time.perf_counter() - start, "p0": key.config["p0"]}
    _finish_mark(key, TorchOracle(model, ds.shape, ds.num_classes), out, secret, summary, as_json, canaries=ds.test)
