"""Backbones for the examples and benchmarks: CIFAR-sized ResNets and a small CNN.

Each ``__init__`` takes only typed, plain arguments, so LightningCLI can build it from YAML.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from lightning_mixup import _checks as C

__all__ = ["CifarResNet18", "PreActResNet18", "SmallCNN"]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class CifarResNet18(ResNet):
    """ResNet-18 (He et al., CVPR 2016) adapted to 32×32 inputs, from torchvision's own blocks.

    This is torchvision's ``resnet18`` with the ImageNet stem (7×7 stride-2 convolution and 3×3
    max-pool, which shrink a 32×32 image to 8×8 before the first block) replaced by one 3×3
    stride-1 convolution, as is usual for CIFAR. The four stages then see 32, 16, 8 and 4 pixels;
    global average pooling makes any input of at least 8×8 work.

    Args:
        num_classes: Width of the output layer (number of logits per sample).

    Raises:
        ValueError: If ``num_classes`` is not a positive integer.

    Example:
        >>> model = CifarResNet18(num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            BasicBlock, [2, 2, 2, 2], num_classes=C.positive_integer("num_classes", num_classes)
        )
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()


class _PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3×3, BN-ReLU-conv3×3, plus the identity path."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` (projected when the shape changes) plus the residual branch."""
        out = torch.relu(self.bn1(x))
        # A projection shortcut reads the pre-activated input, as in He et al.'s reference code.
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + identity


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for 32×32 inputs, the network of the mixup paper's CIFAR runs.

    Implements He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016), as used by
    Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018): a 3×3 stride-1 stem,
    four stages of two pre-activation blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2),
    a final BN-ReLU, global average pooling and a linear layer. The final BN-ReLU follows He et al.;
    facebookresearch/mixup-cifar10 omits it (1,024 fewer parameters), which changes little.

    Args:
        num_classes: Width of the output layer (number of logits per sample).

    Raises:
        ValueError: If ``num_classes`` is not a positive integer.

    Example:
        >>> model = PreActResNet18(num_classes=100)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        num_classes = C.positive_integer("num_classes", num_classes)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        widths = (64, 64, 128, 256, 512)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(_PreActBlock(c_in, c_out, stride), _PreActBlock(c_out, c_out, 1))
            for c_in, c_out, stride in zip(widths, widths[1:], (1, 2, 2, 2))
        )
        self.bn = nn.BatchNorm2d(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, 3, H, W)`` images to ``(B, num_classes)`` logits."""
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = self.pool(torch.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


class SmallCNN(nn.Module):
    """A three-convolution network for tiny images (8×8 digits, tests); fast on a CPU.

    Layout: conv3×3-BN-ReLU (``width``), conv3×3-BN-ReLU (``width``), 2×2 max-pool (rounding up,
    so odd and 1-pixel sizes work), conv3×3-BN-ReLU (``2·width``), global average pooling, linear.
    Adaptive pooling makes the output independent of the input's size: any height and width of at
    least 1 pixel works (a 1×16 strip as well as an 8×8 digit).

    Args:
        num_classes: Width of the output layer (number of logits per sample).
        in_channels: Channels of the input images (1 for grayscale digits).
        width: Channels of the first two convolutions; the third has twice as many.

    Raises:
        ValueError: If an argument is not a positive integer.

    Example:
        >>> model = SmallCNN(num_classes=10, in_channels=1)
        >>> model(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        num_classes = C.positive_integer("num_classes", num_classes)
        in_channels = C.positive_integer("in_channels", in_channels)
        width = C.positive_integer("width", width)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_channels, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.fc(self.features(x))
