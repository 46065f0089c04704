"""A ready segmenter to train with mixing: the module, a digits-canvas datamodule and a small FCN."""

from lightning_mixup.segmentation.data import DigitsSegmentationDataModule
from lightning_mixup.segmentation.models import SmallFCN
from lightning_mixup.segmentation.module import SoftLabelSegmenter

__all__ = ["DigitsSegmentationDataModule", "SmallFCN", "SoftLabelSegmenter"]
