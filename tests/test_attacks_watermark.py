"""Transfer-learning and overwriting attacks (Wen et al. sec. 5.3) on a trained LeNet-5."""

import importlib
import inspect

import pytest
import torch

from nnmark import data, models
from nnmark.attacks.overwrite import overwrite
from nnmark.attacks.transfer import transfer
from nnmark.data import Split
from nnmark.data.roles import attacker_data, natural_pool
from nnmark.errors import DataError
from nnmark.marks.ownership import coupled
from nnmark.models import ModelCard


@pytest.fixture(scope="module")
def digits28(mnist):
    digits = data.load_for("digits", ModelCard(mnist.shape, mnist.num_classes))  # upsampled to 28 x 28
    return digits.train, digits.test


def test_transfer_learns_the_new_domain_is_seeded_and_leaves_the_model_untouched(lenet, mnist, digits28):
    train, test = digits28
    before_digest = models.digest(lenet)
    acc_before = models.accuracy(lenet, test)
    a = transfer(lenet, train, epochs=3, seed=0)
    b = transfer(lenet, train, epochs=3, seed=0)
    assert models.digest(a) == models.digest(b) and models.digest(lenet) == before_digest
    assert models.digest(transfer(lenet, train, epochs=3, seed=1)) != models.digest(a)
    assert models.accuracy(a, test) >= acc_before + 0.1  # it really learns digits at lr 1e-4
    assert models.accuracy(a, mnist.test) >= 0.5
    assert not a.training


def test_transfer_refuses_bad_data_and_arguments(lenet, digits28):
    train, _ = digits28
    with pytest.raises(DataError):
        transfer(lenet, Split(train.x, train.y + 10), epochs=1)
    with pytest.raises(DataError):
        transfer(lenet, Split(train.x * 2, train.y), epochs=1)
    with pytest.raises(ValueError):
        transfer(lenet, train, lr=0.0, epochs=1)
    with pytest.raises(ValueError):
        transfer(lenet, train, epochs=-1)


def test_overwriting_embeds_the_attackers_second_watermark(lenet, mnist):
    atk = attacker_data(mnist)
    gen = torch.Generator().manual_seed(0)
    x_wm = coupled.make_triggers(atk, (2, 4), 36, kind="direct", r=0.5, generator=gen)
    checks = coupled.make_triggers(natural_pool(mnist), (2, 4), 90, kind="direct", r=0.5, generator=gen)
    y_wm = torch.full((36,), 5)
    rate = lambda m: (m(checks).argmax(1) == 5).float().mean().item()  # noqa: E731
    before = models.digest(lenet)
    attacked = overwrite(lenet, x_wm, y_wm, atk, lr=1e-3, epochs=5, seed=0)
    assert models.digest(lenet) == before
    assert models.digest(overwrite(lenet, x_wm, y_wm, atk, lr=1e-3, epochs=5, seed=0)) == models.digest(attacked)
    with torch.no_grad():
        assert rate(lenet) < 0.5 and rate(attacked) >= 0.8
    assert models.accuracy(attacked, mnist.test) >= models.accuracy(lenet, mnist.test) - 0.05
    with pytest.raises(ValueError):
        overwrite(lenet, x_wm, y_wm[:3], atk, epochs=1)
    with pytest.raises(DataError):
        overwrite(lenet, x_wm, torch.full((36,), 12), atk, epochs=1)


def test_attacks_never_import_marks():
    for name in ("transfer", "overwrite"):  # the package may export functions of the same names
        assert "nnmark.marks" not in inspect.getsource(importlib.import_module(f"nnmark.attacks.{name}"))
