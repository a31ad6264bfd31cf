"""Classification metrics, numpy only: accuracy, the confusion matrix, macro-F1.

Macro-F1 sits beside accuracy everywhere because user data is imbalanced: a model that answers the majority class
for everything scores the majority rate in accuracy, and about 1 / n_classes of a perfect macro-F1.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "confusion_matrix", "macro_f1"]


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    assert pred.shape == gold.shape, f"pred {pred.shape} and gold {gold.shape} differ"
    return float(np.mean(pred == gold)) if gold.size else float("nan")


def confusion_matrix(pred, gold, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts: rows are gold classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def macro_f1(pred, gold, n_classes: int) -> float:
    """Mean F1 over the classes that occur in gold or pred (sklearn's default label set)."""
    cm = confusion_matrix(pred, gold, n_classes)
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    if not present.any():
        return float("nan")
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())
