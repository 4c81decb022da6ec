"""Independent references for the OOD metrics, built on scikit-learn (float64), shared by the metric tests."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def fpr_tpr_at_95(y_pos: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """(FPR, TPR, threshold) at the first (largest) ROC threshold whose TPR >= 0.95 (no interpolation)."""
    fpr, tpr, thr = roc_curve(y_pos, scores, drop_intermediate=False)
    idx = int(np.argmax(tpr >= 0.95))
    assert tpr[idx] >= 0.95
    return float(fpr[idx]), float(tpr[idx]), float(thr[idx])


def reference_metrics(s_in, s_out) -> dict[str, float]:
    s_in = np.asarray(s_in, dtype=np.float64)
    s_out = np.asarray(s_out, dtype=np.float64)
    scores = np.concatenate([s_in, s_out])
    y_in = np.concatenate([np.ones(len(s_in), int), np.zeros(len(s_out), int)])
    y_out = 1 - y_in
    fpr, tpr, _ = fpr_tpr_at_95(y_in, scores)
    fpr_ood_pos, _, _ = fpr_tpr_at_95(y_out, -scores)
    return {
        "fpr_at_95_tpr": fpr,
        "detection_error": 0.5 * (1 - tpr) + 0.5 * fpr,
        "auroc": float(roc_auc_score(y_in, scores)),
        "aupr_in": float(average_precision_score(y_in, scores)),
        "aupr_out": float(average_precision_score(y_out, -scores)),
        "fpr_at_95_tpr_ood_positive": fpr_ood_pos,
    }
