"""lightning-mixup: correct, resumable, DDP-aware MixUp and CutMix for PyTorch Lightning."""

from lightning_mixup.callback import MixupCallback
from lightning_mixup.policies import CutMix, MixParams, MixUp, MixUpOrCutMix

__all__ = ["CutMix", "MixParams", "MixUp", "MixUpOrCutMix", "MixupCallback"]
__version__ = "0.1.0"
