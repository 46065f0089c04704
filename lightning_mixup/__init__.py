"""lightning-mixup: correct, resumable, DDP-aware MixUp and CutMix for PyTorch Lightning.

The core (:mod:`~lightning_mixup.functional`, :mod:`~lightning_mixup.policies`,
:mod:`~lightning_mixup.callback`) needs only torch and Lightning and is imported here. The layers
above it load when a name of theirs is first used, so ``import lightning_mixup`` brings in no
torchvision dataset code, scikit-learn, plotting or attack code of ours:

* :mod:`lightning_mixup.classification` — a ready classifier, backbones and datamodules;
* :mod:`lightning_mixup.segmentation` — a ready segmenter, a small FCN and a digits datamodule;
* :mod:`lightning_mixup.detection` — a ready detector (torchvision's Faster R-CNN) and a digits
  datamodule;
* :mod:`lightning_mixup.evaluation` — robustness, calibration plots and the comparison runner.

Every public name is also reachable from the top level (``lightning_mixup.MixupCallback``,
``lightning_mixup.SoftLabelClassifier``, ...), which is how YAML configs name them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_mixup.callback import MixupCallback
from lightning_mixup.policies import CutMix, MixParams, MixUp, MixUpOrCutMix

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lightning_mixup.classification import (
        CIFAR10DataModule,
        CIFAR100DataModule,
        CifarResNet18,
        DigitsDataModule,
        PreActResNet18,
        SmallCNN,
        SoftLabelClassifier,
        cosine_annealing,
        default_optimizer,
    )
    from lightning_mixup.detection import DigitsDetectionDataModule, FasterRCNNDetector
    from lightning_mixup.evaluation import (
        AdversarialEval,
        MixedGridLogger,
        OODEval,
        TemperatureScaling,
        fgsm,
        fit_temperature,
        ood_auroc,
        pgd,
    )
    from lightning_mixup.segmentation import (
        DigitsSegmentationDataModule,
        SmallFCN,
        SoftLabelSegmenter,
    )

# Public names of the upper layers and the subpackage that defines each; loaded on first use.
_LAZY = {
    name: f"lightning_mixup.{package}"
    for package, names in {
        "classification": (
            "CIFAR10DataModule",
            "CIFAR100DataModule",
            "CifarResNet18",
            "DigitsDataModule",
            "PreActResNet18",
            "SmallCNN",
            "SoftLabelClassifier",
            "cosine_annealing",
            "default_optimizer",
        ),
        "segmentation": ("DigitsSegmentationDataModule", "SmallFCN", "SoftLabelSegmenter"),
        "detection": ("DigitsDetectionDataModule", "FasterRCNNDetector"),
        "evaluation": (
            "AdversarialEval",
            "MixedGridLogger",
            "OODEval",
            "TemperatureScaling",
            "fgsm",
            "fit_temperature",
            "ood_auroc",
            "pgd",
        ),
    }.items()
    for name in names
}

__all__ = [
    "AdversarialEval",
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "CifarResNet18",
    "CutMix",
    "DigitsDataModule",
    "DigitsDetectionDataModule",
    "DigitsSegmentationDataModule",
    "FasterRCNNDetector",
    "MixParams",
    "MixUp",
    "MixUpOrCutMix",
    "MixedGridLogger",
    "MixupCallback",
    "OODEval",
    "PreActResNet18",
    "SmallCNN",
    "SmallFCN",
    "SoftLabelClassifier",
    "SoftLabelSegmenter",
    "TemperatureScaling",
    "cosine_annealing",
    "default_optimizer",
    "fgsm",
    "fit_temperature",
    "ood_auroc",
    "pgd",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import an upper-layer name the first time it is asked for (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'lightning_mixup' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
