"""Model zoo (LeNet-5, CIFAR ResNets, narrow VGG), safetensors checkpoints, and training."""

from nnmark.models.checkpoint import ARCHITECTURES, ModelConfig, build, digest, load, save
from nnmark.models.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, accuracy, batchnorm_layers, train

__all__ = ["ARCHITECTURES", "DEFAULT_BATCH_SIZE", "DEFAULT_LR", "ModelConfig", "accuracy", "batchnorm_layers", "build",
           "digest", "load", "save", "train"]
