"""Classification evaluation by candidate log-likelihood, and the cross-provider comparison report.

    zo-edge eval artifacts/smollm2-fp32 --task rotten-tomatoes                    # zero-shot
    zo-edge eval artifacts/smollm2-fp32 --run runs/rt --task rotten-tomatoes       # after training
    zo-edge eval artifacts/smollm2-fp32 --task trec --providers cpu,openvino      # same eval on each provider

Prediction = the class whose best label word has the highest log-likelihood (summed over its tokens, or
length-normalised with ``normalize``). The cross-provider report gives, per provider, accuracy, agreement of
predictions with the first provider, and the max |Δ log-likelihood| over every candidate: what a team checking
that a fine-tuned model behaves the same across hardware needs to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.batch import Batch
from runtime.oracle import Oracle
from runtime.tokenizer import Tokenizer
from zo_edge.batching import candidate_batch
from zo_edge.metrics import accuracy, confusion_matrix, macro_f1
from zo_edge.objectives import class_scores
from zo_edge.tasks import Example, Task

__all__ = ["EvalResult", "compare_providers", "evaluate"]


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    confusion: list[list[int]]
    n: int
    truncated: int  # prompts cut from the left to fit max_len
    predictions: np.ndarray = field(repr=False)
    loglik: np.ndarray = field(repr=False)  # [n, n_classes] best log-likelihood per class

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": self.n, "truncated": self.truncated}


def evaluate(
    oracle: Oracle,
    tokenizer: Tokenizer,
    task: Task,
    examples: list[Example],
    *,
    max_len: int = 64,
    batch_examples: int = 16,
    normalize: bool = False,
) -> EvalResult:
    if not examples:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    n_classes = len(task.classes)
    scores = np.zeros((len(examples), n_classes))
    stats: dict = {}
    for start in range(0, len(examples), batch_examples):
        chunk = examples[start : start + batch_examples]
        feeds, row_example, row_class = candidate_batch(tokenizer, chunk, task, max_len, stats=stats)
        out = oracle.run(Batch.from_dict(feeds))
        scores[start : start + len(chunk)] = class_scores(
            out["row_nll"], out["row_count"], row_example, row_class, len(chunk), n_classes, normalize
        )
    pred = np.argmax(scores, axis=1)
    gold = np.array([task.class_index(e.label) for e in examples])
    return EvalResult(
        accuracy=accuracy(pred, gold),
        macro_f1=macro_f1(pred, gold, n_classes),
        confusion=confusion_matrix(pred, gold, n_classes).tolist(),
        n=len(examples),
        truncated=stats.get("truncated", 0),
        predictions=pred,
        loglik=scores,
    )


def compare_providers(results: dict[str, EvalResult]) -> list[dict]:
    """One row per provider: accuracy, agreement with the first provider, max |Δ log-likelihood| against it."""
    names = list(results)
    ref = results[names[0]]
    rows = []
    for name in names:
        r = results[name]
        rows.append(
            {
                "provider": name,
                "accuracy": r.accuracy,
                "agreement": float(np.mean(r.predictions == ref.predictions)),
                "max_abs_dloglik": float(np.max(np.abs(r.loglik - ref.loglik))),
            }
        )
    return rows
