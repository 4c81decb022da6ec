"""CIFAR Wide ResNet (Zagoruyko & Komodakis, 2016) with pre-activation basic blocks: WRN-28-10 and WRN-40-4.

Module and parameter names follow the ODIN release's ``wideresnet.py`` (``conv1``, ``block1.layer.0.bn1``, ...,
``bn1``, ``fc``), except that its ``convShortcut`` is called ``shortcut`` here.
"""

from __future__ import annotations

from timm.models import register_model
from torch import Tensor, nn
from torch.nn import functional as F

from odin_pl.models._factory import TimmClassifier, build, init_conv_bn
from odin_pl.errors import UserError


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3 plus a shortcut.

    When the width or resolution changes, the shortcut is a 1x1 conv that, like the residual branch, sees the
    pre-activated input; otherwise it is the identity on the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
                         if in_planes != out_planes or stride != 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.drop(self.conv1(act)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class BlockGroup(nn.Module):
    """``num_blocks`` basic blocks; the first one changes the width to ``out_planes`` and applies ``stride``."""

    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                stride if i == 0 else 1, drop_rate) for i in range(num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(TimmClassifier):
    """CIFAR WRN-``depth``-``widen_factor`` (timm model API).

    A 3x3 conv to 16 channels, three groups of ``(depth - 4) // 6`` blocks of widths 16k, 32k, 64k (strides 1, 2, 2),
    then BN-ReLU, global average pooling and a linear classifier; ``drop_rate`` is the dropout between the two convs
    of each block. For 10 classes WRN-28-10 has 36,479,194 parameters and WRN-40-4 has 8,949,210.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, depth: int = 28, widen_factor: int = 10,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise UserError(f"Wide ResNet depth must be 6n+4, got {depth}")
        num_blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = BlockGroup(num_blocks, widths[0], widths[1], 1, drop_rate)
        self.block2 = BlockGroup(num_blocks, widths[1], widths[2], 2, drop_rate)
        self.block3 = BlockGroup(num_blocks, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.num_features = widths[3]
        self.init_classifier(num_classes)
        init_conv_bn(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))



@register_model
def wrn_28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 for 32x32 images, as in the ODIN paper (dropout 0 unless ``drop_rate`` is given)."""
    return build(WideResNet, pretrained, depth=28, widen_factor=10, **kwargs)


@register_model
def wrn_40_4(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-4 for 32x32 images, as in the ODIN paper's appendix (dropout 0 unless ``drop_rate`` is given)."""
    return build(WideResNet, pretrained, depth=40, widen_factor=4, **kwargs)


__all__ = ["WideResNet", "wrn_28_10", "wrn_40_4"]
