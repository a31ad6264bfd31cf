"""The training objectives and candidate scoring: how per-row NLLs from the graph become a loss or a prediction.

``lm``: LM loss on the gold label tokens (one row per example; per-sample loss = token-mean NLL,
``runtime.oracle.lm_objective``). ``classification``: cross-entropy over the candidates' log-likelihoods (one row per
example and label word; per-sample loss = -log softmax(-NLL_candidates)[gold]), the objective MeZO's prompt-based
fine-tuning uses. Evaluation scores the same candidate rows (``class_scores``, ``predict``).

A candidate's score is its log-likelihood -row_nll (or -row_nll / row_count when normalised, which stops
multi-token words from being penalised for their length); a class with several words takes its best word.

    batch, objective = encode(tok, task, examples, "classification", max_len=64)
    losses = oracle.losses(batch, objective)            # per-example CE over the classes
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.batch import Batch
from runtime.oracle import Objective, lm_objective
from zo_edge.batching import TokenizerLike, candidate_batch, lm_batch
from zo_edge.tasks.base import Example, Task, TaskError

__all__ = ["OBJECTIVES", "class_scores", "classification_loss", "encode", "predict"]

OBJECTIVES = ("lm", "classification")


def class_scores(row_nll, row_count, row_example, row_class, n_examples: int, n_classes: int, normalize=False):
    """[n_examples, n_classes] best log-likelihood per class; -inf where a class has no row."""
    row_nll = np.asarray(row_nll, dtype=np.float64)
    score = -row_nll
    if normalize:
        score = score / np.maximum(np.asarray(row_count, dtype=np.float64), 1.0)
    out = np.full((n_examples, n_classes), -np.inf)
    np.maximum.at(out, (np.asarray(row_example), np.asarray(row_class)), score)
    return out


def predict(row_nll, row_count, row_example, row_class, n_examples: int, n_classes: int, normalize: bool = False):
    """Predicted class index per example: the class whose best label word is most likely (ties: lowest index)."""
    s = class_scores(row_nll, row_count, row_example, row_class, n_examples, n_classes, normalize)
    return np.argmax(s, axis=1).astype(np.int64)


def classification_loss(
    row_nll, row_count, row_example, row_class, labels, n_classes: int, normalize: bool = False
) -> tuple[float, np.ndarray]:
    """(mean, per-example) cross-entropy of the gold class under softmax over the classes' log-likelihoods."""
    labels = np.asarray(labels, dtype=np.int64)
    s = class_scores(row_nll, row_count, row_example, row_class, len(labels), n_classes, normalize)
    m = np.max(s, axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(s - m), axis=1))
    per = lse - s[np.arange(len(labels)), labels]
    return float(per.mean()), per


def encode(
    tokenizer: TokenizerLike,
    task: Task,
    examples: Sequence[Example],
    objective: str,
    max_len: int,
    stats: dict | None = None,
) -> tuple[Batch, Objective]:
    """(batch, per-sample objective) of ``examples`` under ``objective`` ("lm" or "classification")."""
    if objective == "lm":
        return Batch.from_dict(lm_batch(tokenizer, examples, task, max_len, stats=stats)), lm_objective
    if objective != "classification":
        raise TaskError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    feeds, row_example, row_class = candidate_batch(tokenizer, examples, task, max_len, stats=stats)
    labels = np.array([task.class_index(e.label) for e in examples])
    n_classes = len(task.classes)

    def classification(row_nll: np.ndarray, row_count: np.ndarray) -> np.ndarray:
        return classification_loss(row_nll, row_count, row_example, row_class, labels, n_classes)[1]

    return Batch.from_dict(feeds), classification
