"""Training the classifiers: the LightningModule (``module``), checkpoints (``checkpoint``; foreign weights:
``convert``), exact epoch metrics over processes (``epoch_metrics``), random states (``rng``) and console noise
(``console``)."""

from odin_pl.training.module import ImageClassifier

__all__ = ["ImageClassifier"]
