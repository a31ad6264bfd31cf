"""Tasks -> training batches: the runtime loop's BatchSource, and the two training objectives.

``--objective lm``: LM loss on the gold label tokens (one row per example; per-sample loss = token-mean NLL).
``--objective classification``: cross-entropy over the candidates' log-likelihoods (one row per example and label
word; per-sample loss = -log softmax(-NLL_candidates)[gold]), the objective MeZO's prompt-based fine-tuning uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.batch import Batch
from runtime.contract import Manifest
from runtime.oracle import Objective, lm_objective
from runtime.tokenizer import Tokenizer
from zo_edge.tasks import BatchIterator, Example, Task, candidate_batch, classification_loss, lm_batch

__all__ = ["OBJECTIVES", "TaskBatches", "load_tokenizer"]

OBJECTIVES = ("lm", "classification")


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    m = Manifest.load(model_dir)
    return Tokenizer(model_dir, m.pad_token_id, bos_token_id=m.bos_token_id, eos_token_id=m.eos_token_id)


@dataclass
class TaskBatches:
    """Endless, seeded, resumable batches of a task's training examples for ``runtime.loop.train``."""

    task: Task
    examples: list[Example]
    tokenizer: Tokenizer
    batch_size: int
    max_len: int
    seed: int
    objective: str = "lm"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if not self.examples:
            raise ValueError("the training set is empty: give more data or a larger k")
        self.iterator = BatchIterator(self.examples, self.batch_size, self.seed)
        self.stats: dict = {}

    def encode(self, examples: list[Example]) -> tuple[Batch, Objective]:
        if self.objective == "lm":
            return Batch.from_dict(lm_batch(self.tokenizer, examples, self.task, self.max_len, stats=self.stats)), (
                lm_objective
            )
        feeds, row_example, row_class = candidate_batch(
            self.tokenizer, examples, self.task, self.max_len, stats=self.stats
        )
        labels = np.array([self.task.class_index(e.label) for e in examples])
        n_classes = len(self.task.classes)

        def objective(row_nll: np.ndarray, row_count: np.ndarray) -> np.ndarray:
            return classification_loss(row_nll, row_count, row_example, row_class, labels, n_classes)[1]

        return Batch.from_dict(feeds), objective

    def next(self) -> tuple[Batch, Objective]:
        return self.encode(next(self.iterator))

    def calibration(self, n: int) -> list[Batch]:
        """``n`` batches from a separately seeded pass over the training set (training order is unaffected)."""
        it = BatchIterator(self.examples, self.batch_size, self.seed + 7919)
        return [Batch.from_dict(lm_batch(self.tokenizer, next(it), self.task, self.max_len)) for _ in range(n)]

    def state_dict(self) -> dict:
        return self.iterator.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.iterator.load_state_dict(state)
