"""Classification metrics, numpy only: accuracy, the confusion matrix, macro-F1, macro one-vs-rest AUC.

Macro-F1 sits beside accuracy everywhere because user data is imbalanced: a model that answers the majority class
for everything scores the majority rate in accuracy, and about 1 / n_classes of a perfect macro-F1. The AUC reads
the scores rather than the argmax: it is blind to a constant per-class bias (which a trained bias or head removes
in a few steps) and uses every example's margin, so on a small dev split it ranks prompts by what training can
realise, where accuracy ranks them by their class bias and by noise (RESULTS.md §12.1).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "PICK_RULES",
    "accuracy",
    "confusion_matrix",
    "macro_auc",
    "macro_f1",
    "pick_rule",
    "standard_error",
]


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n examples."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def _pick_best(value: float, best_before: float, n: int) -> bool:
    """``best``: strictly above every earlier evaluation (the first of tied maxima)."""
    return value > best_before


def _pick_one_se(value: float, best_before: float, n: int) -> bool:
    """``one-se``: within one standard error (binomial, at the highest value so far, this one included) of the
    highest: the latest such evaluation is kept. Breiman's one-standard-error rule, leaning to more training: on the
    head recipe's 128 dev examples (s.e. ≈ 0.037) the highest dev accuracy among 5 evaluations mostly picks noise
    (RESULTS.md §14.2 and §14.4, 8 runs: this rule's checkpoint scored >= the highest-dev one on held-out test in 7,
    0.1 below in one, +0.5 points on average); a run that falls more than one s.e. below its best keeps the best.
    On macro-F1 the binomial s.e. is a scale, not exact."""
    top = max(value, best_before)
    return value >= top - standard_error(top, n)


#: --pick: which evaluation becomes the run's ``best`` checkpoint, given (value, highest before it, dev n)
PICK_RULES = {"best": _pick_best, "one-se": _pick_one_se}


def pick_rule(name: str):
    """The rule ``name`` of ``PICK_RULES``: (value, highest earlier value, dev n) -> whether it is the new pick."""
    return PICK_RULES[name]


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


def macro_auc(scores, gold, n_classes: int) -> float:
    """Mean over classes of the one-vs-rest ROC AUC of class c's margin ``s_c - max_{c' != c} s_c'``: the chance
    that an example of class c has a higher margin than one of another class, ties counted half (Mann-Whitney U,
    from mid-ranks). Classes with no positive or no negative example are left out; nan if none remains. The margin,
    not the raw score, so a per-row constant (the one-row path's log-probabilities are known only up to one)
    changes nothing."""
    s = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    assert s.ndim == 2 and s.shape == (gold.size, n_classes), f"scores {s.shape} for {gold.size} x {n_classes}"
    if n_classes < 2:
        return float("nan")
    aucs = []
    for c in range(n_classes):
        pos = gold == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if not n_pos or not n_neg:
            continue
        margin = s[:, c] - np.delete(s, c, axis=1).max(axis=1)
        aucs.append((_mid_ranks(margin)[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def _mid_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # first index of each run of equal values, and the run's mean rank
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    mean_rank = (starts + ends + 1) / 2
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
