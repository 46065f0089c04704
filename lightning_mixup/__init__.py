"""lightning-mixup: correct, resumable, DDP-aware MixUp and CutMix for PyTorch Lightning."""

from lightning_mixup.callback import MixupCallback
from lightning_mixup.data import CIFAR10DataModule, CIFAR100DataModule, DigitsDataModule
from lightning_mixup.models import CifarResNet18, PreActResNet18, SmallCNN
from lightning_mixup.module import SoftLabelClassifier, cosine_annealing, default_optimizer
from lightning_mixup.policies import CutMix, MixParams, MixUp, MixUpOrCutMix
from lightning_mixup.robustness import AdversarialEval, fgsm, pgd

__all__ = [
    "AdversarialEval",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CifarResNet18",
    "CutMix",
    "DigitsDataModule",
    "MixParams",
    "MixUp",
    "MixUpOrCutMix",
    "MixupCallback",
    "PreActResNet18",
    "SmallCNN",
    "SoftLabelClassifier",
    "cosine_annealing",
    "default_optimizer",
    "fgsm",
    "pgd",
]
__version__ = "0.1.0"
