"""A ready detector to train with mixing: torchvision's Faster R-CNN and a digits-canvas datamodule."""

from lightning_mixup.detection.data import DigitsDetectionDataModule, collate_detection
from lightning_mixup.detection.module import FasterRCNNDetector, detection_optimizer

__all__ = [
    "DigitsDetectionDataModule",
    "FasterRCNNDetector",
    "collate_detection",
    "detection_optimizer",
]
