"""``FasterRCNNDetector``: torchvision's small Faster R-CNN, trained from scratch, scored by mAP."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torch.optim import Optimizer
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from lightning_mixup import _checks as C
from lightning_mixup._boxes import check_detection_targets
from lightning_mixup.classification.module import _InjectedModule, cosine_annealing

__all__ = ["FasterRCNNDetector", "detection_optimizer"]

_ROI_FEATURES = 256 * 7 * 7  # the FPN's 256 channels, pooled to 7×7 per box (MultiScaleRoIAlign)


def detection_optimizer(params: Iterable[Any]) -> Optimizer:
    """AdamW with learning rate 1e-3 and weight decay 1e-4.

    The network starts from random weights; in short runs on the digits canvases this trained it
    faster than SGD at torchvision's reference rate (0.02, made for pretrained backbones). A
    module-level function, so it pickles (DDP spawn) and LightningCLI can name it.

    Example:
        >>> detection_optimizer(torch.nn.Linear(2, 2).parameters()).defaults["lr"]
        0.001
    """
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)


class FasterRCNNDetector(_InjectedModule):
    """torchvision's Faster R-CNN with a MobileNetV3-Large FPN backbone, from scratch, with mAP.

    The network is ``torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn``
    (Ren et al., NeurIPS 2015, *Faster R-CNN*) built with ``weights=None, weights_backbone=None``:
    randomly initialised, nothing is downloaded, ever, and its batch norms train. For small
    images on small machines, it resizes to 256 (``min_size``/``max_size``) and has a narrower box
    head trained on fewer proposals (the Detection guide says why).

    **Inputs.** Batches are ``[images, targets]``: images a float ``(B, C, H, W)`` tensor or a list
    of ``(C, H, W)`` tensors (sizes may differ), already normalised (the model's own normalisation
    is turned off); one channel is repeated to the backbone's three. Targets are torchvision's
    detection form: one dict per image with ``"boxes"`` (``(N, 4)`` float ``xyxy`` pixels) and
    ``"labels"`` (``(N,)`` int64 in ``[1, num_classes)``, 0 being the background); an image may
    have no boxes.

    **The loss** is the sum of the four losses torchvision's Faster R-CNN returns in training
    (``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``), each also
    logged under ``train/``.

    **Per-box weights.** Mixed targets may carry ``"weights"`` (λ for a MixUp sample's own boxes,
    ``1 - λ`` for its partner's). Faster R-CNN has no per-box loss weight, so they only *select*
    boxes: a box trains, at full weight, when its weight is greater than 0 and at least
    ``min_box_weight``; the others are removed from the targets (an image may then train with no
    boxes, as background). The default 0 trains every box of a MixUp pair; 0.5 keeps only the boxes
    of the image that dominates the blend. ``train/kept_boxes`` logs the share of boxes kept (only
    for batches with weights). Targets without ``"weights"`` train every box.

    **Metrics.** ``val/map`` and ``val/map_50`` (torchmetrics' ``MeanAveragePrecision``: COCO's
    mAP over IoU 0.50:0.95 and at IoU 0.50, boxes, up to 100 detections per image), and the same
    under ``test/``, computed once per epoch. They need ``pycocotools`` (``pip install
    "lightning-mixup[detection]"``). A ``ReduceLROnPlateau`` ``lr_scheduler`` monitors ``val/map``
    (build it with ``mode="max"``).

    Args:
        num_classes: Number of classes including the background class 0 (11 for the digits
            canvases).
        in_channels: Channels of the images: 1 (repeated to three) or 3.
        min_size: Side the model resizes each image's shorter side to (torchvision's
            ``min_size``).
        max_size: Longest side allowed after that resize (torchvision's ``max_size``).
        representation_size: Width of the box head's two fully connected layers.
        box_batch_size_per_image: Proposals sampled per image to train the box head.
        min_box_weight: Boxes whose ``"weights"`` entry is below this (or 0) are left out of the
            training loss; in ``[0, 1]``.
        optimizer: Callable that builds the optimizer from the parameters (LightningCLI's
            dependency-injection convention); defaults to :func:`detection_optimizer`.
        lr_scheduler: Callable that builds a scheduler from the optimizer, stepped once per
            epoch; None keeps the learning rate constant. The default,
            :func:`~lightning_mixup.classification.module.cosine_annealing`, decays over
            ``trainer.max_epochs``.

    Raises:
        ValueError: If an argument is out of range; at ``setup``, if the datamodule's
            ``num_classes`` differs; during a step, if a batch is malformed.
        TypeError: If a callable argument is not callable, or a batch has the wrong form.
        ImportError: If ``pycocotools`` is not installed.

    Example:
        >>> model = FasterRCNNDetector(num_classes=11)
        >>> model.eval()(torch.zeros(1, 1, 64, 64))[0]["boxes"].shape[1]
        4
    """

    _monitor = "val/map"
    _batch_form = (
        "`[images, targets]`: a list or tuple with the images at index 0 and one target dict per "
        "image at index 1"
    )
    _rebuild = "the module"

    def __init__(
        self,
        num_classes: int = 11,
        in_channels: int = 1,
        min_size: int = 256,
        max_size: int = 256,
        representation_size: int = 256,
        box_batch_size_per_image: int = 32,
        min_box_weight: float = 0.0,
        optimizer: OptimizerCallable = detection_optimizer,
        lr_scheduler: LRSchedulerCallable | None = cosine_annealing,
    ) -> None:
        super().__init__()
        self.num_classes = C.integer("num_classes", num_classes, 2)
        if in_channels not in (1, 3) or isinstance(in_channels, bool):
            raise ValueError(f"`in_channels` must be 1 or 3, got {in_channels!r}.")
        self.in_channels = in_channels
        C.positive_integer("min_size", min_size)
        C.integer("max_size", max_size, min_size)
        C.positive_integer("representation_size", representation_size)
        C.positive_integer("box_batch_size_per_image", box_batch_size_per_image)
        self.min_box_weight = C.number("min_box_weight", min_box_weight, 0.0, 1.0)
        self._set_optimizers(optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.model = fasterrcnn_mobilenet_v3_large_320_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            min_size=min_size,
            max_size=max_size,
            image_mean=[0.0, 0.0, 0.0],
            image_std=[1.0, 1.0, 1.0],
            box_batch_size_per_image=box_batch_size_per_image,
        )
        self.model.roi_heads.box_head = TwoMLPHead(_ROI_FEATURES, representation_size)
        self.model.roi_heads.box_predictor = FastRCNNPredictor(representation_size, num_classes)
        self.val_map = _mean_average_precision()
        self.test_map = _mean_average_precision()

    def forward(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detections per image (in eval mode): dicts with ``"boxes"``, ``"labels"``, ``"scores"``."""
        return self.model(self._images(images))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The sum of Faster R-CNN's four losses, on the boxes the weights keep."""
        images, given = self._unpack(batch)
        targets, kept, total, weighted = self._train_targets(given)
        losses = self.model(self._images(images), targets)
        loss = sum(losses.values())
        log = partial(
            self.log, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(targets)
        )
        log("train/loss", loss, prog_bar=True)
        for name, value in losses.items():
            log(f"train/{name}", value)
        if weighted and total:
            log("train/kept_boxes", kept / total)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Update ``val/map`` with this batch's detections."""
        self._eval_step(batch, self.val_map)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Update ``test/map`` with this batch's detections."""
        self._eval_step(batch, self.test_map)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/map`` and ``val/map_50``."""
        self._log_map("val", self.val_map)

    def on_test_epoch_end(self) -> None:
        """Log ``test/map`` and ``test/map_50``."""
        self._log_map("test", self.test_map)

    def _eval_step(self, batch: Any, metric: Any) -> None:
        images, targets = self._unpack(batch)
        detections = self.model(self._images(images))
        metric.update(detections, [{k: t[k] for k in ("boxes", "labels")} for t in targets])

    def _log_map(self, stage: str, metric: Any) -> None:
        if not metric.update_called:  # no batch in this loop (e.g. `limit_val_batches=0`)
            return
        result = metric.compute()
        self.log(f"{stage}/map", result["map"], prog_bar=True)
        self.log(f"{stage}/map_50", result["map_50"])
        metric.reset()

    def _images(self, images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        listed = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        for i, x in enumerate(listed):
            if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[0] != self.in_channels:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(
                    f"{type(self).__name__} has `in_channels` = {self.in_channels} and expects "
                    f"images ({self.in_channels}, H, W), got {got} for image {i}."
                )
        return [x.expand(3, -1, -1) for x in listed] if self.in_channels == 1 else listed

    def _unpack(self, batch: Any) -> tuple[Tensor | Sequence[Tensor], list[Mapping[str, Tensor]]]:
        images, targets = super()._unpack(batch)
        check_detection_targets(targets, len(images))
        # torchvision trains a box labelled 0 as background, silently: one check, one read back.
        labels = [t["labels"] for t in targets]
        if sum(map(len, labels)) and bool(_outside(torch.cat(labels), self.num_classes).any()):
            i = next(i for i, y in enumerate(labels) if bool(_outside(y, self.num_classes).any()))
            k = int(labels[i][_outside(labels[i], self.num_classes)][0])
            raise ValueError(
                f'targets[{i}]["labels"] holds {k}, but {type(self).__name__} with `num_classes` = '
                f"{self.num_classes} takes box labels in [1, {self.num_classes - 1}] (0 is the "
                "background); shift 0-based class indices by 1, or build it with a larger "
                "`num_classes`."
            )
        return images, targets

    def _train_targets(
        self, targets: list[Mapping[str, Tensor]]
    ) -> tuple[list[dict[str, Tensor]], int, int, bool]:
        """Boxes and labels the weights keep; how many were kept, of how many; any weights?"""
        out, kept, total, weighted = [], 0, 0, False
        for target in targets:
            boxes, labels = target["boxes"], target["labels"]
            weights = target.get("weights")
            if weights is not None:
                keep = (weights > 0) & (weights >= self.min_box_weight)
                boxes, labels, weighted = boxes[keep], labels[keep], True
            kept, total = kept + len(boxes), total + len(target["boxes"])
            out.append({"boxes": boxes, "labels": labels})
        return out, kept, total, weighted


def _outside(labels: Tensor, num_classes: int) -> Tensor:
    """Per box: its label is not a class of the detector (``[1, num_classes)``)."""
    return (labels < 1) | (labels >= num_classes)


def _mean_average_precision() -> Any:
    """The ``MeanAveragePrecision`` of torchmetrics on boxes; a clear error without pycocotools."""
    from torchmetrics.detection import MeanAveragePrecision

    try:  # pycocotools computes it (the only backend before torchmetrics 1.3, the default since)
        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    except ModuleNotFoundError as err:
        raise ImportError(
            "FasterRCNNDetector reports mAP with torchmetrics' MeanAveragePrecision, which needs "
            'pycocotools; install it with `pip install "lightning-mixup[detection]"`.'
        ) from err
