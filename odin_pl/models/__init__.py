"""Models registered in timm's registry: ``timm.create_model(name, num_classes=...)`` builds each of them."""

from odin_pl.models.densenet import DenseNet, densenet_bc_100
from odin_pl.models.mlp import MLP, hendrycks_mlp
from odin_pl.models.resnet9 import ResNet9, resnet9, resnet9_half
from odin_pl.models.small_cnn import SmallCNN, small_cnn
from odin_pl.models.wide_resnet import WideResNet, wrn_28_10, wrn_40_4

__all__ = ["DenseNet", "MLP", "ResNet9", "SmallCNN", "WideResNet", "densenet_bc_100", "hendrycks_mlp", "resnet9",
           "resnet9_half", "small_cnn", "wrn_28_10", "wrn_40_4"]
