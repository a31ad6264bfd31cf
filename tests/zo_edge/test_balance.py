"""Imbalanced user data: class-balanced sampling, its exact resume, and max_len chosen from the token lengths.

    python -m pytest tests/zo_edge/test_balance.py -q

The data: a CSV written here, short messages, 20 "spam" and 160 "normal" (1:8, the kind of spam filter a laptop
user would train). Expected counts come from the construction of the file, not from the code under test.
"""

from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest

from zo_edge.batching import (
    BalancedBatchIterator,
    BatchIterator,
    choose_max_len,
    length_report,
    make_iterator,
    prompt_lengths,
)
from zo_edge.data import TaskBatches
from zo_edge.tasks import Example, Task, TaskError, get_task

N_SPAM, N_NORMAL = 20, 160


@pytest.fixture
def spam_csv(tmp_path):
    path = tmp_path / "messages.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(N_SPAM):
            w.writerow([f"WIN a prize now {i}", "spam"])
        for i in range(N_NORMAL):
            w.writerow([f"see you at lunch {i}", "normal"])
    return path


@pytest.fixture
def spam_train(spam_csv):
    task = get_task("user-data", path=str(spam_csv), test_size=20)
    data = task.load(seed=0, k=None)
    counts = collections.Counter(e.label for e in data.train)
    assert counts["normal"] >= 6 * counts["spam"] > 0, f"the training split should stay ~1:8, got {counts}"
    return task, data.train


def _labels(batch: list[Example]) -> collections.Counter:
    return collections.Counter(e.label for e in batch)


def test_balanced_batches_are_half_and_half(spam_train):
    _, train = spam_train
    it = BalancedBatchIterator(train, batch_size=8, seed=0)
    for _ in range(60):  # 240 spam draws: the 10-odd training spams repeat many times over
        c = _labels(next(it))
        assert c["spam"] == 4 and c["normal"] == 4, c
    # the pool itself, drawn shuffled, is mostly "normal": what balancing corrects
    plain = BatchIterator(train, batch_size=8, seed=0)
    share = sum(_labels(next(plain))["spam"] for _ in range(20)) / 160
    assert share < 0.2


def test_balanced_with_odd_batch_size_differs_by_at_most_one(spam_train):
    _, train = spam_train
    it = BalancedBatchIterator(train, batch_size=5, seed=3)
    total = collections.Counter()
    for _ in range(40):
        c = _labels(next(it))
        assert abs(c["spam"] - c["normal"]) <= 1, c
        total += c
    assert total["spam"] == total["normal"] == 100


def test_each_class_is_visited_in_full_before_it_repeats(spam_train):
    _, train = spam_train
    n_spam = sum(e.label == "spam" for e in train)
    it = BalancedBatchIterator(train, batch_size=2, seed=1)
    spam_seen = [e.key() for _ in range(3 * n_spam) for e in next(it) if e.label == "spam"]
    assert len(spam_seen) == 3 * n_spam
    for epoch in range(3):
        chunk = spam_seen[epoch * n_spam : (epoch + 1) * n_spam]
        assert len(set(chunk)) == n_spam, "an epoch of the spam class repeats an example"
    assert spam_seen[:n_spam] != spam_seen[n_spam : 2 * n_spam], "each epoch of a class gets a fresh order"


def test_balanced_resume_is_exact_through_json(spam_train):
    _, train = spam_train
    a = BalancedBatchIterator(train, batch_size=8, seed=7)
    for _ in range(13):  # mid-epoch for both classes
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint's meta holds
    expected = [[e.key() for e in next(a)] for _ in range(30)]
    b = BalancedBatchIterator(train, batch_size=8, seed=7)
    b.load_state_dict(state)
    assert [[e.key() for e in next(b)] for _ in range(30)] == expected


def test_balanced_order_depends_on_the_seed_only(spam_train):
    _, train = spam_train

    def draw(seed):
        it = BalancedBatchIterator(train, batch_size=8, seed=seed)
        return [e.key() for _ in range(10) for e in next(it)]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


def test_resume_refuses_the_other_sampler_and_other_data(spam_train):
    _, train = spam_train
    balanced = BalancedBatchIterator(train, batch_size=8, seed=0)
    shuffled = BatchIterator(train, batch_size=8, seed=0)
    with pytest.raises(TaskError, match="balance"):
        balanced.load_state_dict(shuffled.state_dict())
    with pytest.raises(TaskError, match="balance"):
        shuffled.load_state_dict(balanced.state_dict())
    other = BalancedBatchIterator(train, batch_size=8, seed=1)
    with pytest.raises(TaskError, match="same data and seed"):
        other.load_state_dict(balanced.state_dict())


def test_auto_balances_imbalanced_pools_only(spam_train, spam_csv):
    _, train = spam_train
    it, line = make_iterator(train, 8, 0, "auto")
    assert isinstance(it, BalancedBatchIterator) and "class-balanced" in line
    it, line = make_iterator(train, 8, 0, "off")
    assert isinstance(it, BatchIterator) and "shuffled" in line
    kshot = get_task("user-data", path=str(spam_csv), test_size=20).load(seed=0, k=8).train  # 8 + 8
    it, _ = make_iterator(kshot, 8, 0, "auto")
    assert isinstance(it, BatchIterator), "a balanced k-shot set keeps the plain shuffled order"
    it, _ = make_iterator(kshot, 8, 0, "on")
    assert isinstance(it, BalancedBatchIterator)
    with pytest.raises(TaskError, match="balance="):
        make_iterator(train, 8, 0, "yes")


def test_task_batches_balance_by_default_and_say_so(spam_train, tiny_tok):
    task, train = spam_train
    tb = TaskBatches(task, train, tiny_tok, 8, 32, 0, "classification")
    assert tb.sampling.startswith("sampling: class-balanced")
    for _ in range(5):
        batch, objective = tb.next()
        assert batch.size == 16  # 8 examples x 2 candidate words
    state = tb.state_dict()
    nxt = tb.next()[0].input_ids
    tb2 = TaskBatches(task, train, tiny_tok, 8, 32, 0, "classification")
    tb2.load_state_dict(state)
    np.testing.assert_array_equal(tb2.next()[0].input_ids, nxt)
    assert TaskBatches(task, train, tiny_tok, 8, 32, 0, "lm", balance="off").sampling.startswith("sampling: shuffled")


# -------------------------------------------------------------------------------------------------------------------
# max_len from the data. Tiny word-level tokenizer: "a" x L renders to L tokens, BOS adds 1, " good"/" bad" 1.


def _length_task() -> Task:
    return Task(name="len", template="{text}", verbalizer={"neg": [" bad"], "pos": [" good"]})


def _examples(lengths) -> list[Example]:
    return [Example({"text": " ".join(["a"] * n)}, "pos") for n in lengths]


def test_prompt_lengths_count_bos_prompt_and_longest_word(tiny_tok):
    assert prompt_lengths(tiny_tok, _length_task(), _examples([1, 5, 9])).tolist() == [3, 7, 11]


def test_choose_max_len_takes_the_quantile_rounded_up(tiny_tok):
    task = _length_task()
    ex = _examples(range(1, 101))  # needs 3 .. 102 tokens
    # 98th percentile ("higher") of 3..102 is the 99th smallest value = 101, rounded up to a multiple of 8 -> 104
    assert choose_max_len(tiny_tok, task, ex) == 104
    assert choose_max_len(tiny_tok, task, ex, quantile=0.5, multiple=1) == 53  # the 51st smallest
    assert choose_max_len(tiny_tok, task, ex, cap=64) == 64
    assert choose_max_len(tiny_tok, task, _examples([1])) == 8
    with pytest.raises(TaskError, match="no examples"):
        choose_max_len(tiny_tok, task, [])


def test_length_report_counts_the_cut_prompts(tiny_tok):
    task = _length_task()
    line = length_report(tiny_tok, task, _examples(range(1, 101)), 64)
    assert line.startswith("max_len 64: 38 of 100 prompts (38.0%) cut"), line  # lengths 65..102
    assert "longest 102" in line
