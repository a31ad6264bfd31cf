"""Tasks -> training batches: the runtime loop's BatchSource over a task's training examples.

The objectives themselves (``lm``, ``classification``) and how a batch of examples becomes a graph batch plus a
per-sample loss live in ``zo_edge/objectives.py``; the example order in ``zo_edge/batching.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.batch import Batch
from runtime.contract import Manifest
from runtime.oracle import Objective
from runtime.tokenizer import Tokenizer
from zo_edge.batching import BatchIterator, lm_batch, make_iterator
from zo_edge.objectives import OBJECTIVES, encode
from zo_edge.tasks import Example, Task, TaskError

__all__ = ["TaskBatches", "load_tokenizer"]


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    m = Manifest.load(model_dir)
    return Tokenizer(model_dir, m.pad_token_id, bos_token_id=m.bos_token_id, eos_token_id=m.eos_token_id)


@dataclass
class TaskBatches:
    """Endless, seeded, resumable batches of a task's training examples for ``runtime.loop.train``.

    ``balance``: "auto" (default) samples class-balanced when the training classes differ by 1.5x or more (a whole
    user file, ``--k 0``), else the shuffled pool; "on"/"off" force it. ``sampling`` says, in one line, which it is.
    ``candidate_scoring``: the export has the contract's candidate scoring (``Manifest.has``), so a classification
    batch with single-token label words is one row per example (``zo_edge.objectives.encode``).
    """

    task: Task
    examples: list[Example]
    tokenizer: Tokenizer
    batch_size: int
    max_len: int
    seed: int
    objective: str = "lm"
    balance: str = "auto"
    candidate_scoring: bool = False

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TaskError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if not self.examples:
            raise TaskError("the training set is empty: give more data or a larger k")
        self.iterator, self.sampling = make_iterator(self.examples, self.batch_size, self.seed, self.balance)
        self.stats: dict = {}

    def encode(self, examples: list[Example]) -> tuple[Batch, Objective]:
        return encode(
            self.tokenizer,
            self.task,
            examples,
            self.objective,
            self.max_len,
            stats=self.stats,
            candidate_scoring=self.candidate_scoring,
        )

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
