"""Attacks: what an adversary or an accident does to a model (model -> new model).

Attacks never import marks; each is deterministic by its seed and leaves its input model untouched.
"""

from nnmark.attacks.finetune import finetune
from nnmark.attacks.noise import weight_noise

__all__ = ["finetune", "weight_noise"]
