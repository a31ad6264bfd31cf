"""Examples -> token batches: the row layout both objectives and evaluation share, and the resumable order.

    feeds = lm_batch(tok, data.train[:8], task, 256)     # one row per example: prompt + gold label word
    feeds, row_ex, row_cls = candidate_batch(tok, data.test[:8], task, 256)   # one row per (example, label word)
    it = BatchIterator(data.train, batch_size=8, seed=0) # endless, seeded, resumable (state_dict/load_state_dict)

Only numpy and the stdlib: the device side imports this.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from zo_edge.tasks.base import Example, Task, TaskError, hash_order

__all__ = [
    "BatchIterator",
    "TokenizerLike",
    "TruncationWarning",
    "candidate_batch",
    "lm_batch",
]


class TruncationWarning(UserWarning):
    """Some prompts were cut from the left to fit max_len; the message carries the count."""


class TokenizerLike(Protocol):
    """What batching needs from runtime.tokenizer.Tokenizer (a protocol so tests can pass tiny tokenizers)."""

    pad_token_id: int
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...


# -------------------------------------------------------------------------------------------------------------------
# Batching. Row layout, left padded to the batch's longest row T:
#
#     [pad ... pad][bos][prompt tokens ...][label tokens]
#     mask:   0      1        1 ...           1 ...
#     loss:   0      0        0 ...           1 ...        loss_mask[t]=1: token t is a target predicted from t-1
#
# Prompts that do not fit lose tokens from their left (the template's end and the label stay), counted and warned.


def _encode_example(tokenizer: TokenizerLike, task: Task, ex: Example, words: Sequence[str], max_len: int, add_bos):
    """(prefix ids, [word ids...], truncated?) with the prompt budget set by the longest candidate word."""
    word_ids = [tokenizer.encode(w) for w in words]
    if any(not w for w in word_ids):
        raise TaskError(f"a label word of {task.name!r} among {list(words)} encodes to no tokens: choose another word")
    prompt = tokenizer.encode(task.render(ex))
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    budget = max_len - len(bos) - max(len(w) for w in word_ids)
    if budget < 1:
        raise TaskError(f"max_len={max_len} cannot hold a prompt token plus the label words {list(words)}: raise it")
    truncated = len(prompt) > budget
    if truncated:
        prompt = prompt[len(prompt) - budget :]
    prefix = bos + prompt
    if not prefix:
        raise TaskError(f"example renders to an empty prompt with no BOS token; template {task.template!r}")
    return prefix, word_ids, truncated


def _all_words(task: Task) -> list[str]:
    return [w for ws in task.verbalizer.values() for w in ws]


def _pack(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, np.ndarray]:
    T = max(len(p) + len(t) for p, t in rows)
    B = len(rows)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    loss_mask = np.zeros((B, T), dtype=np.int64)
    for b, (prefix, target) in enumerate(rows):
        n = len(prefix) + len(target)
        input_ids[b, T - n :] = prefix + target
        attention_mask[b, T - n :] = 1
        loss_mask[b, T - len(target) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def _report_truncation(n: int, total: int, max_len: int, stats: dict | None) -> None:
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + n
        stats["examples"] = stats.get("examples", 0) + total
    if n:
        warnings.warn(
            f"truncated {n} of {total} prompts from the left to fit max_len={max_len}", TruncationWarning, stacklevel=3
        )


def lm_batch(
    tokenizer: TokenizerLike,
    examples: Sequence[Example],
    task: Task,
    max_len: int,
    add_bos: bool = True,
    stats: dict | None = None,
) -> dict[str, np.ndarray]:
    """One row per example: prompt + the gold class's first label word, loss on the label tokens only.

    The prompt budget leaves room for the longest label word of any class, so a prompt is cut exactly as in
    ``candidate_batch`` and training sees the same context as evaluation. ``stats`` (optional) accumulates
    ``truncated``/``examples`` counts across calls; ``add_bos`` prepends the tokenizer's BOS id when it has one.
    """
    if not examples:
        raise TaskError("lm_batch got no examples: pass at least one")
    words = _all_words(task)
    rows, n_trunc = [], 0
    for ex in examples:
        gold = task.verbalizer[task.classes[task.class_index(ex.label)]][0]
        prefix, word_ids, truncated = _encode_example(tokenizer, task, ex, words, max_len, add_bos)
        rows.append((prefix, word_ids[words.index(gold)]))
        n_trunc += truncated
    _report_truncation(n_trunc, len(examples), max_len, stats)
    return _pack(rows, tokenizer.pad_token_id)


def candidate_batch(
    tokenizer: TokenizerLike,
    examples: Sequence[Example],
    task: Task,
    max_len: int,
    add_bos: bool = True,
    stats: dict | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One row per (example, label word), example-major, so a row's summed NLL is that candidate's -log-likelihood.

    Returns (feeds, row_example, row_class): int64 arrays saying which example and which class index each row
    scores. Examples need not carry a known label (the label is not read here).
    """
    if not examples:
        raise TaskError("candidate_batch got no examples: pass at least one")
    words = _all_words(task)
    word_class = [ci for ci, ws in enumerate(task.verbalizer.values()) for _ in ws]
    rows, row_example, row_class, n_trunc = [], [], [], 0
    for i, ex in enumerate(examples):
        prefix, word_ids, truncated = _encode_example(tokenizer, task, ex, words, max_len, add_bos)
        n_trunc += truncated
        for wi, ids in enumerate(word_ids):
            rows.append((prefix, ids))
            row_example.append(i)
            row_class.append(word_class[wi])
    _report_truncation(n_trunc, len(examples), max_len, stats)
    return (
        _pack(rows, tokenizer.pad_token_id),
        np.asarray(row_example, dtype=np.int64),
        np.asarray(row_class, dtype=np.int64),
    )


# -------------------------------------------------------------------------------------------------------------------
# Resumable batches: the order of epoch e is a pure function of (seed, e), so (epoch, offset) is the whole state.


class BatchIterator:
    """Endless batches of examples; ``state_dict()``/``load_state_dict()`` resume at the exact next batch.

    Epoch e visits every example once in ``hash_order`` with (seed, e). A batch never spans two epochs: with
    ``drop_last`` the short tail is skipped, otherwise it is yielded as a smaller batch.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int, drop_last: bool = False) -> None:
        if not examples:
            raise TaskError("BatchIterator got an empty dataset: nothing to train on")
        if batch_size < 1 or (drop_last and batch_size > len(examples)):
            raise TaskError(f"batch_size={batch_size} with {len(examples)} examples (drop_last={drop_last}): lower it")
        self.examples = list(examples)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self._keys = [str(i) for i in range(len(self.examples))]
        self.epoch, self.offset = 0, 0
        self._order_epoch, self._order = -1, []

    def order(self, epoch: int) -> list[int]:
        if epoch != self._order_epoch:
            self._order, self._order_epoch = hash_order(self._keys, self.seed, f"epoch:{epoch}"), epoch
        return self._order

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "n": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("n", len(self.examples)) != len(self.examples):
            raise TaskError(
                f"iterator state is for seed={state.get('seed')}, n={state.get('n')}; this one has seed={self.seed}, "
                f"n={len(self.examples)}: resume with the same data and seed"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def next_indices(self) -> list[int]:
        n = len(self.examples)
        if self.offset >= n or (self.drop_last and self.offset + self.batch_size > n):
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self.order(self.epoch)[self.offset : self.offset + self.batch_size]
        self.offset += len(idx)
        return idx

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        return [self.examples[i] for i in self.next_indices()]

    def steps_per_epoch(self) -> int:
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
