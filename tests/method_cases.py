"""Small models and training sets on which each registered method can fit and score (the contract test over
``list_methods()``): a net whose classes are predicted as labelled (class-wise fits need every class, and correct
ones), its variant with features >= 0 (ash, scale), with dropout (mcd), and held-out labels with errors
(tempscale, whose fit needs some)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from feature_nets import N_CLASSES, IdentityFeatures, TinyFeatureNet, images, labels, tiny_net
from torch import Tensor, nn

PER_CLASS = 24  # training images per class: openmax's tail sizes (10, 20) fit


class ProtoNet(TinyFeatureNet):
    """TinyFeatureNet (conv, tanh; linear to 5 features) with ``activation`` on the features, an optional dropout
    before the classifier (off in eval mode), and a classifier fitted by least squares so that images near
    prototype c are predicted c."""

    def __init__(self, activation: Callable[[Tensor], Tensor] = torch.tanh, dropout: float = 0.0) -> None:
        super().__init__()
        self.activation, self.drop = activation, nn.Dropout(dropout)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        h = self.activation(self.pre(x.flatten(1)))
        return h if pre_logits else self.fc(self.drop(h))


def prototypes() -> Tensor:
    return images(N_CLASSES, 11, scale=2.0)


def proto_images(n_per_class: int, seed: int, noise: float = 0.3) -> tuple[Tensor, Tensor]:
    """n_per_class images near each prototype (float64), with their class."""
    y = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    return prototypes()[y] + noise * images(len(y), seed), y


def proto_net(dtype: torch.dtype = torch.float64, nonnegative: bool = False, dropout: float = 0.0) -> ProtoNet:
    torch.manual_seed(0)
    net = ProtoNet(torch.relu if nonnegative else torch.tanh, dropout).double()
    x, y = proto_images(PER_CLASS, 12)
    with torch.no_grad():
        h = net.forward_head(net.forward_features(x), pre_logits=True)
        design = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], dim=1)
        targets = 8.0 * nn.functional.one_hot(y, N_CLASSES).double()
        solution = torch.linalg.lstsq(design, targets).solution
        net.fc.weight.copy_(solution[:-1].T)
        net.fc.bias.copy_(solution[-1])
    return net.to(dtype).eval()


class DropoutAverage(nn.Module):
    """Each input value copied 20 times, dropout (p = 0.1), the copies averaged: logits that follow the input with
    little noise, for mcd's direction check."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.drop(x.flatten(1).repeat_interleave(20, dim=1))
        return z.view(len(x), -1, 20).mean(dim=2)


class LinearIdentity(IdentityFeatures):
    """IdentityFeatures with its identity classifier as a linear layer (W = I, b = 0), for the methods that use W."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(N_CLASSES, N_CLASSES).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(N_CLASSES))
            self.fc.bias.zero_()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc


def identity_training_set(nonnegative: bool = False, wrong: float = 0.0, n: int = 120) -> tuple[Tensor, Tensor]:
    """n / 6 features per class near 8 e_c (noise 0.1; its absolute value when ``nonnegative``), as [n, 6, 1, 1]
    "images" of the identity model; a fraction ``wrong`` of the labels moved to the next class."""
    y = torch.arange(n) % N_CLASSES
    noise = 0.1 * torch.randn(n, N_CLASSES, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = 8.0 * nn.functional.one_hot(y, N_CLASSES).double() + (noise.abs() if nonnegative else noise)
    moved = torch.arange(n) < int(wrong * n)
    return x.view(n, N_CLASSES, 1, 1), torch.where(moved, (y + 1) % N_CLASSES, y)


@dataclass(frozen=True)
class Case:
    """A method's contract setting: ``net(dtype)``, its training images and labels, a test batch, and the identity
    direction check's model and training set."""

    net: Callable[[torch.dtype], nn.Module] = tiny_net
    train: Callable[[], tuple[Tensor, Tensor]] = field(default=lambda: (images(60, 4), labels(60)))
    batch: Callable[[torch.dtype], Tensor] = field(default=lambda dtype: images(9, 1, scale=3.0).to(dtype))
    identity: Callable[[], nn.Module] = lambda: IdentityFeatures().eval()
    identity_train: Callable[[], tuple[Tensor, Tensor]] = identity_training_set
    #: The direction check on ``net`` itself instead (images near the training prototypes against far ones), for
    #: methods whose geometry the identity model does not have (a principal subspace, sparsified weights, a bank).
    on_prototypes: bool = False


def _proto_batch(dtype: torch.dtype) -> Tensor:
    near, _ = proto_images(1, 13)
    return torch.cat([near, images(3, 1, scale=3.0)]).to(dtype)


PROTO = Case(net=proto_net, train=lambda: proto_images(PER_CLASS, 14), batch=_proto_batch,
             identity=lambda: LinearIdentity().eval())
CASES = {
    **{name: Case(net=lambda dtype: proto_net(dtype, nonnegative=True), train=PROTO.train, batch=_proto_batch,
                  identity=PROTO.identity, identity_train=lambda: identity_training_set(nonnegative=True))
       for name in ("ash_p", "ash_b", "ash_s", "scale")},
    **{name: Case(net=lambda dtype: proto_net(dtype, dropout=0.2), batch=_proto_batch,
                  identity=lambda: DropoutAverage().eval()) for name in ("mcd", "mcd_var")},
    # A bank of 12 images: k = 10 applies.
    "nnguide": Case(net=proto_net, train=lambda: proto_images(200, 14), batch=_proto_batch, on_prototypes=True),
    **{name: Case(net=proto_net, train=PROTO.train, batch=_proto_batch, on_prototypes=True)
       for name in ("vim", "residual", "dice")},
    "tempscale": Case(net=proto_net, train=lambda: proto_with_errors(), batch=_proto_batch,
                      identity_train=lambda: identity_training_set(wrong=0.2)),
}
ORIGINAL = ("msp", "odin", "energy", "maxlogit", "entropy", "mahalanobis", "react", "knn")


def proto_with_errors() -> tuple[Tensor, Tensor]:
    """The prototype training images with a fifth of the labels moved to the next class (tempscale's fit needs
    errors)."""
    x, y = proto_images(PER_CLASS, 14)
    moved = torch.arange(len(y)) % 5 == 0
    return x, torch.where(moved, (y + 1) % N_CLASSES, y)


def near_and_far() -> tuple[Tensor, Tensor]:
    """12 images near the training prototypes (in) and 12 far from them (out)."""
    return proto_images(2, 16)[0], images(12, 17, scale=3.0)


def case(name: str) -> Case:
    """The contract setting of a registered method: the original eight keep theirs."""
    return Case() if name in ORIGINAL else CASES.get(name, PROTO)
