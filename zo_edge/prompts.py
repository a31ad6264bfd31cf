"""Forward-only prompt selection on the dev split: the honest "before" of a fine-tuning run.

A base model's zero-shot accuracy depends on how it is asked far more than a short ZO run moves it: SmolLM2-135M-
Instruct scores 0.570 on the demo's Rotten Tomatoes sentences with LM-BFF's "{text} It was" -> terrible/great and
0.663 with "Review: {text}\\nSentiment:" -> negative/positive. So the baseline a run is judged against is the best
of a few candidate prompts, chosen on the dev split (never the test split), and training starts from it. Scoring a
candidate costs one candidate-scoring pass over the dev examples: exactly what an edge user can afford.

    scores = select_prompt(oracle, tokenizer, task, data.dev)        # every task.prompt_candidates(), max_len auto
    print(format_prompt_table(scores))
    task = task.with_prompt(chosen(scores).prompt)

Choice: the highest dev macro one-vs-rest AUC of the class scores (``zo_edge.metrics.macro_auc``); ties go to the
zero-shot rule below, then to the earlier candidate (the task's own prompt comes first). Why AUC and not accuracy:
training starts from the chosen prompt, and the first thing any recipe learns is the class bias (the head recipe's
final-norm gain, a LoRA's output); what it cannot learn in ten minutes is a better ranking. Dev accuracy on 32-64
examples is dominated by that bias and by noise: on Rotten Tomatoes (RESULTS.md §11.4, §12.1) it ranks the chat
form first (dev 0.75-0.81, test 0.688), the AUC ranks "Review: {text}\nSentiment:" without BOS first (dev AUC
0.895-0.913), which is also the best on test, zero-shot (0.776) and trained (head ceiling 0.821 vs 0.777).

The zero-shot rule (``PromptScore.zero_shot_best``, the prompt a user who does not train would pick): the highest
dev macro-F1 when the dev classes are imbalanced (largest/smallest >= 1.5: accuracy there rewards answering the
majority class), else the highest dev accuracy; ties go to the other metric, then to the earlier candidate. The
"before" of a run is the better of the two on test (``zo_edge.train.zero_shot_baseline``), so a training gain is
never measured against a prompt chosen for how well it trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.oracle import Oracle
from zo_edge.batching import AUTO_BALANCE_RATIO, TokenizerLike, choose_max_len, class_ratio, prompt_lengths
from zo_edge.evaluate import evaluate
from zo_edge.metrics import standard_error
from zo_edge.tasks import Example, Prompt, Task, TaskError

__all__ = [
    "PromptScore",
    "choose",
    "chosen",
    "format_prompt_table",
    "select_prompt",
    "with_bos_variants",
    "zero_shot_best",
]


@dataclass
class PromptScore:
    """One candidate's dev result; exactly one score of a selection has ``chosen=True``."""

    prompt: Prompt
    accuracy: float
    macro_f1: float
    auc: float  # macro one-vs-rest AUC of the class scores (nan when the dev split holds one class)
    n: int
    truncated: int  # dev prompts cut from the left at max_len
    max_len: int  # the length it was scored at (chosen from the dev lengths when select_prompt's max_len is 0)
    chosen: bool = False  # the prompt to train from (highest dev AUC)
    zero_shot_best: bool = False  # the prompt to answer with untrained (highest dev accuracy, or macro-F1)

    @property
    def template(self) -> str:
        return self.prompt.template

    @property
    def verbalizer(self) -> dict[str, list[str]]:
        return self.prompt.verbalizer

    def summary(self) -> dict:
        return {
            "name": self.prompt.name,
            "template": self.template,
            "verbalizer": self.verbalizer,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "auc": self.auc,
            "n": self.n,
            "truncated": self.truncated,
            "max_len": self.max_len,
            "chosen": self.chosen,
            "zero_shot_best": self.zero_shot_best,
        }


def select_prompt(
    oracle: Oracle,
    tokenizer: TokenizerLike,
    task: Task,
    dev_examples: Sequence[Example],
    candidates: Sequence[Prompt] | None = None,
    max_len: int = 0,
    *,
    batch_examples: int = 16,
) -> list[PromptScore]:
    """Score every candidate prompt zero-shot on ``dev_examples`` (forwards only; the oracle's trained state, if
    any, is used as it is) and mark the one to train from (``chosen``) and the one to answer with untrained
    (``zero_shot_best``; see the module docstring). ``candidates`` defaults to
    ``task.prompt_candidates()``, each also tried without the BOS token (``with_bos_variants``); given candidates
    are scored as they are. ``max_len`` 0:
    each candidate at ``choose_max_len`` of its own dev lengths (a chat-form prompt needs ~40 tokens more than a
    bare one), reported in ``PromptScore.max_len``. Returns the scores in candidate order."""
    if not dev_examples:
        raise TaskError("prompt selection needs dev examples: the dev split is empty (raise k or dev_k)")
    if candidates is None:  # the task's own candidates, each with and without BOS; given ones are scored as given
        candidates = with_bos_variants(task.prompt_candidates(), tokenizer, task, dev_examples[0])
    candidates = list(candidates)
    if not candidates:
        raise TaskError(f"no candidate prompts for {task.name!r}: pass at least one")
    scores = []
    for prompt in candidates:
        variant = task.with_prompt(prompt)
        # shortest first: a batch pads to its longest row, so length-sorted batches waste little (metrics do not
        # depend on the order)
        lengths = prompt_lengths(tokenizer, variant, dev_examples)
        ordered = [dev_examples[i] for i in np.argsort(lengths, kind="stable")]
        length = max_len or choose_max_len(tokenizer, variant, dev_examples)
        r = evaluate(oracle, tokenizer, variant, ordered, max_len=length, batch_examples=batch_examples)
        scores.append(PromptScore(prompt, r.accuracy, r.macro_f1, r.auc, r.n, r.truncated, length))
    train, zero_shot = choose(scores, by_f1=class_ratio(dev_examples) >= AUTO_BALANCE_RATIO)
    scores[train].chosen = True
    scores[zero_shot].zero_shot_best = True
    return scores


def choose(scores: Sequence, by_f1: bool) -> tuple[int, int]:
    """(index to train from, index to answer with untrained) among dev results with ``accuracy``, ``macro_f1``
    and ``auc`` attributes (the module docstring's two rules; ``by_f1``: the dev classes are imbalanced). The one
    place the rules live: ``select_prompt`` marks its scores with them, benchmarks/prompts.py reads stored cells."""

    def zero_shot_key(i: int) -> tuple:
        s = scores[i]
        first, second = (s.macro_f1, s.accuracy) if by_f1 else (s.accuracy, s.macro_f1)
        return (first, second, -i)

    def train_key(i: int) -> tuple:
        auc = scores[i].auc
        return (-math.inf if math.isnan(auc) else auc, *zero_shot_key(i))

    order = range(len(scores))
    return max(order, key=train_key), max(order, key=zero_shot_key)


def with_bos_variants(
    candidates: Sequence[Prompt], tokenizer: TokenizerLike, task: Task, example: Example
) -> list[Prompt]:
    """Each candidate, followed by the same prompt without the BOS token (named ``<name>/no-bos``) where the
    tokenizer has one and the candidate neither leaves it out already nor opens with it (a chat form, whose first
    token is the BOS itself). Whether a bare prompt reads better after BOS depends on the model: SmolLM2's BOS is
    its chat-turn opener, and "Review: {text}\nSentiment:" loses 9 points behind it (RESULTS.md §11.4), while
    Llama-style base models expect it; so it is chosen on dev like the rest of the prompt."""
    bos = tokenizer.bos_token_id
    out: list[Prompt] = []
    for p in candidates:
        out.append(p)
        if bos is not None and p.bos and tokenizer.encode(task.with_prompt(p).render(example))[:1] != [bos]:
            out.append(dataclasses.replace(p, name=f"{p.name}/no-bos", bos=False))
    return out


def chosen(scores: Sequence[PromptScore]) -> PromptScore:
    """The score marked chosen by ``select_prompt``: the prompt to train from."""
    picked = [s for s in scores if s.chosen]
    assert len(picked) == 1, f"{len(picked)} chosen prompts in a selection"
    return picked[0]


def zero_shot_best(scores: Sequence[PromptScore]) -> PromptScore:
    """The score marked ``zero_shot_best`` by ``select_prompt``: the prompt to answer with untrained."""
    picked = [s for s in scores if s.zero_shot_best]
    assert len(picked) == 1, f"{len(picked)} zero-shot-best prompts in a selection"
    return picked[0]


def format_prompt_table(scores: Sequence[PromptScore], title: str = "dev") -> str:
    """A Markdown table of a selection: one row per candidate, accuracy ± standard error, macro-F1, AUC; the one
    to train from marked with *, the zero-shot best with z (both: *z)."""
    lines = [
        f"| | prompt | template -> label words | max_len | {title} accuracy | {title} macro-F1 | {title} AUC "
        "| n | cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        shown = s.prompt.describe().replace("|", "&#124;")  # a chat template's <|im_start|> would split the cell
        mark = ("*" if s.chosen else "") + ("z" if s.zero_shot_best else "")
        lines.append(
            f"| {mark} | {s.prompt.name} | {shown} | {s.max_len} | "
            f"{s.accuracy:.3f} ± {standard_error(s.accuracy, s.n):.3f} | {s.macro_f1:.3f} | {s.auc:.3f} | {s.n} | "
            f"{s.truncated} |"
        )
    return "\n".join(lines)
