"""Attacks: what an adversary or an accident does to a model (model -> new model), or to an input; a thief who
only has an oracle extracts a copy from it (``extract.extract_from``: oracle -> new model).

Attacks never import marks; each is deterministic by its seed and leaves its input model untouched.
Every module of this package is imported here, so each attack or transform registers itself in
``ATTACKS`` / ``TRANSFORMS`` (the contract: ``nnmark.attacks.registry``); adding one is adding a module.
"""

import importlib
import pkgutil

from nnmark.attacks import measure
from nnmark.attacks.backdoor import BackdoorReport, backdoor, stamp_trigger
from nnmark.attacks.finetune import finetune
from nnmark.attacks.modes import MODES, finetune_mode
from nnmark.attacks.noise import relative_weight_noise, weight_noise
from nnmark.attacks.overwrite import overwrite
from nnmark.attacks.prune import prune
from nnmark.attacks.prune_finetune import prune_finetune
from nnmark.attacks.quantize import quantize_dynamic_torch, quantize_int8, quantize_static_torch
from nnmark.attacks.registry import ATTACKS, TRANSFORMS, Spec
from nnmark.attacks.transfer import transfer

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ATTACKS", "MODES", "TRANSFORMS", "BackdoorReport", "Spec", "backdoor", "finetune", "finetune_mode", "measure",
    "overwrite", "prune", "prune_finetune", "quantize_dynamic_torch", "quantize_int8", "quantize_static_torch",
    "relative_weight_noise", "stamp_trigger", "transfer", "weight_noise",
]
