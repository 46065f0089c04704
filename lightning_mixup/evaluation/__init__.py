"""What mixing does to a model: adversarial robustness, calibration, OOD detection, pictures.

The comparison runner that trains a grid of arms with these is ``lightning-mixup compare``
(:mod:`lightning_mixup.tune.compare`, the ``[tune]`` extra).
"""

from lightning_mixup.evaluation.calibration import TemperatureScaling, fit_temperature
from lightning_mixup.evaluation.ood import OODEval, max_softmax, ood_auroc
from lightning_mixup.evaluation.robustness import AdversarialEval, fgsm, pgd
from lightning_mixup.evaluation.visual import MixedGridLogger

__all__ = [
    "AdversarialEval",
    "MixedGridLogger",
    "OODEval",
    "TemperatureScaling",
    "fgsm",
    "fit_temperature",
    "max_softmax",
    "ood_auroc",
    "pgd",
]
