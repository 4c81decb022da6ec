"""The issue-25 detectors as registered methods: through score_batch (fits from one pass of
odin_pl.protocol.fits.fit_data) against the numpy references of test_detector_math*.py (reused, not rewritten); the
grid values a fit cannot score dropped with a note (an error when asked for alone); held-out fits; fits
byte-identical across 2 processes; mcd's 2-process scores equal to 1 process on identical batches; refusals through
evaluate.py on the quickstart as one-line errors.

Tolerances: the references' own (1e-12 relative; rmds 1e-9 of d_0; openmax 1e-6 absolute: its Weibull fit is
iterative).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import free_port
from feature_nets import images
from method_cases import PER_CLASS, proto_images, proto_net
from test_detector_math import (SUBSPACE, _reference_fdbd, _reference_gen, _reference_klm, _reference_rmds,
                                _reference_shaped, _reference_vim, data)  # noqa: F401 (data: the fixture)
from test_detector_math_passes import _reference_openmax, logits_data  # noqa: F401 (logits_data: the fixture)
from test_fits import fit_process
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import evaluate
from odin_pl.errors import UserError
from odin_pl.fingerprint import file_sha256
from odin_pl.methods import create_method, score_batch
from odin_pl.methods.features import Fits
from odin_pl.protocol.fits import fit_data, prepare_fits
from odin_pl.protocol.plan import MethodGrid


class LinearHead(nn.Module):
    """h = the flattened input ("images" [B, D, 1, 1]) and a linear classifier W, b: the maths' h and f exactly."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(weight))
            self.fc.bias.copy_(torch.from_numpy(bias))

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _as_images(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))[:, :, None, None]


def _scores(model: nn.Module, train: tuple[Tensor, Tensor], x: Tensor, plan: dict) -> dict[str, Tensor]:
    """score_batch of the plan with each fitted method's fit on ``train`` (one fit_data pass for all)."""
    fitting = fit_data(model, TensorDataset(*train), batch_size=64)
    fits = Fits({name: create_method(name).fit(fitting, settings) for name, settings in plan.items()
                 if create_method(name).needs_fit})
    return score_batch(model, x, plan, fits=fits, seed=0, start=0)


def test_feature_methods_through_score_batch_match_the_references(data: dict) -> None:  # noqa: F811
    """vim, residual, rmds, fdbd, klm, gen, ash_p/b/s on the references' data, from one batch and one fit pass."""
    model = LinearHead(data["W"], data["b"]).eval()
    train = (_as_images(data["h_train"]), torch.from_numpy(data["y"]))
    plan = {"vim": [(float(SUBSPACE),)], "residual": [(float(SUBSPACE),)], "rmds": [()], "klm": [()],
            "fdbd": [(0.0,), (1.0,)], "gen": [(0.1, 3.0), (2.0, 100.0)],
            **{name: [(65.0,), (90.0,)] for name in ("ash_p", "ash_b", "ash_s")}}
    got = _scores(model, train, _as_images(data["h"]), plan)
    vim_expected, residual_expected = _reference_vim(data, SUBSPACE)
    rmds_expected, d0 = _reference_rmds(data)  # a difference of two distances: 1e-9 of d_0's size, as its test
    np.testing.assert_allclose(got.pop("rmds")[0].numpy(), rmds_expected, rtol=0, atol=1e-9 * d0.max())
    expected = {"vim": [vim_expected], "residual": [residual_expected],
                "klm": [_reference_klm(data["f_train"], data["f"])],
                "fdbd": [_reference_fdbd(data, 0.0), _reference_fdbd(data, 1.0)],
                "gen": [_reference_gen(data["f"], 0.1, 3), _reference_gen(data["f"], 2.0, 100)]}
    for name in ("ash_p", "ash_b", "ash_s"):  # the energy of the shaped features' logits
        rows = []
        for p in (65.0, 90.0):
            z = np.stack([_reference_shaped(row, name, p) for row in data["h"]]) @ data["W"].T + data["b"]
            rows.append(np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1))
        expected[name] = rows
    for name, rows in expected.items():
        assert got[name].dtype == torch.float64
        np.testing.assert_allclose(got[name].numpy(), np.stack(rows), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("tailsize, alpha, eucos", [(20, 3, False), (10, 5, True)])
def test_openmax_through_score_batch_matches_the_reference(logits_data: dict, tailsize: int,  # noqa: F811
                                                           alpha: int, eucos: bool) -> None:
    """Logits as the features of an identity classifier: openmax fits on the logits and labels."""
    n = logits_data["train"].shape[1]
    model = LinearHead(np.eye(n), np.zeros(n)).eval()
    train = (_as_images(logits_data["train"]), torch.from_numpy(logits_data["labels"]))
    setting = (float(tailsize), float(alpha), float(eucos))
    got = _scores(model, train, _as_images(logits_data["test"]), {"openmax": [setting]})["openmax"]
    np.testing.assert_allclose(got[0].numpy(), _reference_openmax(logits_data, tailsize, alpha, eucos)[0], atol=1e-6)


def test_grid_values_that_cannot_apply_are_dropped_with_a_note_and_refused_alone() -> None:
    model, train = proto_net(), proto_images(PER_CLASS, 14)
    fitting = fit_data(model, TensorDataset(*train), batch_size=64)
    vim, ash, openmax = (create_method(name) for name in ("vim", "ash_p", "openmax"))
    fit = vim.fit(fitting, vim.grid())  # D = 5: the rule (d = 2) applies, 256 and 1000 do not
    kept, note = vim.settings_for_fit(vim.grid(), fit)
    assert kept == [(0.0,)] and "vim: setting(s) (256), (1000) dropped from the grid" in note
    with pytest.raises(UserError, match=r"^vim: the principal dimension d = 256 must lie in \[1, 5\)"):
        vim.fit(fitting, [(256.0,)])
    with pytest.raises(UserError, match="^ash_p: the penultimate features must be >= 0"):
        ash.fit(fitting, ash.grid())
    grid = openmax.grid({"tailsize": [20, 30]})  # 24 correct training images per class: a tail of 30 cannot fit
    kept, note = openmax.settings_for_fit(grid, openmax.fit(fitting, grid))
    assert {s[0] for s in kept} == {20.0} and "tail size 30 is larger than the 24" in note
    grid = openmax.grid({"tailsize": [20], "alpha": [3, 10]})
    kept, note = openmax.settings_for_fit(grid, openmax.fit(fitting, grid))
    assert {s[1] for s in kept} == {3.0} and "alpha = 10 is larger than the 6 classes" in note
    with pytest.raises(UserError, match="^openmax: tail size 30 is larger than the 24 correctly classified"):
        openmax.fit(fitting, [(30.0, 3.0, 0.0)])


def test_tempscale_fits_on_the_held_out_split_only(tmp_path) -> None:
    """prepare_fits gives tempscale the held-out split (labels with errors), never the training split; without one
    it refuses, and unlabelled held-out images are refused."""
    model = proto_net()
    x, y = proto_images(PER_CLASS, 14)
    wrong = torch.where(torch.arange(len(y)) % 5 == 0, (y + 1) % 6, y)
    grids = [MethodGrid.of("tempscale"), MethodGrid.of("rmds")]
    run = prepare_fits(model, grids, TensorDataset(x, y), heldout=TensorDataset(x, wrong), folder=tmp_path / "a",
                       weights_sha256="w", batch_size=32)
    expected = create_method("tempscale").fit(fit_data(model, TensorDataset(x, wrong)), [()])
    assert torch.equal(run.fits.of("tempscale")["temperature"], expected["temperature"])
    assert "heldout_images_sha256" in run.saved["tempscale"].context
    with pytest.raises(UserError, match="tempscale fit on the heldout split, which this run does not have"):
        prepare_fits(model, grids, TensorDataset(x, y), folder=tmp_path / "b", weights_sha256="w")
    with pytest.raises(UserError, match="^tempscale: the held-out images have no class labels"):
        prepare_fits(model, grids[:1], None, heldout=TensorDataset(x, -torch.ones_like(y)), folder=tmp_path / "c",
                     weights_sha256="w")


FITTED = ("vim", "residual", "rmds", "she", "klm", "dice", "fdbd", "nnguide", "gram", "openmax")


def _prepare(folder: Path):
    grids = [MethodGrid.of(name, {"k": [1.0]} if name == "nnguide" else None) for name in FITTED]  # a bank of 1
    return prepare_fits(proto_net(), grids, TensorDataset(*proto_images(PER_CLASS, 14)), folder=folder,
                        weights_sha256="w", batch_size=16, seed=3)


def _mcd_scores(start: int = 16) -> dict[str, Tensor]:
    return score_batch(proto_net(dropout=0.2), images(8, 5), {"mcd": [()], "mcd_var": [()]}, seed=4, start=start)


def _prepare_and_score_mcd(folder: Path):
    """In a process group: the fits, and mcd's scores of the same batch at the same first index on every process
    (saved beside the folder)."""
    torch.save(_mcd_scores(), folder.parent / f"mcd{dist.get_rank()}.pt")
    return _prepare(folder)


def test_fits_across_two_processes_and_mcd_on_identical_batches(tmp_path) -> None:
    """The fit files of 2 processes are byte-identical to 1 process's (the shared pass gathered in index order,
    gram's passes on process 0), every process gets the same fits; mcd on identical batches equals 1 process."""
    one = _prepare(tmp_path / "one")
    torch.multiprocessing.spawn(fit_process, args=(free_port(), str(tmp_path), _prepare_and_score_mcd), nprocs=2)
    for name in FITTED:
        assert file_sha256(tmp_path / "two" / f"{name}.pt") == file_sha256(tmp_path / "one" / f"{name}.pt"), name
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert all(torch.equal(got[name][key], one.fits.of(name)[key]) for name in got for key in got[name])
    alone = _mcd_scores()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"mcd{rank}.pt")
        assert all(torch.equal(got[name], alone[name]) for name in alone)
    assert not torch.equal(_mcd_scores(start=24)["mcd"], alone["mcd"])  # the passes depend on the batch's first index


@pytest.mark.parametrize(("methods", "extra", "message"), [
    ("msp,ash_p", ["--fit_images", "200"], "ash_p: the penultimate features must be >= 0 (post-ReLU), but a "
                                           "training feature is "),  # the quickstart MLP's GELU features
    ("msp,mcd", [], "has no dropout module (nn.Dropout*, p > 0)"),
    ("msp,vim", ["--fit_images", "200", "--tuning.grids", '{"vim": {"d": [100000]}}'],
     "vim: the principal dimension d = 100000 must lie in"),
])
def test_refusals_through_evaluate_are_one_line(quickstart_ckpt: str, tmp_path, methods: str, extra: list,
                                                message: str) -> None:
    command = ["protocol", "--ckpt", quickstart_ckpt, "--methods", methods, "--ood.sets",
               "gaussian", "--ood.num_images", "50", "--bootstrap.resamples", "0", "--output.logger", "false",
               "--output.dir", str(tmp_path / "out"), *extra]
    with pytest.raises(UserError) as caught:
        evaluate.main(command)
    assert message in str(caught.value) and "\n" not in str(caught.value)
