"""A small fully convolutional segmentation network, fast enough to train on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mixup import _checks as C
from lightning_mixup.classification.models import _conv_bn_relu

__all__ = ["SmallFCN"]


class SmallFCN(nn.Module):
    """A U-Net-like encoder-decoder (Ronneberger et al., MICCAI 2015) in miniature.

    Layout, with ``w = width``: two conv3×3-BN-ReLU at full resolution (``w`` channels); a 2×2
    max-pool and two more at ½ (``2w``); a max-pool and two more at ¼ (``4w``). The decoder
    upsamples bilinearly to the ½ features' size, concatenates them and applies one
    conv3×3-BN-ReLU (``2w``); upsamples to the input size, concatenates the full-resolution
    features, applies one more (``w``); a 1×1 convolution gives the logits. The receptive field
    of the deepest features is 32×32 pixels, enough to see a whole upscaled digit.

    Output size: the pools round up (``ceil_mode``) and each upsampling targets the exact size of
    the skip features, so **any** input height and width (of at least 1 pixel, odd sizes
    included) gives logits of exactly the input's size.

    Args:
        num_classes: Channels of the output (logits per pixel); 11 for the digits canvases.
        in_channels: Channels of the input images (1 for grayscale digits).
        width: Channels ``w`` of the full-resolution convolutions (see above).

    Raises:
        ValueError: If an argument is not a positive integer.

    Example:
        >>> model = SmallFCN(num_classes=11, in_channels=1, width=8)
        >>> model(torch.randn(2, 1, 30, 17)).shape
        torch.Size([2, 11, 30, 17])
    """

    def __init__(self, num_classes: int = 11, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        num_classes = C.positive_integer("num_classes", num_classes)
        in_channels = C.positive_integer("in_channels", in_channels)
        w = C.positive_integer("width", width)
        self.enc1 = nn.Sequential(*_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w))
        self.enc2 = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True), *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w)
        )
        self.enc3 = nn.Sequential(
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(2 * w, 4 * w),
            *_conv_bn_relu(4 * w, 4 * w),
        )
        self.dec2 = nn.Sequential(*_conv_bn_relu(6 * w, 2 * w))
        self.dec1 = nn.Sequential(*_conv_bn_relu(3 * w, w))
        self.classifier = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits."""
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, f2], dim=1))
        up = F.interpolate(d2, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dec1(torch.cat([up, f1], dim=1)))
