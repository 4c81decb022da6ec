"""pytorch-ood 0.4.0, each of its detectors run as its API intends one after another, against odin-pl's one pass
of ``score_batch`` serving the same methods at once: the same images, the same training set, scores checked by
DESIGN's relation to pytorch-ood (sign, factor, tolerance), and the time ratio (goal: >= 4x for odin-pl).

    python benchmarks/peer_methods.py [--images 256] [--train_images 512] [--batch_size 64] [--threads 1]
                                      [--repeats 3]

The network: conv 3x3 (3 -> 16) and ReLU, 2x2 average pooling, linear (1024 -> 64) and ReLU (the features h >= 0,
for ash and scale), dropout 0.1 (off in eval mode), the classifier (64 -> 10) fitted by least squares to the
training features (methods_overhead.fit_classifier), all in float64 (the default dtype too, as pytorch-ood's
mahalanobis and RMD need; DICE is built and fitted under float32, as its fit needs). odin-pl fits each fitted
method once on the training images (``fit_data``, one pass); pytorch-ood's detector is fitted on the same training
features (``fit_features``), or given odin-pl's fitted parameter where its API takes one (ReAct's threshold).
Fits are not timed. Timed: for each method, its pytorch-ood detector called on every test batch (``predict(x)``:
its own forward pass per method), one method after another; and odin-pl's one pass over the same batches. Times
are medians of --repeats rounds after one warm-up round. Not compared yet: odin (pytorch-ood only where no zero
gradient), mcd (its seeding per batch), gram, openmax, tempscale.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from pytorch_ood.detector import (ASH, DICE, GEN, KNN, RMD, SCALE, SHE, EnergyBased, Entropy, GradNorm, KLMatching,
                                  Mahalanobis, MaxLogit, MaxSoftmax, NNGuide, ReAct, ViM, fDBD)
from torch import Tensor, nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from methods_overhead import fit_classifier  # noqa: E402

from odin_pl.methods import create_method, nnguide, score_batch  # noqa: E402
from odin_pl.methods.features import Fits  # noqa: E402
from odin_pl.protocol.fits import fit_data  # noqa: E402

N_CLASSES = 10
NNGUIDE_K = 2  # its bank is 1% of the training images (5 of 512): below its default k of 10 and 100


class PeerNet(nn.Module):
    """timm's classifier API: ``forward_features`` conv + ReLU + pooling, ``forward_head(pre_logits=True)`` the
    features h = ReLU(linear), then dropout and the classifier ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pre = nn.Linear(16 * 8 * 8, 64)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(64, N_CLASSES)

    def forward_features(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        h = torch.relu(self.pre(x.flatten(1)))
        return h if pre_logits else self.fc(self.drop(h))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def features(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass(frozen=True)
class Peer:
    """A method's pytorch-ood detector (built and fitted from the model, the training features and labels, and
    odin-pl's fit), and DESIGN's relation: ours = factor * theirs, to ``tol`` (1 + |factor * theirs|), on the
    images where ``clipped`` (of the logits) is False: those where pytorch-ood clips p at 1e-7 are left out."""

    build: Callable[[PeerNet, Tensor, Tensor, dict], object]
    factor: float
    tol: float
    clipped: Callable[[Tensor], Tensor] = lambda f: torch.zeros(len(f), dtype=torch.bool)


def _clips(f: Tensor) -> Tensor:
    """Images with a softmax probability outside [1e-7, 1 - 1e-7] (pytorch-ood's Entropy and GEN clamp there)."""
    p = f.softmax(dim=1)
    return ((p < 1e-7) | (p > 1 - 1e-7)).any(dim=1)


def ridge_tolerance(h: Tensor, y: Tensor) -> float:
    """10 * 1e-6 / lambda_min of the unnormalized within-class scatter: the relative gap pytorch-ood's 1e-6 I ridge
    makes in mahalanobis and RMD (DESIGN: about 2e-6 / lambda_min)."""
    centered = h - torch.stack([h[y == c].mean(dim=0) for c in range(N_CLASSES)])[y]
    return 10e-6 / torch.linalg.eigvalsh(centered.T @ centered)[0].item()


def _w(model: PeerNet) -> tuple[Tensor, Tensor]:
    return model.fc.weight.detach(), model.fc.bias.detach()


def _dice(model: PeerNet, h: Tensor, y: Tensor, fit: dict) -> DICE:
    """DICE under float32 as the default dtype (its fit fails under float64), on float32 features."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        w, b = _w(model)
        detector = DICE(lambda x: model.features(x).float(), w=w.float(), b=b.float(), p=0.9)
        return detector.fit_features(h.float(), y)
    finally:
        torch.set_default_dtype(previous)


def _nnguide(model: PeerNet, h: Tensor, y: Tensor, fit: dict) -> NNGuide:
    """NNGuide (float32 inside) fitted on odin-pl's bank: the same seeded 1% of the training features."""
    bank = h[nnguide.bank_indices(len(h), int(fit["seed"]))]
    detector = NNGuide(lambda x: model.features(x).float(), copy.deepcopy(model.fc).float(), k=NNGUIDE_K)
    return detector.fit_features(bank.float(), torch.zeros(len(bank), dtype=torch.long))


def peers(h_train: Tensor, y_train: Tensor) -> dict[str, Peer]:
    """The methods pytorch-ood 0.4.0 also has, with their relation in DESIGN ("Other detectors", "More detectors")."""
    n_train, ridge = len(h_train), ridge_tolerance(h_train, y_train)

    def feat(model: PeerNet) -> Callable[[Tensor], Tensor]:
        return model.features

    def maps(model: PeerNet) -> Callable[[Tensor], Tensor]:
        return lambda x: model.features(x)[:, :, None, None]

    def head(model: PeerNet) -> Callable[[Tensor], Tensor]:
        return lambda z: model.fc(z.flatten(1))

    def ash(variant: str) -> Peer:
        return Peer(lambda m, h, y, fit: ASH(maps(m), head(m), variant=variant, percentile=0.9), -1.0, 1e-12)

    return {
        "msp": Peer(lambda m, h, y, fit: MaxSoftmax(m), -1.0, 1e-10),
        "maxlogit": Peer(lambda m, h, y, fit: MaxLogit(m), -1.0, 1e-10),
        "energy": Peer(lambda m, h, y, fit: EnergyBased(m), -1.0, 1e-10),
        "entropy": Peer(lambda m, h, y, fit: Entropy(m), -1.0, 1e-10, _clips),
        "react": Peer(lambda m, h, y, fit: ReAct(maps(m), head(m), threshold=float(fit["thresholds"][0])),
                      -1.0, 1e-10),
        "knn": Peer(lambda m, h, y, fit: KNN(feat(m), k=50).fit_features(h, y), -1.0, 1e-10),
        "mahalanobis": Peer(lambda m, h, y, fit: Mahalanobis(feat(m)).fit_features(h, y), -2.0 * n_train,
                            ridge),
        "vim": Peer(lambda m, h, y, fit: ViM(feat(m), d=32, w=_w(m)[0], b=_w(m)[1]).fit_features(h, y), -1.0,
                    1e-4),
        "rmds": Peer(lambda m, h, y, fit: RMD(feat(m)).fit_features(h, y), -float(n_train), ridge),
        "gen": Peer(lambda m, h, y, fit: GEN(m, gamma=0.1, M=N_CLASSES), -float(N_CLASSES), 1e-12, _clips),
        "ash_p": ash("ash-p"), "ash_b": ash("ash-b"), "ash_s": ash("ash-s"),
        "scale": Peer(lambda m, h, y, fit: SCALE(maps(m), head(m), percentile=0.85), -1.0, 1e-12),
        "she": Peer(lambda m, h, y, fit: SHE(feat(m), m.fc).fit_features(h, y), -1.0, 1e-12),
        "klm": Peer(lambda m, h, y, fit: KLMatching(m).fit_logits(m.fc(h)), -1.0, 1e-12),
        "dice": Peer(_dice, -1.0, 1e-5),
        "gradnorm": Peer(lambda m, h, y, fit: GradNorm(m, param_filter=lambda name: name == "fc.weight"),
                         -float(N_CLASSES), 1e-10),
        "nnguide": Peer(_nnguide, -1.0, 1e-6),
        "fdbd": Peer(lambda m, h, y, fit: fDBD(feat(m), copy.deepcopy(m.fc).float()).fit_features(h), -1.0, 1e-6),
    }


def make_model(train_x: Tensor, train_y: Tensor) -> PeerNet:
    torch.manual_seed(0)
    model = PeerNet().double().eval()
    fit_classifier(model, train_x, train_y, "cpu")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="test images scored")
    parser.add_argument("--train_images", type=int, default=512, help="training images the fitted methods fit on")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    generator = torch.Generator().manual_seed(0)
    train_x = torch.randn(args.train_images, 3, 16, 16, generator=generator)
    train_y = torch.arange(args.train_images) % N_CLASSES
    test = torch.randn(args.images, 3, 16, 16, generator=generator) * 1.5
    batches = test.split(args.batch_size)
    model = make_model(train_x, train_y)
    with torch.no_grad():
        h_train, test_logits = model.features(train_x), model(test)
    table = peers(h_train, train_y)
    plan = {name: [min(create_method(name).grid(), key=create_method(name).tie_key)] for name in table}
    plan["vim"] = [create_method("vim").check_setting((32.0,))]  # its rule D // 2, as pytorch-ood's d = 32
    plan["nnguide"] = [create_method("nnguide").check_setting((float(NNGUIDE_K),))]
    data = fit_data(model, TensorDataset(train_x, train_y), batch_size=args.batch_size)
    fits = Fits({name: create_method(name).fit(data, settings) for name, settings in plan.items()
                 if create_method(name).needs_fit})
    detectors = {name: peer.build(model, h_train, train_y, fits.of(name) if create_method(name).needs_fit else {})
                 for name, peer in table.items()}

    def theirs(name: str) -> Tensor:
        return torch.cat([detectors[name].predict(x).detach().double() for x in batches])

    def ours() -> dict[str, Tensor]:
        scores = [score_batch(model, x, plan, fits=fits) for x in batches]
        return {name: torch.cat([s[name][0] for s in scores], dim=0) for name in plan}

    times: dict[str, list[float]] = {name: [] for name in [*table, "odin-pl"]}
    results: dict[str, Tensor] = {}
    for _ in range(args.repeats + 1):
        for name in table:
            start = time.perf_counter()
            results[name] = theirs(name)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        our_scores = ours()
        times["odin-pl"].append(time.perf_counter() - start)
    median = {name: statistics.median(values[1:] if args.repeats else values) for name, values in times.items()}
    print(f"PeerNet (64 features, 10 classes, float64), {args.images} test images at batch {args.batch_size}, "
          f"{args.train_images} training images, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"median of {max(args.repeats, 1)}; fits not timed")
    print("\n| method | pytorch-ood s | relation | max error / (1 + |theirs|) | agreement | images checked |")
    print("|---|---|---|---|---|---|")
    for name, peer in table.items():
        kept = ~peer.clipped(test_logits)
        expected = peer.factor * results[name][kept]
        error = ((our_scores[name][kept] - expected).abs() / (1 + expected.abs())).max().item()
        verdict = "OK" if error <= peer.tol else "FAIL"
        print(f"| {name} | {median[name]:.3f} | ours = {peer.factor:g} theirs ({peer.tol:.1g}) | {error:.1e} | "
              f"{verdict} | {int(kept.sum())} |")
    total = sum(median[name] for name in table)
    print(f"\npytorch-ood total ({len(table)} methods): {total:.3f}s; odin-pl one pass: {median['odin-pl']:.3f}s; "
          f"ratio {total / median['odin-pl']:.2f}x (goal >= 4)")


if __name__ == "__main__":
    main()
