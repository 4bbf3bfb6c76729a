"""Transfer-learning attack: fine-tune every layer on another domain with the same number of classes.

Paper: Wen et al., "On function-coupled watermarks for deep neural networks" (2023), sec. 5.3 and Fig. 7:
the stolen model is trained on a new 10-class dataset at learning rate 1e-4 "retaining the number of
classes", and the watermark and the accuracy on the original domain are measured after each trial.
nnmark's stand-in for CIFAR-10 -> MNIST: mnist5k -> scikit-learn digits upsampled to 28 x 28
(``data.load_for``).

Choices: Adam (torch defaults) at a constant ``lr`` (default 1e-4), cross-entropy, all parameters, train
mode (BatchNorm statistics follow the new domain), minibatches of ``batch_size`` (default 64) in an order
drawn from the ``seed``ed generator each epoch; the classifier head is kept (same class count), so the new
labels must lie in [0, K) for the model's K outputs. One "trial" of the paper is one epoch here.

Example::

    digits = data.load_for("digits", ModelCard((1, 28, 28), 10))     # upsampled to the model's input
    attacked = transfer(model, digits.train, epochs=1, seed=0)
"""

from __future__ import annotations

import copy

from torch import nn

from nnmark.attacks.modes import check_labelled
from nnmark.attacks.registry import register_attack
from nnmark.data import Split
from nnmark.models.training import fit

NEW_DOMAIN = "digits"
"""The bundled dataset that stands in for the paper's new domain (``nnmark attack transfer --to``)."""
DEFAULT_LR = 1e-4
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 64


@register_attack("transfer",
                 summary="Transfer learning: train all layers on another domain with the same classes (Adam).",
                 applies_to="classifiers of as many classes as the new domain; needs the new domain's data",
                 data="domain")
def transfer(
    model: nn.Module, split: Split, *, lr: float = DEFAULT_LR, epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0,
) -> nn.Module:
    """Return a copy of ``model`` trained ``epochs`` epochs on the new domain ``split`` (x in [0, 1], model's shape).

    Args:
        split: the new domain's labelled images (``.x`` (N, C, H, W) in [0, 1], ``.y`` in [0, K)).
        lr: Adam learning rate, > 0.
        epochs: passes over the new domain (the paper's trials).
        batch_size: images per step.
        seed: seeds the minibatch order.
    """
    check_labelled(model, split.x, split.y)
    attacked = copy.deepcopy(model)
    fit(attacked, split.x, split.y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
    return attacked
