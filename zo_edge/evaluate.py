"""Classification evaluation by candidate log-likelihood, and the cross-provider comparison report.

    zo-edge eval artifacts/smollm2-fp32 --task rotten-tomatoes                    # zero-shot
    zo-edge eval artifacts/smollm2-fp32 --run runs/rt --task rotten-tomatoes       # after training
    zo-edge eval artifacts/smollm2-fp32 --task trec --providers cpu,openvino      # same eval on each provider

Prediction = the class whose best label word has the highest log-likelihood (summed over its tokens, or
length-normalised with ``normalize``). With single-token label words and an export that has candidate scoring, an
example is one row and every word is scored from its prompt's last position (``one_row_batch``); otherwise one row
per (example, word) (``candidate_batch``). Both give the same scores (``tests/zo_edge/test_one_row.py``). The
cross-provider report (accuracy, agreement, |Δ log-likelihood|, flips, precision and per-layer drift per provider)
is ``zo_edge/cross_provider.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.oracle import ForwardOutputs, Oracle
from runtime.tokenizer import Tokenizer
from zo_edge.batching import candidate_batch, one_row_batch
from zo_edge.metrics import accuracy, confusion_matrix, macro_auc, macro_f1
from zo_edge.objectives import candidate_class_scores, class_scores, use_one_row
from zo_edge.tasks import Example, Task, TaskError

__all__ = ["EvalResult", "evaluate"]


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    auc: float  # macro one-vs-rest AUC of the class scores: what a trained class bias could make of them
    confusion: list[list[int]]
    n: int
    truncated: int  # prompts cut from the left to fit max_len
    predictions: np.ndarray = field(repr=False)
    loglik: np.ndarray = field(repr=False)  # [n, n_classes] best log-likelihood per class

    def summary(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "auc": self.auc,
            "n": self.n,
            "truncated": self.truncated,
        }

    @classmethod
    def from_scores(cls, scores: np.ndarray, task: Task, examples: list[Example], truncated: int) -> EvalResult:
        """Metrics of ``scores`` [n, classes] (best log-likelihood per class) against the examples' labels: the one
        place a score matrix becomes a result, for the training graph and for merged graphs alike."""
        n_classes = len(task.classes)
        pred = np.argmax(scores, axis=1)
        gold = np.array([task.class_index(e.label) for e in examples])
        return cls(
            accuracy=accuracy(pred, gold),
            macro_f1=macro_f1(pred, gold, n_classes),
            auc=macro_auc(scores, gold, n_classes),
            confusion=confusion_matrix(pred, gold, n_classes).tolist(),
            n=len(examples),
            truncated=truncated,
            predictions=pred,
            loglik=scores,
        )


def evaluate(
    oracle: Oracle,
    tokenizer: Tokenizer,
    task: Task,
    examples: list[Example],
    *,
    max_len: int = 64,
    batch_examples: int = 16,
    normalize: bool = False,
    one_row: bool | None = None,
) -> EvalResult:
    """Scores ``examples`` ``batch_examples`` at a time. ``one_row``: None picks the one-row path whenever it
    applies (``use_one_row``); False forces the per-candidate rows (the benchmark's and tests' comparison)."""
    if not examples:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    n_classes = len(task.classes)
    scores = np.zeros((len(examples), n_classes))
    stats: dict = {}
    can = use_one_row(tokenizer, task, oracle.manifest.has(contract.FEATURE_CANDIDATE_SCORING))
    if one_row and not can:
        raise TaskError("one_row=True needs single-token label words and an export with candidate scoring")
    one_row = can if one_row is None else one_row
    for start in range(0, len(examples), batch_examples):
        chunk = examples[start : start + batch_examples]
        if one_row:
            feeds, word_class = one_row_batch(tokenizer, chunk, task, max_len, stats=stats)
            out = oracle.run(Batch.from_dict(feeds))
            logp = ForwardOutputs.from_run(out).candidate_scores  # up to a per-row constant (candidates' head)
            chunk_scores = candidate_class_scores(logp, word_class, n_classes)
        else:
            feeds, row_example, row_class = candidate_batch(tokenizer, chunk, task, max_len, stats=stats)
            out = oracle.run(Batch.from_dict(feeds))
            chunk_scores = class_scores(
                out[contract.OUTPUT_ROW_NLL],
                out[contract.OUTPUT_ROW_COUNT],
                row_example,
                row_class,
                len(chunk),
                n_classes,
                normalize,
            )
        scores[start : start + len(chunk)] = chunk_scores
    return EvalResult.from_scores(scores, task, examples, stats.get("truncated", 0))
