"""Model zoo (LeNet-5, CIFAR ResNets, narrow VGG, ImageNet-size ResNet-50 and ViTs), safetensors checkpoints,
training, and models from any source (``load_any``: checkpoint, ``package.module:factory`` + safetensors weights,
TorchScript, torch.export, ONNX) with the ``ModelCard`` that says what each expects."""

from nnmark.models.card import ModelCard, Normalized, parse_normalize
from nnmark.models.checkpoint import ARCHITECTURES, ModelConfig, build, digest, load, save
from nnmark.models.sources import SOURCES, LoadedModel, load_any, save_like
from nnmark.models.training import DEFAULT_BATCH_SIZE, DEFAULT_LR, accuracy, batchnorm_layers, device_of, outputs, train

__all__ = ["ARCHITECTURES", "DEFAULT_BATCH_SIZE", "DEFAULT_LR", "LoadedModel", "ModelCard", "ModelConfig", "Normalized",
           "SOURCES", "accuracy", "batchnorm_layers", "build", "device_of", "digest", "load", "load_any", "outputs",
           "parse_normalize", "save", "save_like", "train"]
