"""Every registered attack and transform keeps the contract of ``nnmark.attacks.registry``, on a tiny model."""

import ast
import inspect
import textwrap

import pytest
import torch
from torch import nn

from nnmark import data, models
from nnmark.attacks import ATTACKS, TRANSFORMS
from nnmark.attacks.registry import DATA
from nnmark.options import SCALARS
from nnmark.data.roles import attacker_data, natural_pool

QUICK = {"epochs": 2, "steps": 5, "max_steps": 20}
"""Shorter runs for the options that set how long an attack trains."""


def tiny_net() -> nn.Module:
    """A 2-conv net for 8x8 digits, with BatchNorm so that BatchNorm handling is exercised."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def victim(digits):
    torch.manual_seed(0)
    return models.train(tiny_net(), digits.train, epochs=2, seed=0)


def data_for(kind: str, ds) -> tuple:
    """The positional data of each ``DATA`` kind, from the digits dataset."""
    att = attacker_data(ds)
    if kind == "attacker":
        return att.x, att.y
    if kind == "domain":
        return (natural_pool(ds),)
    if kind == "watermark":
        return att.x[:8].flip(-1), torch.full((8,), 3), att
    return ()


def call(spec, model, ds, **options):
    """What ``spec`` returns for ``model`` on the digits, with the ``QUICK`` settings it has."""
    quick = {k: v for k, v in QUICK.items() if k in {o.name for o in spec.options}}
    return spec(model, *data_for(spec.data, ds), **{**quick, **options})


def run(spec, model, ds, **options):
    out = call(spec, model, ds, **options)
    return out[0] if spec.reports else out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_returns_a_new_changed_model_and_is_deterministic(name, victim, digits):
    spec = ATTACKS[name]
    before = models.digest(victim)
    attacked = run(spec, victim, digits)
    assert models.digest(victim) == before and victim is not attacked  # the input is untouched
    assert type(attacked) is type(victim) and not attacked.training
    shapes = {k: v.shape for k, v in victim.state_dict().items()}
    assert {k: v.shape for k, v in attacked.state_dict().items()} == shapes
    assert models.digest(attacked) != before  # the weights changed
    assert models.digest(run(spec, victim, digits)) == models.digest(attacked)  # same seed, same weights
    if "seed" in {o.name for o in spec.options}:
        assert models.digest(run(spec, victim, digits, seed=1)) != models.digest(attacked)


@pytest.mark.parametrize("name", sorted(n for n, spec in ATTACKS.items() if "test" in spec.inputs()))
def test_every_attack_given_a_test_split_reports_the_copys_accuracy_on_it(name, victim, digits):
    spec, held_out = ATTACKS[name], natural_pool(digits)
    attacked, report = call(spec, victim, digits, test=held_out)
    assert spec.reports and report.test_accuracy == models.accuracy(attacked, held_out)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_changes_the_input_only_in_its_output_and_is_deterministic(name, digits):
    x = digits.test.x[:16]
    kept = x.clone()
    out = TRANSFORMS[name]()(x)
    assert torch.equal(x, kept) and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.equal(TRANSFORMS[name]()(x), out)


def _literal_defaults(fn) -> list[str]:
    """Parameters whose default in ``fn``'s source is a literal other than None/False/True or a seed's 0."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn.__init__ if isinstance(fn, type) else fn)))
    args = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)).args
    params = args.posonlyargs + args.args
    pairs = list(zip(params[len(params) - len(args.defaults):], args.defaults)) + list(zip(args.kwonlyargs,
                                                                                              args.kw_defaults))
    return [a.arg for a, d in pairs if isinstance(d, ast.Constant) and d.value not in (None, False, True)
            and not (a.arg == "seed" and d.value == 0)]


@pytest.mark.parametrize("spec", [*ATTACKS.values(), *TRANSFORMS.values()], ids=lambda s: s.name)
def test_every_option_is_typed_documented_and_defaults_to_a_named_constant(spec):
    assert spec.summary.strip() and spec.applies_to.strip() and spec.data in DATA
    for option in spec.options:
        assert option.type in SCALARS and option.default is not inspect.Parameter.empty, option
        assert option.help, f"{spec.name}: {option.name} has no line in the docstring's Args section"
        assert option.choices is None or option.default in option.choices
    assert _literal_defaults(spec.fn) == [], spec.name


def test_specs_call_through_to_the_plain_function(victim):
    assert ATTACKS["prune"].fn(victim, 0.3).state_dict().keys() == ATTACKS["prune"](victim, 0.3).state_dict().keys()
    assert inspect.signature(ATTACKS["prune"]) == inspect.signature(ATTACKS["prune"].fn)
    assert "seed" in inspect.signature(TRANSFORMS["gaussian_noise"]).parameters
    assert ATTACKS["backdoor"].inputs() == ("test",)
    noise = TRANSFORMS["gaussian_noise"](std=0.1)
    assert noise.std == 0.1 and isinstance(noise(torch.zeros(1, 1, 2, 2)), torch.Tensor)
