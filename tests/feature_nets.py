"""Small models with timm's classifier API, seeded images and fits, shared by the tests of the feature methods."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from torch.utils.data import TensorDataset

from odin_pl.methods.base import FitData
from odin_pl.methods.features import Classifier, Fits
from odin_pl.methods import Setting, create_method
from odin_pl.protocol.fits import fit_data

N_CLASSES = 6
FEATURES = 5


class TinyFeatureNet(nn.Module):
    """timm's classifier API on 3 x 4 x 4 images: conv 3x3 (3 -> 4) and tanh (``forward_features``); flatten,
    linear (64 -> 5) and tanh, the features h (``forward_head(pre_logits=True)``); the classifier linear (5 -> 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pre = nn.Linear(4 * 4 * 4, FEATURES)
        self.fc = nn.Linear(FEATURES, N_CLASSES)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.conv(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        h = torch.tanh(self.pre(x.flatten(1)))
        return h if pre_logits else self.fc(h)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class IdentityFeatures(nn.Module):
    """h = the flattened input and an identity classifier: the "images" [B, C, 1, 1] are the features and logits."""

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x

    def get_classifier(self) -> nn.Module:
        return nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def tiny_net(dtype: torch.dtype = torch.float64) -> TinyFeatureNet:
    torch.manual_seed(0)
    return TinyFeatureNet().to(dtype).eval()


def images(n: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> Tensor:
    """n seeded N(0, scale^2) images of shape [3, 4, 4]."""
    return scale * torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def labels(n: int) -> Tensor:
    """Class i mod 6 for image i: every class present."""
    return torch.arange(n) % N_CLASSES


def features_fit_data(h: Tensor, y: Tensor) -> FitData:
    """Fit data of features alone (float64; an identity classifier, so the logits are h), for the methods that fit
    on h and the labels only."""
    h = h.double()
    return FitData(h, y.long(), h, Classifier(nn.Identity()))


def make_fits(model: nn.Module, x_train: Tensor, y_train: Tensor, plan: Mapping[str, Sequence[Setting]]) -> Fits:
    """The fits of the plan's fitted methods on the training images (one pass of odin_pl.protocol.fits.fit_data)."""
    data = fit_data(model, TensorDataset(x_train, y_train), batch_size=len(x_train))
    return Fits({name: create_method(name).fit(data, settings) for name, settings in plan.items()
                 if create_method(name).needs_fit})
