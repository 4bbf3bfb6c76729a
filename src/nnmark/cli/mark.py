"""``nnmark mark METHOD``: make a key file of query samples from a model, one subcommand per method.

One command per entry of ``nnmark.marks.METHODS``, generated from it: the help is the method's summary and what
its input kind takes; its options are the method's (``MethodSpec.options``: the parameters of its create function,
typed and documented, see ``nnmark.options``). What each input kind (``nnmark.marks.spec.INPUTS``) needs is written
once here (``KINDS``): the model with the access its method declares, the dataset, the images drawn by --seed, the
environments' oracles, a fresh or the given model to train (any trainable --model source, written back as the same
kind), MetaFinger's shadow-model pools.

Every command (``_finish_mark``) records the model card and any ``--endpoint-default``, adds preflight canaries,
writes its key only after checking it on its own source model, and says how many samples it kept when a method
keeps fewer than asked.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import click
import torch

from nnmark import envs, keys, models
from nnmark.cli._shared import (
    CliError, FiniteFloat, Group, click_option, dataset_for, device_option, emit, json_option, load_model,
    micro_batch_option, model_option, model_to_train, out_option, secret_for_writing, with_progress, with_secret,
)
from nnmark.cli.suspect import endpoint_default_option
from nnmark.data import Split
from nnmark.data.roles import natural_pool
from nnmark.errors import ArgumentError
from nnmark.marks import METHODS, MethodSpec, canary
from nnmark.marks.ownership import metafinger, sac, shadow
from nnmark.marks.selfcheck import self_check
from nnmark.models.training import micro_batches
from nnmark.oracles import Oracle, TorchOracle
from nnmark.oracles.local import DEFAULT_BATCH_SIZE

NEEDS = {"labels": (), "probabilities": (), "gradients": ("gradients",), "internals": ("gradients", "layers")}
"""A method's create access -> what its --model must allow (``models.LoadedModel.require``)."""
EXAMPLE = "nnmark mark {name} {source} {more} --out {name}.key --secret-file secret"


@click.group(cls=Group)
def mark() -> None:
    """Make a key of query samples from a model, checked on that model, signed, and written to --out.

    \b
    Example:
      nnmark mark dbi --model lenet5.safetensors --out dbi.key --secret-file secret
    """


@dataclass
class _Prepared:
    """What an input kind gives a method's create function, and how the result becomes (key, source oracle, the
    watermarked model's writer or None): ``finish(result)``; ``loaded``: the --model as loaded (None for --arch)."""

    args: tuple
    finish: Callable[[object], tuple[keys.KeyFile, Oracle, Callable[[], None] | None]]
    canaries: Split | None
    loaded: models.LoadedModel | None
    context: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Kind:
    """How the CLI serves one input kind: its options (given the method), a context manager (method, option values
    of the kind with ``model_source``, ``progress`` and ``secret`` (the owner's, or None), the method's option
    values) -> ``_Prepared``, a line of help and the source part of its example."""

    options: Callable[[MethodSpec], tuple[Callable, ...]]
    prepare: Callable[[MethodSpec, dict, dict], contextlib.AbstractContextManager[_Prepared]]
    help: str
    example: str


def _made_on(key_oracle: Oracle) -> Callable:
    """``finish`` of a kind whose method returns a key made on ``key_oracle``."""
    return lambda key: (key, key_oracle, None)


def _data_option(help_text: str = "Dataset (default: the one the model was trained on)."):
    return click.option("--data", "data_spec", help=help_text)


_batch_option = click.option(
    "--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
    help="Queries per forward/backward (peak memory follows it, not the number of queries); the key records it "
         "and verify asks in the same micro-batches.")


def _oracle(model, input_shape, num_classes, given: dict) -> TorchOracle:
    """The oracle a key is made on: ``model`` on --device, in micro-batches of --batch-size."""
    return TorchOracle(model, input_shape, num_classes, batch_size=given["batch_size"], device=given["device"])


def _seed_option(help_text: str):
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def _image_options(spec: MethodSpec) -> tuple[Callable, ...]:
    return (model_option, _data_option(),
            click.option("--n", type=click.IntRange(1), default=spec.n, show_default=True,
                         help="Number of images to start from."),
            _seed_option("Chooses the images."))


def _load(spec: MethodSpec, given: dict, needs: tuple[str, ...]):
    """The --model (``model_source``) and its ``LoadedModel``, with what ``needs`` names allowed."""
    return load_model(given["model_source"], needs=needs, purpose=f"nnmark mark {spec.name}")


def _images(spec: MethodSpec, given: dict, split: str):
    """The model (with the access ``spec`` needs), its ``LoadedModel``, its dataset, n images of ``split`` ("train"
    or "natural_pool") drawn by seed, and what create is given with them (n, seed, the key meta that records the
    images)."""
    model, loaded = _load(spec, given, NEEDS[spec.create_access])
    ds = dataset_for(loaded, given["data_spec"])
    source = ds.train if split == "train" else natural_pool(ds)
    n, seed = given["n"], given["seed"]
    if n > len(source):
        raise CliError(f"asked for {n} samples but only {len(source)} are available")
    idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    meta = {"data": ds.name, "split": split, "indices": idx.tolist(), "seed": seed}
    return model, loaded, ds, source.x[idx], {"n": n, "seed": seed, "meta": meta}


def _drawn(split: str):
    @contextlib.contextmanager
    def prepare(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
        model, loaded, ds, x, context = _images(spec, given, split)
        oracle = _oracle(model, ds.shape, ds.num_classes, given)
        yield _Prepared((oracle, x), _made_on(oracle), ds.test, loaded, context)
    return prepare


@contextlib.contextmanager
def _environments(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
    """(local oracle, {name: the environment's oracle}, natural images); the oracles are closed afterwards and the
    key is checked in its reference environment."""
    names = [e.strip() for e in given["env_names"].split(",") if e.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise CliError("--envs needs at least two different environments")
    model, loaded, ds, x, context = _images(spec, given, "natural_pool")
    with contextlib.ExitStack() as stack:
        oracles = {name: stack.enter_context(envs.get(name).oracle(model, ds.shape, device=given["device"]))
                   for name in names}
        local = oracles[names[0]]
        if not local.can("gradients"):
            local = stack.enter_context(envs.get("float32").oracle(model, ds.shape, device=given["device"]))
        yield _Prepared((local, oracles, x), lambda key: (key, oracles[key.config["reference"]], None), ds.test,
                        loaded, context)


def _canary_pool(loaded: models.LoadedModel) -> Split | None:
    """The test split of the dataset the model names (canaries for keys made without a dataset), else None."""
    return dataset_for(loaded, None).test if loaded.data else None


@contextlib.contextmanager
def _model_only(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
    model, loaded = _load(spec, given, NEEDS[spec.create_access])
    oracle = _oracle(model, loaded.input_shape, loaded.num_classes, given)
    yield _Prepared((oracle,), _made_on(oracle), _canary_pool(loaded), loaded)


# --- embedding kinds: train a model, write it with its key ---------------------------------------------------


def _embed_options(*, scratch: bool, pretrained: bool) -> tuple[Callable, ...]:
    """--arch (``scratch``), --model (trained from scratch, or fine-tuned when ``pretrained``), --data, --width and
    --out-model."""
    model_help = ("the model to fine-tune (any trainable source)" if pretrained else
                  "train its architecture from scratch: an nnmark checkpoint's or a package.module:factory's (with "
                  "--input-shape and --normalize, no --weights)")
    options = (click.option("--arch", type=click.Choice(models.ARCHITECTURES), help="Train this zoo architecture "
                            "from scratch (with --data)."),) if scratch else ()
    return (*options, model_option(required=not scratch, help=f"The model: {model_help}."),
            _data_option("mnist5k, digits, cifar10:DIR, npz:FILE or folder:DIR (required with --arch; default: the "
                         "model's)."),
            *((click.option("--width", type=FiniteFloat(0, min_open=True), default=1.0, show_default=True,
                            help="Width of the --arch model."),) if scratch else ()),
            out_option("--out-model", help="Watermarked model to write, as the same kind as --model (--arch: an "
                                           "nnmark checkpoint)."))


def _training(pretrained: bool | None):
    """The kind that trains a fresh model (``pretrained`` False), the given one (True), or either (None: --arch or
    --model, the method told which)."""
    @contextlib.contextmanager
    def prepare(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
        tune = given["model_source"] is not None if pretrained is None else pretrained
        model, ds, write, loaded = model_to_train(given.get("arch"), given["model_source"], given["data_spec"],
                                                  width=given.get("width", 1.0), seed=values.get("seed", 0),
                                                  fresh=not tune, purpose=f"nnmark mark {spec.name}")

        def finish(result):
            wm_model, key = result
            return key, TorchOracle(wm_model, ds.shape, ds.num_classes, device=given["device"],
                                    batch_size=key.config.get("batch_size")), \
                lambda: write(wm_model.cpu(), key.config["clean_accuracy"], given["out_model"])

        yield _Prepared((model.to(given["device"]), ds), finish, ds.test, loaded, {"pretrained": tune},
                        {"out_model": given["out_model"]})
    return prepare


# --- MetaFinger's shadow-model pools -------------------------------------------------------------------------------


def _shadow_options(spec: MethodSpec) -> tuple[Callable, ...]:
    return (
        model_option, _data_option(), _seed_option("Chooses the starting images and the meta-training draws."),
        click.option("--negatives", type=click.IntRange(1), default=shadow.DEFAULT_NEGATIVES, show_default=True,
                     help="Negative train families (models trained from scratch, each with AF augmentations)."),
        click.option("--val-negatives", type=click.IntRange(1), default=shadow.DEFAULT_VAL_NEGATIVES,
                     show_default=True, help="Independent negative validation models (screen and null calibration)."),
        click.option("--af", type=click.IntRange(0), default=shadow.DEFAULT_AF, show_default=True,
                     help="Augmentation factor: eq. 1 copies per model."),
        click.option("--alpha", type=FiniteFloat(0, min_open=True), default=shadow.DEFAULT_ALPHA,
                     show_default=True, help="Eq. 1 noise std(param)/alpha before the fine-tune."),
        click.option("--pool", type=click.Choice(shadow.POOL_DESIGNS), default="paper", show_default=True,
                     help="Pool design: the paper's; thief-aware (adds one RTAL, prune, noise, distilled and "
                          "extracted copy of the source as positive train models; 5 more shadow models); or "
                          "thief-wide (also a distilled and an extracted student of each other zoo family, LeNet-5, "
                          "VGG-11, ResNet-20, and a 90%-pruned copy: 10 more for a source of those families; zoo "
                          "models without a normalisation only; its negatives are all of the source's family, and "
                          "on a ResNet-20 source it claimed independent LeNet-5s). See "
                          "docs/benchmarks/metafinger-pools.md."),
        click.option("--shadow-epochs", type=click.IntRange(1), default=shadow.DEFAULT_EPOCHS, show_default=True),
        micro_batch_option("--train-micro-batch", what="Training the shadow models (and SAC's scratch models)",
                           more=" A pool trained in micro-batches is cached apart."),
        click.option("--finetune-epochs", type=click.IntRange(0), default=shadow.DEFAULT_FINETUNE_EPOCHS,
                     show_default=True),
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Shadow-model cache (default ~/.cache/nnmark/shadow)."),
        click.option("--workers", type=click.IntRange(1), default=shadow.DEFAULT_WORKERS, show_default=True),
        click.option("--executor", type=click.Choice(shadow.EXECUTORS), default="process", show_default=True),
        click.option("--ray-address", help="Ray cluster for --executor ray (default: a local instance)."),
        click.option("--ray-timeout", type=FiniteFloat(0, min_open=True), default=shadow.DEFAULT_RAY_TIMEOUT,
                     help="Seconds to wait for each batch of Ray tasks; past it they are cancelled and the command "
                          "stops (default: no limit)."),
    )


@contextlib.contextmanager
def _shadow_pools(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
    """(source model, its shadow pools, training images): the pools of the source's architecture (a zoo checkpoint's
    or a package.module:factory's, ``shadow.pool_specs_for``) built, or read from the cache, first: on --device (the
    cache files are the same whatever trained them); the key is made on the CPU. SAC's scratch negatives
    (``sac.scratch_specs``) are built and cached with the pools, so SAC-m and SAC-w keys of one source share them."""
    model, loaded = _load(spec, given, ("training",))
    ds = dataset_for(loaded, given["data_spec"])
    micro = shadow.pool_micro_batch(given["train_micro_batch"], model, ds.train.x)
    layout = shadow.PoolLayout(negatives=given["negatives"], val_negatives=given["val_negatives"], af=given["af"],
                               alpha=given["alpha"], epochs=given["shadow_epochs"],
                               finetune_epochs=given["finetune_epochs"], micro_batch=micro)
    design = given["pool"]
    specs = shadow.pool_specs_for(loaded, ds.name, layout.design(design, shadow.source_arch(loaded)))
    negative = specs["negatives_val"][0]  # a from-scratch model of the source's recipe
    scratch = (sac.scratch_specs(negative, values["scratch_negatives"], epochs=values["scratch_epochs"],
                                 seed=given["seed"]) if "scratch_negatives" in values else None)
    start = time.perf_counter()
    pool = shadow.build_pool([*(s for group in specs.values() for s in group), *(scratch or ())],
                             cache_dir=given["cache_dir"] or shadow.default_cache_dir(), base=model,
                             workers=given["workers"], executor=given["executor"], ray_address=given["ray_address"],
                             ray_timeout=given["ray_timeout"], progress=given["progress"], device=given["device"])
    oracle = TorchOracle(model, ds.shape, ds.num_classes)
    with micro_batches(micro):  # SAC's distilled negatives train while the key is made
        yield _Prepared((model, metafinger.Pools(**pool.groups(specs)), ds.train.x), _made_on(oracle), ds.test,
                        loaded, {"seed": given["seed"], "dataset": ds, "device": given["device"],
                                 **({"scratch": pool.select(scratch)} if scratch is not None else {}),
                                 "meta": {"data": ds.name, "arch": negative.arch, "alpha": given["alpha"],
                                          "af": given["af"],
                                          **({"pool": design} if design != "paper" else {}),
                                          **({"train_micro_batch": micro} if micro else {})}},
                        {"shadow_models_trained": len(pool.trained),
                         "shadow_seconds": time.perf_counter() - start})


# --- DAWN: the record a served API kept -------------------------------------------------------------------------


def _record_options(spec: MethodSpec) -> tuple[Callable, ...]:
    return (model_option(help="The served model (what the API answered with)."),
            click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False),
                         help="Folder the API recorded its watermarked answers in (nnmark serve --dawn-record)."),
            click.option("--n", type=click.IntRange(1), default=spec.n, show_default=True,
                         help="Most recorded inputs the key asks."),
            _seed_option("Chooses the recorded inputs."), _batch_option)


@contextlib.contextmanager
def _recorded(spec: MethodSpec, given: dict, values: dict) -> Iterator[_Prepared]:
    """(the served model's oracle, the record folder); the new key is checked on what the API answers
    (``dawn.DawnOracle`` at the record's rate under the same secret, recording nothing)."""
    from nnmark.marks.ownership import dawn

    model, loaded = _load(spec, given, NEEDS[spec.create_access])
    oracle = _oracle(model, loaded.input_shape, loaded.num_classes, given)
    yield _Prepared((oracle, given["record_dir"]),
                    lambda key: (key, dawn.DawnOracle(oracle, given["secret"], rate=key.config["rate"]), None),
                    _canary_pool(loaded), loaded, {"n": given["n"], "seed": given["seed"]})


KINDS: dict[str, _Kind] = {
    "samples": _Kind(lambda spec: (*_image_options(spec), _batch_option), _drawn("train"), "Made from --n training images drawn by --seed.",
                     "--model lenet5.safetensors --n {n}"),
    "natural": _Kind(lambda spec: (*_image_options(spec), _batch_option), _drawn("natural_pool"),
                     "Made from --n natural images (held-out test images) drawn by --seed.",
                     "--model lenet5.safetensors --n {n}"),
    "environments": _Kind(
        lambda spec: (*_image_options(spec), click.option(
            "--envs", "env_names", default="float32,float64", show_default=True,
            help="Comma-separated environments to tell apart; the first is the reference (the licensed one) unless "
                 "--reference names another.")),
        _environments, "Made from --n natural images (held-out test images) drawn by --seed, in each of --envs.",
        "--model lenet5.safetensors --n {n}"),
    "none": _Kind(lambda spec: (model_option, _batch_option), _model_only, "Made from the model alone.",
                  "--model lenet5.safetensors"),
    "embed": _Kind(lambda spec: _embed_options(scratch=True, pretrained=False), _training(False),
                   "Trains a fresh model with the watermark: --arch (with --data), or --model's architecture (an "
                   "nnmark checkpoint's, or a package.module:factory's); writes it to --out-model.",
                   "--arch lenet5 --data mnist5k --out-model wm.safetensors"),
    "pretrained": _Kind(lambda spec: _embed_options(scratch=False, pretrained=True), _training(True),
                        "Fine-tunes --model (any trainable source) with the watermark; writes it to --out-model as "
                        "the same kind.", "--model lenet5.safetensors --out-model wm.safetensors"),
    "embed_or_pretrained": _Kind(
        lambda spec: _embed_options(scratch=True, pretrained=True), _training(None),
        "Trains a fresh --arch model (with --data), or fine-tunes --model (any trainable source); writes it to "
        "--out-model as the same kind.", "--model lenet5.safetensors --out-model wm.safetensors"),
    "shadow": _Kind(_shadow_options, _shadow_pools,
                    "Trains shadow models of --model's architecture first (a checkpoint's or a "
                    "package.module:factory's; on --device, cached in --cache-dir); the key is made on the CPU.",
                    "--model lenet5.safetensors"),
    "record": _Kind(_record_options, _recorded,
                    "Made from the queries a served API answered with a watermark (nnmark serve --dawn-record); needs "
                    "the secret it served with.", "--model lenet5.safetensors --record wm-record --n {n}"),
}
"""Input kind (``nnmark.marks.spec.INPUTS``) -> how the command gets that input."""


def _secrets(spec: MethodSpec, secret_file: str | None, unsigned: bool) -> tuple[bytes | None, bytes | None]:
    """(the secret ``create`` takes, if it takes one; the secret the key is signed with, None with --unsigned)."""
    if "secret" not in inspect.signature(spec.create).parameters:
        return None, secret_for_writing(secret_file, unsigned)
    secret = keys.read_secret(secret_file)
    if secret is None:
        raise CliError(f"{spec.name} keys need a secret (it derives the key): pass --secret-file FILE or set "
                       f"{keys.SECRET_ENV}")
    return secret, None if unsigned else secret


def _finish_mark(key: keys.KeyFile, source: Oracle, out: str, secret: bytes | None, summary: dict, as_json: bool,
                 *, prepared: _Prepared, write_model: Callable[[], None] | None, endpoint_defaults: dict) -> None:
    """Add preflight canaries from the natural images ``prepared.canaries``, check the key on its source
    (``self_check``: no key is written that fails there), write it (after the watermarked model, ``write_model``, of
    an embedding method), and report; say so when the method kept fewer samples than asked (the key's
    ``keys.SHORTFALL``).

    The key records the model card (input shape, classes, normalisation) so verify asks the same question, and the
    environment it was made in (``envs.stamp``: device, dtype, backend flags); a key
    made from the loaded --model itself carries that model's source digest (e.g. of the ONNX file); the key keeps
    ``endpoint_defaults`` (--endpoint-default)."""
    loaded, canaries = prepared.loaded, prepared.canaries
    card = loaded.card if loaded is not None else models.ModelCard(source.input_shape, source.num_classes)
    key.config["model_card"] = card.to_dict()
    envs.stamp(key, source)
    if endpoint_defaults:
        key.config["endpoint"] = endpoint_defaults
    if loaded is not None and write_model is None:
        key.model_digest = loaded.digest
    if getattr(source, "batch_size", None):  # the micro-batches it was made in: verify asks in the same ones
        key.config["batch_size"] = source.batch_size
    notes = []  # said once the key is written: a failed command's stderr is its one error line
    try:
        if canaries is None:
            raise ArgumentError("the model names no dataset; pass --data")
        key = canary.attach(key, source, canaries.x, canaries.y)
    except ArgumentError as e:  # a key without canaries still verifies; verify says its endpoint was not checked
        notes.append(f"note: no preflight canaries: {e}")
    self_check(source, key, secret=secret)
    if write_model is not None:
        write_model()
    keys.save(key, out, secret=secret)
    for note in notes:
        click.echo(note, err=True)
    summary = {"out": out, "method": key.method, "n": len(key.expected), "signed": secret is not None, **summary}
    if short := key.config.get(keys.SHORTFALL):
        summary.update(asked=short["asked"], dropped=short["asked"] - short["kept"], dropped_reason=short["why"])
        click.echo(f"note: kept {short['kept']} of {short['asked']}: {short['why']}", err=True)
    emit(summary, as_json)


def _command(spec: MethodSpec) -> click.Command:
    kind = KINDS[spec.inputs]
    options = spec.options

    def run(out: str, secret_file: str | None, unsigned: bool, as_json: bool, endpoint_defaults: dict,
            **given) -> None:
        values = {o.name: given.pop(o.name) for o in options}
        arguments = spec.arguments(values)  # the method's settings checked before any work
        secret, signing = _secrets(spec, secret_file, unsigned)
        with kind.prepare(spec, {**given, "secret": secret}, values) as prepared:
            start = time.perf_counter()
            result = spec.call(*prepared.args, arguments=arguments, **prepared.context, secret=secret,
                               progress=given["progress"])
            seconds = time.perf_counter() - start
            key, source, write_model = prepared.finish(result)
            summary = {**prepared.summary, **{name: key.config[name] for name in spec.shows},
                       **(spec.describe(key) if spec.describe else {}), "seconds": seconds}
            _finish_mark(key, source, out, signing, summary, as_json, prepared=prepared, write_model=write_model,
                         endpoint_defaults=endpoint_defaults)

    run = endpoint_default_option(out_option("--out", help="Key file to write.")(
        with_secret(json_option(with_progress(device_option(run))))))
    for option in reversed(options):  # help lists the kind's options, the method's, then the key's output
        run = click_option(option)(run)
    for decorate in reversed(kind.options(spec)):
        run = decorate(run)
    first = spec.summary.split()[0]
    summary = spec.summary[:1].upper() + spec.summary[1:] if first.islower() else spec.summary  # not "INNformant"
    example = " ".join(EXAMPLE.format(name=spec.name, source=kind.example.format(n=spec.n), more=spec.example).split())
    doc = f"{summary}.\n\n{kind.help}\n\n\b\nExample:\n  {example}"
    return click.command(spec.name, help=doc, short_help=summary)(run)


for _spec in METHODS.values():
    mark.add_command(_command(_spec))
