"""Examples -> token batches: the row layout both objectives and evaluation share, and the resumable order.

    feeds = lm_batch(tok, data.train[:8], task, 256)     # one row per example: prompt + gold label word
    feeds, row_ex, row_cls = candidate_batch(tok, data.test[:8], task, 256)   # one row per (example, label word)
    feeds, word_class = one_row_batch(tok, data.test[:8], task, 256)   # one row per example + candidate_ids
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
    "BalancedBatchIterator",
    "BatchIterator",
    "TokenizerLike",
    "TruncationWarning",
    "candidate_batch",
    "choose_max_len",
    "class_ratio",
    "length_report",
    "lm_batch",
    "make_iterator",
    "one_row_batch",
    "prompt_lengths",
    "single_token_words",
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


def _bos_and_prompt(tokenizer: TokenizerLike, task: Task, ex: Example, add_bos: bool) -> tuple[list[int], list[int]]:
    """([BOS] or [], the rendered prompt's ids): the one place the BOS choice is applied. A template that opens with
    BOS itself (a chat form) loses its own copy when one is prepended, so a row holds one BOS, kept when truncating."""
    prompt = tokenizer.encode(task.render(ex))
    bos = [tokenizer.bos_token_id] if add_bos and task.bos and tokenizer.bos_token_id is not None else []
    if bos and prompt[:1] == bos:
        prompt = prompt[1:]
    return bos, prompt


def _encode_example(tokenizer: TokenizerLike, task: Task, ex: Example, words: Sequence[str], max_len: int, add_bos):
    """(prefix ids, [word ids...], truncated?) with the prompt budget set by the longest candidate word."""
    word_ids = [tokenizer.encode(w) for w in words]
    if any(not w for w in word_ids):
        raise TaskError(f"a label word of {task.name!r} among {list(words)} encodes to no tokens: choose another word")
    bos, prompt = _bos_and_prompt(tokenizer, task, ex, add_bos)
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


def single_token_words(tokenizer: TokenizerLike, task: Task) -> bool:
    """Whether every label word of ``task`` is one token: then ``one_row_batch`` scores an example in one row."""
    return all(len(tokenizer.encode(w)) == 1 for w in _all_words(task))


def one_row_batch(
    tokenizer: TokenizerLike,
    examples: Sequence[Example],
    task: Task,
    max_len: int,
    add_bos: bool = True,
    stats: dict | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One row per example for single-token label words: prompt + the gold word's token (the only loss target),
    and ``candidate_ids`` = every label word's token, so the graph's ``row_candidate_logp`` [B, n_words] holds each
    candidate's log-likelihood from the prompt's last position: what ``candidate_batch`` computes in one row per
    word, at 1/n_words the cost. ``row_nll`` stays the gold token's NLL (the ``lm`` objective's loss); an example
    without a known label gets the first word as its target. Prompts are cut exactly as in ``candidate_batch``.

    Returns (feeds with ``candidate_ids``, word_class: int64 [n_words], the class index of each candidate column).
    """
    if not examples:
        raise TaskError("one_row_batch got no examples: pass at least one")
    words = _all_words(task)
    word_class = [ci for ci, ws in enumerate(task.verbalizer.values()) for _ in ws]
    rows, n_trunc = [], 0
    candidate_ids: list[int] = []
    for ex in examples:
        prefix, word_ids, truncated = _encode_example(tokenizer, task, ex, words, max_len, add_bos)
        if any(len(w) != 1 for w in word_ids):
            raise TaskError(
                f"one_row_batch needs single-token label words; {task.name!r} has {list(words)}: use candidate_batch"
            )
        candidate_ids = [w[0] for w in word_ids]
        gold = task.verbalizer[ex.label][0] if ex.label in task.verbalizer else words[0]
        rows.append((prefix, word_ids[words.index(gold)]))
        n_trunc += truncated
    _report_truncation(n_trunc, len(examples), max_len, stats)
    feeds = _pack(rows, tokenizer.pad_token_id)
    feeds["candidate_ids"] = np.asarray(candidate_ids, dtype=np.int64)
    return feeds, np.asarray(word_class, dtype=np.int64)


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
        if state.get("kind", "shuffled") != "shuffled":
            raise TaskError(
                f"iterator state is for {state['kind']} sampling, this run samples the pool shuffled: resume with the "
                "run's own balance setting"
            )
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


class BalancedBatchIterator:
    """Endless class-balanced batches: classes are drawn uniformly, examples within a class in a seeded order.

    Why: a user's file is rarely balanced (a spam filter sees ~12% spam). Batches drawn from such a pool are mostly
    the majority class, and training learns to answer it for everything while the loss falls. Here every class gets
    the same share of the batch slots, whatever its size.

    Slot s (counting every example ever drawn) belongs to round r = s // C; each round visits the C classes once,
    in ``hash_order`` of the class names with (seed, r), so a batch of B slots holds B / C examples of each class
    when C divides B (and never differs by more than one otherwise, within a round). Class c hands out its members
    in ``hash_order`` with (seed, c, epoch_c) and starts its next epoch when it runs out: a small class repeats
    sooner than a large one. The whole state is integers (slot, and each class's epoch and offset), so
    ``state_dict()``/``load_state_dict()`` resume at the exact next batch.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int) -> None:
        if not examples:
            raise TaskError("BalancedBatchIterator got an empty dataset: nothing to train on")
        if batch_size < 1:
            raise TaskError(f"batch_size={batch_size}: use 1 or more")
        self.examples = list(examples)
        self.batch_size, self.seed = batch_size, seed
        self.classes = sorted({e.label for e in self.examples})
        self.members = {c: [i for i, e in enumerate(self.examples) if e.label == c] for c in self.classes}
        self.slot = 0
        self.epochs = {c: 0 for c in self.classes}
        self.offsets = {c: 0 for c in self.classes}
        self._orders: dict[str, tuple[int, list[int]]] = {}
        self._round: tuple[int, list[int]] = (-1, [])

    def _class_of_slot(self, slot: int) -> str:
        r = slot // len(self.classes)
        if self._round[0] != r:
            self._round = (r, hash_order(self.classes, self.seed, f"round:{r}"))
        return self.classes[self._round[1][slot % len(self.classes)]]

    def _member_order(self, c: str) -> list[int]:
        epoch = self.epochs[c]
        cached = self._orders.get(c)
        if cached is None or cached[0] != epoch:
            keys = [str(i) for i in self.members[c]]
            cached = (epoch, [self.members[c][j] for j in hash_order(keys, self.seed, f"class:{c}:epoch:{epoch}")])
            self._orders[c] = cached
        return cached[1]

    def next_indices(self) -> list[int]:
        idx = []
        for _ in range(self.batch_size):
            c = self._class_of_slot(self.slot)
            if self.offsets[c] >= len(self.members[c]):
                self.epochs[c], self.offsets[c] = self.epochs[c] + 1, 0
            idx.append(self._member_order(c)[self.offsets[c]])
            self.offsets[c] += 1
            self.slot += 1
        return idx

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        return [self.examples[i] for i in self.next_indices()]

    def steps_per_epoch(self) -> int:
        """Batches per pass over as many examples as the pool holds (a nominal epoch: classes repeat unevenly)."""
        return math.ceil(len(self.examples) / self.batch_size)

    def state_dict(self) -> dict:
        return {
            "kind": "balanced",
            "seed": self.seed,
            "n": len(self.examples),
            "slot": self.slot,
            "epochs": [self.epochs[c] for c in self.classes],
            "offsets": [self.offsets[c] for c in self.classes],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "balanced":
            raise TaskError(
                "iterator state is for shuffled sampling, this run samples class-balanced: resume with the run's "
                "own balance setting"
            )
        if state["seed"] != self.seed or state["n"] != len(self.examples) or len(state["epochs"]) != len(self.classes):
            raise TaskError(
                f"iterator state is for seed={state['seed']}, n={state['n']}; this one has seed={self.seed}, "
                f"n={len(self.examples)}: resume with the same data and seed"
            )
        self.slot = int(state["slot"])
        self.epochs = {c: int(e) for c, e in zip(self.classes, state["epochs"], strict=True)}
        self.offsets = {c: int(o) for c, o in zip(self.classes, state["offsets"], strict=True)}


BALANCE_CHOICES = ("auto", "on", "off")
AUTO_BALANCE_RATIO = 1.5  # "auto" balances when the largest class has this many times the smallest's examples


def class_ratio(examples: Sequence[Example]) -> float:
    """Largest class count over the smallest (1.0 for a single class or a balanced set)."""
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.label] = counts.get(e.label, 0) + 1
    return max(counts.values()) / min(counts.values()) if counts else 1.0


def make_iterator(
    examples: Sequence[Example], batch_size: int, seed: int, balance: str = "auto"
) -> tuple[BatchIterator | BalancedBatchIterator, str]:
    """(iterator, one line saying how it samples): class-balanced for ``balance="on"``, or for ``"auto"`` when the
    classes differ by ``AUTO_BALANCE_RATIO`` or more; otherwise the shuffled pool (every example once per epoch)."""
    if balance not in BALANCE_CHOICES:
        raise TaskError(f"balance={balance!r}: choose one of {', '.join(BALANCE_CHOICES)}")
    ratio = class_ratio(examples)
    balanced = balance == "on" or (balance == "auto" and ratio >= AUTO_BALANCE_RATIO)
    why = f"(largest/smallest class {ratio:.1f}:1 in the training set; balance={balance})"
    if balanced:
        return BalancedBatchIterator(examples, batch_size, seed), f"sampling: class-balanced {why}"
    return BatchIterator(examples, batch_size, seed), f"sampling: shuffled pool {why}"


# -------------------------------------------------------------------------------------------------------------------
# Sequence length from the data. A fixed --max-len either cuts many prompts (11 of 32 dev prompts of a user's file at
# 64) or pads every batch to a length few rows need; the token-length distribution says which.


def prompt_lengths(
    tokenizer: TokenizerLike, task: Task, examples: Sequence[Example], add_bos: bool = True
) -> np.ndarray:
    """Tokens each example needs uncut: BOS + prompt + the task's longest label word (what ``max_len`` bounds)."""
    longest_word = max(len(tokenizer.encode(w)) for w in _all_words(task))
    out = np.empty(len(examples), dtype=np.int64)
    for i, ex in enumerate(examples):
        bos, prompt = _bos_and_prompt(tokenizer, task, ex, add_bos)
        out[i] = len(bos) + len(prompt) + longest_word
    return out


def choose_max_len(
    tokenizer: TokenizerLike,
    task: Task,
    examples: Sequence[Example],
    quantile: float = 0.98,
    cap: int = 256,
    multiple: int = 8,
    sample: int = 2000,
) -> int:
    """The ``quantile`` of the examples' token lengths (``prompt_lengths``), rounded up to ``multiple``, at most
    ``cap``: about 2% of prompts are cut (from the left, the template's end and label kept) rather than padding
    every batch to the longest outlier. Looks at up to ``sample`` examples (a fixed hash-ordered subset)."""
    if not examples:
        raise TaskError("choose_max_len got no examples: pass the training (or dev) examples")
    if not 0 < quantile <= 1:
        raise TaskError(f"quantile={quantile}: use a value in (0, 1]")
    if len(examples) > sample:
        order = hash_order([e.key() for e in examples], 0, "max_len")[:sample]
        examples = [examples[i] for i in sorted(order)]
    lengths = prompt_lengths(tokenizer, task, examples)
    q = int(np.quantile(lengths, quantile, method="higher"))
    floor = 2 + max(len(tokenizer.encode(w)) for w in _all_words(task))  # BOS + one prompt token + the label
    return int(max(floor, min(cap, math.ceil(q / multiple) * multiple)))


def length_report(tokenizer: TokenizerLike, task: Task, examples: Sequence[Example], max_len: int) -> str:
    """One line: how many of ``examples`` are cut at ``max_len``, and the lengths that decide it."""
    lengths = prompt_lengths(tokenizer, task, examples)
    cut = int(np.sum(lengths > max_len))
    return (
        f"max_len {max_len}: {cut} of {len(lengths)} prompts ({cut / max(len(lengths), 1):.1%}) cut from the left; "
        f"lengths median {int(np.median(lengths))}, 98th percentile {int(np.quantile(lengths, 0.98))}, "
        f"longest {int(lengths.max())} tokens"
    )
