"""CIFAR models: a registry (``get_model``, ``list_models``), builders and weight loading."""

from .plain import PlainConvNet, m_cifarnet, tiny_cnn, vgg16_bn
from .registry import get_model, get_model_builder, list_models, register_model
from .resnet_cifar import (
    RESNET_WEIGHTS,
    BasicBlock,
    ResNetCifar,
    resnet8,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .weights import (
    CIFAR10_NORMALIZATION,
    IMAGENET_NORMALIZATION,
    Weights,
    extract_state_dict,
    input_normalization,
    load_checkpoint_file,
    load_weights,
)

__all__ = [
    "BasicBlock",
    "CIFAR10_NORMALIZATION",
    "IMAGENET_NORMALIZATION",
    "PlainConvNet",
    "RESNET_WEIGHTS",
    "ResNetCifar",
    "Weights",
    "extract_state_dict",
    "get_model",
    "get_model_builder",
    "input_normalization",
    "list_models",
    "load_checkpoint_file",
    "load_weights",
    "m_cifarnet",
    "register_model",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "tiny_cnn",
    "vgg16_bn",
]
