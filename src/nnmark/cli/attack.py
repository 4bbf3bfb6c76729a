"""``nnmark attack NAME``: change a model as an adversary or an accident would (model -> new model)."""

from __future__ import annotations

import click
import torch

from nnmark import data, models
from nnmark.attacks import (
    MODES, backdoor, finetune, finetune_mode, measure, overwrite, prune, quantize_int8, relative_weight_noise, resize,
    transfer, weight_noise,
)
from nnmark.cli._shared import CliError, dataset_for, load_model, model_option, out_option
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.marks.ownership import coupled


def attack_io(f):
    """The --model (model to attack) and --out (attacked model, the same source kind) options every attack takes."""
    f = out_option("--out", help="Attacked model to write, as the same kind as --model.")(f)
    return model_option(f)


@click.group()
def attack() -> None:
    """Change a model the way an adversary or an accident would (model -> new model).

    \b
    Example:
      nnmark attack finetune --model lenet5.safetensors --out ft.safetensors --lr 1e-4 --steps 100
    """


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
    model, config = load_model(model_path, needs=("training", "saving"))
    split = attacker_data(dataset_for(config, data_spec))
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
    model, config = load_model(model_path, needs=("saving",))
    _save_attacked(weight_noise(model, std, seed=seed), config, out, f"added N(0, {std:g}^2) to every parameter")


@attack.command("relnoise")
@attack_io
@click.option("--alpha", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def attack_relnoise(model_path, out, alpha, seed) -> None:
    """Add N(0, (std(param)/alpha)^2) noise to each parameter tensor (MetaFinger eq. 1)."""
    model, config = load_model(model_path)
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
    model, config = load_model(model_path)
    split = attacker_data(dataset_for(config, data_spec))
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
    model, config = load_model(model_path, needs=("training", "saving"))
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
    model, config = load_model(model_path, needs=("training", "saving"))
    split = attacker_data(dataset_for(config, data_spec))
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
    model, config = load_model(model_path, needs=("layers", "saving"))
    pruned = prune(model, fraction, scope=scope)
    _save_attacked(pruned, config, out, f"pruned {fraction:.2%} of weights ({scope}); sparsity {measure.sparsity(pruned):.2%}")


@attack.command("quantize")
@attack_io
@click.option("--granularity", type=click.Choice(["tensor", "channel"]), default="tensor", show_default=True)
def attack_quantize(model_path, out, granularity) -> None:
    """Symmetric int8 weight quantization, dequantized back to float32 (per tensor or per output channel)."""
    model, config = load_model(model_path, needs=("layers", "saving"))
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
    model, config = load_model(model_path, needs=("training", "saving"))
    ds = dataset_for(config, data_spec)
    split = attacker_data(ds)
    attacked, report = backdoor(model, split.x, split.y, target=target, max_steps=max_steps, test=natural_pool(ds),
                                n_poison=n_poison, patch=patch, lr=lr, seed=seed)
    _save_attacked(attacked, config, out, f"backdoor to class {target}: {report.steps} steps, poison success "
                   f"{report.poison_success:.0%}, held-out trigger success {report.heldout_success:.0%}")


def _save_attacked(model: torch.nn.Module, loaded: models.LoadedModel, out: str, what: str) -> None:
    """Write the attacked ``model`` as ``loaded``'s source kind (with its test accuracy if the model names its data)."""
    accuracy = models.accuracy(model, data.load_for(loaded.data, loaded).test) if loaded.data else None
    models.save_like(loaded, model, out, accuracy=accuracy)
    acc = "" if accuracy is None else f" (test accuracy {accuracy:.2%})"
    click.echo(f"{what}{acc} -> {out}")
