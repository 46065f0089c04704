"""A ready classifier to train with mixing: the module, CIFAR/digits datamodules and backbones."""

from lightning_mixup.classification.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
)
from lightning_mixup.classification.models import CifarResNet18, PreActResNet18, SmallCNN
from lightning_mixup.classification.module import (
    SoftLabelClassifier,
    cosine_annealing,
    default_optimizer,
)

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CifarResNet18",
    "DigitsDataModule",
    "PreActResNet18",
    "SmallCNN",
    "SoftLabelClassifier",
    "cosine_annealing",
    "default_optimizer",
]
