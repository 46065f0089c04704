"""What mixing does to a model: adversarial robustness, calibration plots, mixed-image grids.

The comparison runner (:mod:`lightning_mixup.evaluation.compare`) is imported on its own.
"""

from lightning_mixup.evaluation.robustness import AdversarialEval, fgsm, pgd
from lightning_mixup.evaluation.visual import MixedGridLogger

__all__ = ["AdversarialEval", "MixedGridLogger", "fgsm", "pgd"]
