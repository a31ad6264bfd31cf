"""The training objectives and candidate scoring: how the graph's per-row outputs become a loss or a prediction.

``lm``: LM loss on the gold label tokens (one row per example; per-sample loss = token-mean NLL,
``runtime.oracle.lm_objective``). ``classification``: cross-entropy over the candidates' log-likelihoods
(per-sample loss = -log softmax(loglik_candidates)[gold]), the objective MeZO's prompt-based fine-tuning uses.
Evaluation scores the same candidates (``class_scores``, ``predict``).

Two row layouts give the same candidate log-likelihoods:

* **one row per example** (``one_row_batch``), when every label word is a single token and the export has the
  contract's candidate scoring (``Manifest.has(FEATURE_CANDIDATE_SCORING)``): the graph returns, at the prompt's
  last position, the log-probability of every candidate token (``row_candidate_logp``). 1/C of the rows (C = label
  words): RT is 1 row instead of 2, TREC 1 instead of 6;
* **one row per (example, label word)** (``candidate_batch``): multi-token label words, and older exports. A
  candidate's score is -row_nll (or -row_nll / row_count when normalised, which stops multi-token words from
  being penalised for their length).

A class with several words takes its best word.

    batch, objective = encode(tok, task, examples, "classification", max_len=64, candidate_scoring=True)
    losses = oracle.sample_losses(batch, objective)            # per-example CE over the classes
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.batch import Batch
from runtime.oracle import ForwardOutputs, Objective, lm_objective
from zo_edge.batching import TokenizerLike, candidate_batch, lm_batch, one_row_batch, single_token_words
from zo_edge.tasks.base import Example, Task, TaskError

__all__ = [
    "OBJECTIVES",
    "candidate_class_scores",
    "class_scores",
    "classification_loss",
    "cross_entropy",
    "encode",
    "predict",
    "use_one_row",
]

OBJECTIVES = ("lm", "classification")


def use_one_row(tokenizer: TokenizerLike, task: Task, candidate_scoring: bool) -> bool:
    """Whether ``task`` can be scored one row per example: the graph has candidate scoring and every label word is
    one token (each candidate's log-likelihood is then one log-probability at the prompt's last position)."""
    return candidate_scoring and single_token_words(tokenizer, task)


def class_scores(row_nll, row_count, row_example, row_class, n_examples: int, n_classes: int, normalize=False):
    """[n_examples, n_classes] best log-likelihood per class from per-candidate rows; -inf where a class has no row."""
    row_nll = np.asarray(row_nll, dtype=np.float64)
    score = -row_nll
    if normalize:
        score = score / np.maximum(np.asarray(row_count, dtype=np.float64), 1.0)
    out = np.full((n_examples, n_classes), -np.inf)
    np.maximum.at(out, (np.asarray(row_example), np.asarray(row_class)), score)
    return out


def candidate_class_scores(candidate_logp, word_class, n_classes: int) -> np.ndarray:
    """[n_examples, n_classes] best log-likelihood per class from one-row scoring: ``candidate_logp`` [B, n_words]
    (the graph's ``row_candidate_logp``), ``word_class`` [n_words] the class of each column. Single-token words
    have length 1, so length normalisation changes nothing here."""
    logp = np.asarray(candidate_logp, dtype=np.float64)
    out = np.full((logp.shape[0], n_classes), -np.inf)
    for j, c in enumerate(np.asarray(word_class)):
        np.maximum(out[:, c], logp[:, j], out=out[:, c])
    return out


def predict(row_nll, row_count, row_example, row_class, n_examples: int, n_classes: int, normalize: bool = False):
    """Predicted class index per example: the class whose best label word is most likely (ties: lowest index)."""
    s = class_scores(row_nll, row_count, row_example, row_class, n_examples, n_classes, normalize)
    return np.argmax(s, axis=1).astype(np.int64)


def cross_entropy(scores: np.ndarray, labels) -> np.ndarray:
    """Per-example -log softmax(scores)[label] over the classes (``scores`` [n, n_classes])."""
    labels = np.asarray(labels, dtype=np.int64)
    m = np.max(scores, axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(scores - m), axis=1))
    return lse - scores[np.arange(len(labels)), labels]


def classification_loss(
    row_nll, row_count, row_example, row_class, labels, n_classes: int, normalize: bool = False
) -> tuple[float, np.ndarray]:
    """(mean, per-example) cross-entropy of the gold class under softmax over the classes' log-likelihoods."""
    s = class_scores(row_nll, row_count, row_example, row_class, len(labels), n_classes, normalize)
    per = cross_entropy(s, labels)
    return float(per.mean()), per


def encode(
    tokenizer: TokenizerLike,
    task: Task,
    examples: Sequence[Example],
    objective: str,
    max_len: int,
    stats: dict | None = None,
    candidate_scoring: bool = False,
) -> tuple[Batch, Objective]:
    """(batch, per-sample objective) of ``examples`` under ``objective`` ("lm" or "classification").

    ``candidate_scoring``: the graph has the contract's candidate scoring; with single-token label words the
    classification batch is then one row per example (``one_row_batch``), else one row per label word. ``lm`` is
    one row per example either way (prompt + gold word) and needs no candidates.
    """
    if objective == "lm":
        return Batch.from_dict(lm_batch(tokenizer, examples, task, max_len, stats=stats)), lm_objective
    if objective != "classification":
        raise TaskError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    labels = np.array([task.class_index(e.label) for e in examples])
    n_classes = len(task.classes)
    if use_one_row(tokenizer, task, candidate_scoring):
        feeds, word_class = one_row_batch(tokenizer, examples, task, max_len, stats=stats)

        def one_row_classification(out: ForwardOutputs) -> np.ndarray:
            return cross_entropy(candidate_class_scores(out.candidate_scores, word_class, n_classes), labels)

        return Batch.from_dict(feeds), one_row_classification
    feeds, row_example, row_class = candidate_batch(tokenizer, examples, task, max_len, stats=stats)

    def classification(out: ForwardOutputs) -> np.ndarray:
        return classification_loss(out.row_nll, out.row_count, row_example, row_class, labels, n_classes)[1]

    return Batch.from_dict(feeds), classification
