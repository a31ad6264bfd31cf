"""Batch: the one tokenized-batch type every layer passes around (numpy only, no onnxruntime).

It lives apart from ``runtime/session.py`` so that code that only builds or slices batches (tasks, batching,
methods, the loop) does not pull in onnxruntime just to name the type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from runtime.errors import ZoEdgeError

__all__ = ["Batch", "BatchError"]


class BatchError(ZoEdgeError, ValueError):
    """A batch whose arrays do not fit together (shapes differ, or a sequence too short to have a target).

    Still a ``ValueError`` so that callers that caught it as one keep working."""


@dataclass
class Batch:
    """A tokenized batch: left-padded ids, attention mask and target mask, all int64 [B, T].

    ``candidate_ids`` (optional, int64 [C]): token ids whose log-probabilities the graph returns at every loss
    position (``row_candidate_logp`` [B, C], the contract's candidate scoring), shared by all rows: a one-row
    classification batch scores every single-token label word from its prompt's last position. None: not scored.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    candidate_ids: np.ndarray | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, np.ndarray]) -> Batch:
        return cls(d["input_ids"], d["attention_mask"], d["loss_mask"], d.get("candidate_ids"))

    def __post_init__(self) -> None:
        arrays = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "loss_mask": self.loss_mask}
        shape = np.shape(self.input_ids)
        for name, a in arrays.items():
            if np.ndim(a) != 2 or np.shape(a) != shape:
                raise BatchError(
                    f"batch field {name} has shape {np.shape(a)}; all three must be [batch, seq] = {shape}"
                )
        if shape[1] < 2:
            raise BatchError(f"sequences of length {shape[1]} have no target; need at least 2 tokens")
        self.input_ids = np.ascontiguousarray(self.input_ids, dtype=np.int64)
        self.attention_mask = np.ascontiguousarray(self.attention_mask, dtype=np.int64)
        self.loss_mask = np.ascontiguousarray(self.loss_mask, dtype=np.int64)
        if self.candidate_ids is not None:
            if np.ndim(self.candidate_ids) != 1:
                raise BatchError(f"candidate_ids has shape {np.shape(self.candidate_ids)}; it must be one list [C]")
            self.candidate_ids = np.ascontiguousarray(self.candidate_ids, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def real_token_rows(self) -> np.ndarray:
        """Flat indices (b*T + t) of the unpadded tokens: what the activation probes should look at."""
        return np.flatnonzero(self.attention_mask.reshape(-1)).astype(np.int64)

    def rows(self, index: np.ndarray | slice) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.loss_mask[index], self.candidate_ids)

    def scored_positions(self) -> np.ndarray:
        """[B, T] bool: the positions whose hidden state the loss head reads (position t predicts token t + 1 where
        both are real and t + 1 is under the loss mask; export/graph.py ``loss_positions``)."""
        m, a = self.loss_mask != 0, self.attention_mask != 0
        out = np.zeros(m.shape, bool)
        out[:, :-1] = m[:, 1:] & a[:, 1:] & a[:, :-1]
        return out

    def columns(self, start: int) -> Batch:
        """The batch from column ``start`` on (the same rows)."""
        return Batch(
            self.input_ids[:, start:], self.attention_mask[:, start:], self.loss_mask[:, start:], self.candidate_ids
        )

    def trim_left(self) -> Batch:
        """Drop the leading columns that are padding in every row (left padding of a row subset). Exact: positions
        come from the attention mask's running sum and no real token attends a padded one. Keeps >= 2 columns."""
        real = np.flatnonzero(self.attention_mask.any(axis=0))
        start = min(int(real[0]) if real.size else 0, self.input_ids.shape[1] - 2)
        return self if start <= 0 else self.columns(start)
