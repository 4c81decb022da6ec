"""ODINEvalCallback: the metrics it logs in fit and validate equal a direct computation; bad settings fail early."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from callbacks import ODINEvalCallback
from datamodules import DigitsDataModule, build_ood_dataset
from odin_pl import odin_score
from odin_pl.metrics import ood_metrics
from odin_pl.training.module import ImageClassifier


def _tiny_model_and_data() -> tuple[ImageClassifier, DigitsDataModule]:
    datamodule = DigitsDataModule(batch_size=64, eval_batch_size=128)
    model = ImageClassifier("hendrycks_mlp", image_spec=datamodule.image_spec.to_dict(), optimizer="adam",
                            lr=1e-3, lr_milestones=[])
    return model, datamodule


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_callback_logs_metrics_equal_to_direct_computation(stage: str, tmp_path) -> None:
    pl.seed_everything(0)
    model, datamodule = _tiny_model_and_data()
    callback = ODINEvalCallback(ood=["uniform"], temperature=100.0, epsilon=0.002, batch_size=100, num_images=150)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[callback], default_root_dir=tmp_path,
                         num_sanity_val_steps=0)
    trainer.fit(model, datamodule=datamodule) if stage == "fit" else trainer.validate(model, datamodule=datamodule)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ood/")}
    assert len(logged) == 2 * 6
    # Independent computation: score the whole test set (= validation set) and the OOD set directly.
    model.eval()
    spec = datamodule.image_spec
    x_in = torch.stack([datamodule.test_set[i][0] for i in range(len(datamodule.test_set))])
    ood = build_ood_dataset("uniform", spec, num_images=150)
    x_out = torch.stack([ood[i][0] for i in range(len(ood))])
    for method, (t, e) in {"msp": (1.0, 0.0), "odin": (100.0, 0.002)}.items():
        expected = ood_metrics(odin_score(model, x_in, t, e, spec.std), odin_score(model, x_out, t, e, spec.std))
        for name, value in expected.items():
            assert logged[f"ood/uniform/{method}/{name}"] == pytest.approx(value, abs=1e-4), (method, name)


def test_callback_rejects_bad_settings(tmp_path) -> None:
    with pytest.raises(ValueError, match="temperature"):
        ODINEvalCallback(temperature=0)
    with pytest.raises(ValueError, match="epsilon"):
        ODINEvalCallback(epsilon=-1e-3)
    with pytest.raises(ValueError, match="at least one OOD set"):
        ODINEvalCallback(ood=[])
    with pytest.raises(ValueError, match="unknown OOD set"):
        ODINEvalCallback(ood=["no_such_set"])
    with pytest.raises(ValueError, match="must be positive"):
        build_ood_dataset("uniform", DigitsDataModule().image_spec, num_images=0)
    for parent in ("a", "b"):
        (tmp_path / parent / "uniform").mkdir(parents=True)
    with pytest.raises(ValueError, match="two OOD sets are named 'uniform'"):
        ODINEvalCallback(ood=[str(tmp_path / "a" / "uniform"), str(tmp_path / "b" / "uniform")])



@pytest.mark.parametrize("method", ["mahalanobis", "react", "knn"])
def test_callback_does_not_offer_methods_fitted_on_training_images(method: str) -> None:
    with pytest.raises(ValueError, match=f"method '{method}' needs a fit on training data: evaluate it with "
                                         "evaluate.py, not in the callback"):
        ODINEvalCallback(methods=["msp", method])


def _validate_with(callbacks: list[ODINEvalCallback], tmp_path) -> dict[str, float]:
    model, datamodule = _tiny_model_and_data()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=tmp_path)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ood/")}


def test_named_callbacks_log_under_their_names_and_unnamed_twins_are_refused(tmp_path) -> None:
    def callback(epsilon: float, name: str | None = None) -> ODINEvalCallback:
        return ODINEvalCallback(ood=["uniform"], temperature=10.0, epsilon=epsilon, num_images=50, name=name)

    logged = _validate_with([callback(0.0, "clean"), callback(0.004, "perturbed")], tmp_path)
    assert len(logged) == 2 * 2 * 6 and {k.split("/")[1] for k in logged} == {"clean", "perturbed"}
    assert logged["ood/clean/uniform/odin/auroc"] != logged["ood/perturbed/uniform/odin/auroc"]
    assert logged["ood/clean/uniform/msp/auroc"] == logged["ood/perturbed/uniform/msp/auroc"]
    for twins in ([callback(0.0), callback(0.004)], [callback(0.0, "a"), callback(0.004, "a")]):
        with pytest.raises(ValueError, match="distinct name"):
            _validate_with(twins, tmp_path)
    with pytest.raises(ValueError, match="without '/'"):
        callback(0.0, "a/b")


def test_callback_monitors_other_methods_at_their_params(tmp_path) -> None:
    """methods= and params=: Energy at T = 10 and MaxLogit logged beside MSP, equal to a direct computation in
    float64 up to the float32 rounding of a logged value (1e-7); an unknown or unused method is refused when the
    callback is made."""
    pl.seed_everything(0)
    callback = ODINEvalCallback(ood=["uniform"], num_images=60, methods=["msp", "energy", "maxlogit"],
                                params={"energy": {"temperature": 10.0}})
    model, datamodule = _tiny_model_and_data()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                         default_root_dir=tmp_path, precision="64-true")
    trainer.validate(model, datamodule=datamodule, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ood/")}
    assert {k.split("/")[2] for k in logged} == {"msp", "energy", "maxlogit"}
    model.eval()
    x_in = torch.stack([datamodule.test_set[i][0] for i in range(len(datamodule.test_set))]).double()
    ood = build_ood_dataset("uniform", datamodule.image_spec, num_images=60)
    x_out = torch.stack([ood[i][0] for i in range(len(ood))]).double()
    with torch.no_grad():
        energy = [10.0 * torch.logsumexp(model(x) / 10.0, dim=1) for x in (x_in, x_out)]
    for name, value in ood_metrics(*energy).items():
        assert logged[f"ood/uniform/energy/{name}"] == pytest.approx(value, abs=1e-7)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        ODINEvalCallback(methods=["msp", "nope"])
    with pytest.raises(ValueError, match="params names energy, not among methods"):
        ODINEvalCallback(methods=["msp"], params={"energy": {"temperature": 1.0}})
