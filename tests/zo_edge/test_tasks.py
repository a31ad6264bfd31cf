"""Tests for zo_edge.tasks: built-in loaders, splits, batching layout, candidate scoring, metrics, resumable batches.

    python -m pytest tests/zo_edge/test_tasks.py -q

Expected arrays are written out by hand (word-level tokenizer: one id per word) rather than recomputed with the code
under test.
"""

from __future__ import annotations

import collections
import json
import math
import warnings

import numpy as np
import pytest

from zo_edge.batching import BatchIterator, TruncationWarning, candidate_batch, lm_batch
from zo_edge.metrics import accuracy, confusion_matrix, macro_auc, macro_f1
from zo_edge.objectives import classification_loss, predict
from zo_edge.tasks import Example, Task, TaskError, get_task, list_tasks
from zo_edge.tasks.base import dedup, template_fields

# name -> (unique examples, class counts after dedup, test size). Every registered task needs a row (or an entry in
# OTHER_TESTED naming the file that covers it): test_every_task_has_a_row fails otherwise.
TASK_CASES = {
    "rotten-tomatoes": (12752, {"fresh": 7368, "rotten": 5384}, 1000),
    "trec": (5381, {"ENTY": 1245, "HUM": 1215, "DESC": 1153, "NUM": 858, "LOC": 824, "ABBR": 86}, 500),
}
OTHER_TESTED = {"user-data": "tests/zo_edge/test_user_data.py"}


def toy_task(**kw) -> Task:
    defaults = dict(name="toy", template="{text} It was", verbalizer={"neg": [" bad"], "pos": [" good", " great fun"]})
    return Task(**{**defaults, **kw})


# -------------------------------------------------------------------------------------------------------------------
# Registry and loaders


def test_every_task_has_a_row():
    assert set(list_tasks()) == set(TASK_CASES) | set(OTHER_TESTED), "add a TASK_CASES row for each new task"


def test_unknown_task_lists_known_ones():
    with pytest.raises(TaskError) as e:
        get_task("sst-7")
    msg = str(e.value)
    assert "\n" not in msg and "'sst-7'" in msg
    assert all(name in msg for name in list_tasks())


@pytest.fixture(scope="module", params=sorted(TASK_CASES))
def builtin(request):
    task = get_task(request.param)
    return request.param, task, task.load_examples()


def test_loader_counts_and_dedup(builtin):
    name, task, examples = builtin
    n, counts, _ = TASK_CASES[name]
    assert len(examples) == n
    assert dict(collections.Counter(e.label for e in examples)) == counts
    assert len({e.key() for e in examples}) == n, "duplicates survived"
    assert set(counts) == set(task.classes)
    assert all(e.fields["text"] and e.fields["text"] == e.fields["text"].strip() for e in examples)


def test_splits_deterministic_disjoint_balanced(builtin):
    name, task, _ = builtin
    test_size = TASK_CASES[name][2]
    a, b, c = task.load(seed=0, k=16), task.load(seed=0, k=16), task.load(seed=1, k=16)
    keys = lambda xs: [e.key() for e in xs]  # noqa: E731
    assert keys(a.train) == keys(b.train) and keys(a.dev) == keys(b.dev) and keys(a.test) == keys(b.test)
    assert keys(a.test) == keys(c.test), "the test split must not depend on the run seed"
    assert keys(a.train) != keys(c.train)
    assert len(a.test) == test_size
    for d in (a, c):
        tr, dv, te = set(keys(d.train)), set(keys(d.dev)), set(keys(d.test))
        assert not (tr & dv) and not (tr & te) and not (dv & te)
        assert collections.Counter(e.label for e in d.train) == {cl: 16 for cl in task.classes}
        assert collections.Counter(e.label for e in d.dev) == {cl: 16 for cl in task.classes}


def test_kshot_512_takes_what_short_classes_have():
    task = get_task("trec")
    with pytest.warns(UserWarning, match="too few examples"):
        d = task.load(seed=3, k=512)
    train = collections.Counter(e.label for e in d.train)
    dev = collections.Counter(e.label for e in d.dev)
    for cl in task.classes:
        pool = d.info["short_classes"].get(cl)
        if pool is None:  # enough examples: exactly k and dev_k
            assert train[cl] == 512 and dev[cl] == 512
        else:  # split k : dev_k = 1 : 1, all of it used, both sides get the class
            assert train[cl] + dev[cl] == pool and dev[cl] == (pool + 1) // 2 and train[cl] > 0
    assert "ABBR" in d.info["short_classes"]


def test_a_short_class_keeps_dev_examples_at_the_head_recipe_s_k():
    """k = 1024, dev_k = 64 (the head recipe): TREC's ABBR (fewer than k questions) lands in train and in dev, at
    about k : dev_k; before, train took all of it and dev had none, so dev-based choices never saw the class."""
    task = get_task("trec")
    with pytest.warns(UserWarning, match="too few examples"):
        d = task.load(seed=0, k=1024, dev_k=64)
    n = d.info["short_classes"]["ABBR"]
    assert n < 1024
    train = collections.Counter(e.label for e in d.train)
    dev = collections.Counter(e.label for e in d.dev)
    assert train["ABBR"] + dev["ABBR"] == n and dev["ABBR"] >= 1
    assert abs(dev["ABBR"] / n - 64 / 1088) < 1 / n + 1e-9  # in proportion, to one example
    assert set(dev) == set(task.classes)  # every class is in dev
    keys = lambda xs: {e.key() for e in xs}  # noqa: E731
    assert not keys(d.train) & keys(d.dev)


def test_full_pool_split():
    task = get_task("trec")
    d = task.load(seed=0, k=None)
    assert len(d.dev) == 488 and len(d.train) + len(d.dev) + len(d.test) == 5381
    d = task.load(seed=0, k=None, dev_k=8)
    assert collections.Counter(e.label for e in d.dev) == {cl: 8 for cl in task.classes}
    assert len(d.train) == 5381 - 500 - 48 and not {e.key() for e in d.train} & {e.key() for e in d.dev}


def test_dedup_drops_conflicting_labels():
    exs = [Example({"text": "x"}, "a"), Example({"text": "x"}, "a"), Example({"text": "y"}, "a")]
    exs += [Example({"text": "z"}, "a"), Example({"text": "z"}, "b")]
    kept, dropped = dedup(exs)
    assert [e.fields["text"] for e in kept] == ["x", "y"] and dropped == 3


# -------------------------------------------------------------------------------------------------------------------
# Template and verbalizer


def test_render_and_template_errors():
    task = toy_task()
    assert task.render(Example({"text": "a b"}, "pos")) == "a b It was"
    assert task.classes == ["neg", "pos"]
    assert template_fields("Q: {q} {{lit}} {ctx} {q}") == ["q", "ctx"]
    for kw, fix in [
        (dict(template="{body} It was"), "text fields"),
        (dict(verbalizer={"neg": [" bad"]}), "two or more"),
        (dict(verbalizer={"neg": [" bad"], "pos": [" "]}), "empty label word"),
        (dict(template="{0} It was"), None),
        (dict(template="{text.upper} x"), "name a column"),
        (dict(template="{text"), "malformed"),
    ]:
        with pytest.raises(TaskError) as e:
            toy_task(**kw)
        assert "\n" not in str(e.value) and (fix is None or fix in str(e.value)), str(e.value)
    with pytest.raises(TaskError, match="not in the verbalizer"):
        toy_task().class_index("neutral")


# -------------------------------------------------------------------------------------------------------------------
# Batching: ids of the tiny tokenizer are [PAD]=0 [BOS]=1 a=3 b=4 It=6 was=7 bad=8 good=9 great=10 fun=11


def test_lm_batch_left_padding_and_loss_mask(tiny_tok):
    task = toy_task()
    exs = [Example({"text": "a b"}, "pos"), Example({"text": "a"}, "neg")]
    f = lm_batch(tiny_tok, exs, task, max_len=32)
    assert set(f) == {"input_ids", "attention_mask", "loss_mask"} and all(v.dtype == np.int64 for v in f.values())
    np.testing.assert_array_equal(f["input_ids"], [[1, 3, 4, 6, 7, 9], [0, 1, 3, 6, 7, 8]])
    np.testing.assert_array_equal(f["attention_mask"], [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(f["loss_mask"], [[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]])
    g = lm_batch(tiny_tok, exs, task, max_len=32, add_bos=False)
    np.testing.assert_array_equal(g["input_ids"], [[3, 4, 6, 7, 9], [0, 3, 6, 7, 8]])


def test_lm_batch_multi_token_gold(tiny_tok):
    task = toy_task(verbalizer={"neg": [" bad"], "pos": [" great fun", " good"]})  # first word is the gold one
    f = lm_batch(tiny_tok, [Example({"text": "a"}, "pos"), Example({"text": "c"}, "neg")], task, max_len=32)
    np.testing.assert_array_equal(f["input_ids"], [[1, 3, 6, 7, 10, 11], [0, 1, 5, 6, 7, 8]])
    np.testing.assert_array_equal(f["loss_mask"], [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]])


def test_truncation_cuts_prompt_left_and_counts(tiny_tok):
    task = toy_task()  # longest word " great fun" = 2 tokens, so max_len=5 leaves BOS + 2 prompt tokens
    exs = [Example({"text": "a b"}, "pos"), Example({"text": ""}, "neg"), Example({"text": "c"}, "neg")]
    stats: dict = {}
    with pytest.warns(TruncationWarning, match=r"truncated 2 of 3 prompts"):
        f = lm_batch(tiny_tok, exs, task, max_len=5, stats=stats)
    assert stats == {"truncated": 2, "examples": 3}
    np.testing.assert_array_equal(f["input_ids"], [[1, 6, 7, 9], [1, 6, 7, 8], [1, 6, 7, 8]])
    np.testing.assert_array_equal(f["loss_mask"][:, -1], [1, 1, 1])
    with pytest.warns(TruncationWarning, match=r"truncated 2 of 3 prompts"):
        cf, _, _ = candidate_batch(tiny_tok, exs, task, max_len=5, stats=stats)
    assert stats["truncated"] == 4 and cf["input_ids"].shape[1] <= 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm_batch(tiny_tok, exs, task, max_len=7)  # BOS + 4 prompt + 2: fits, no warning
    with pytest.raises(TaskError, match="raise it"):
        lm_batch(tiny_tok, exs, task, max_len=3)


def test_candidate_batch_rows(tiny_tok):
    task = toy_task()
    exs = [Example({"text": "a"}, "pos"), Example({"text": "b c"}, "neg")]
    f, row_ex, row_cls = candidate_batch(tiny_tok, exs, task, max_len=32)
    np.testing.assert_array_equal(row_ex, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(row_cls, [0, 1, 1, 0, 1, 1])
    assert row_ex.dtype == np.int64 and row_cls.dtype == np.int64
    np.testing.assert_array_equal(
        f["input_ids"],
        [
            [0, 0, 1, 3, 6, 7, 8],
            [0, 0, 1, 3, 6, 7, 9],
            [0, 1, 3, 6, 7, 10, 11],
            [0, 1, 4, 5, 6, 7, 8],
            [0, 1, 4, 5, 6, 7, 9],
            [1, 4, 5, 6, 7, 10, 11],
        ],
    )
    np.testing.assert_array_equal(f["attention_mask"], (f["input_ids"] != 0).astype(np.int64))
    np.testing.assert_array_equal(f["loss_mask"].sum(1), [1, 1, 2, 1, 1, 2])
    np.testing.assert_array_equal(f["loss_mask"][2], [0, 0, 0, 0, 0, 1, 1])


# -------------------------------------------------------------------------------------------------------------------
# Scoring against hand-computed values: 2 examples x 3 rows (neg " bad", pos " good", pos " great fun")

ROW_EX = np.array([0, 0, 0, 1, 1, 1])
ROW_CLS = np.array([0, 1, 1, 0, 1, 1])
ROW_NLL = np.array([2.0, 3.0, 1.5, 1.0, 3.0, 1.8])
ROW_CNT = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 2.0])


def test_predict_by_hand():
    # ex0: neg -2, pos max(-3, -1.5) = -1.5 -> pos.  ex1: neg -1, pos max(-3, -1.8) = -1.8 -> neg
    np.testing.assert_array_equal(predict(ROW_NLL, ROW_CNT, ROW_EX, ROW_CLS, 2, 2), [1, 0])
    # normalised: ex0 pos max(-3, -0.75) -> pos; ex1 neg -1 vs pos max(-3, -0.9) = -0.9 -> pos
    np.testing.assert_array_equal(predict(ROW_NLL, ROW_CNT, ROW_EX, ROW_CLS, 2, 2, normalize=True), [1, 1])


def test_classification_loss_by_hand():
    mean, per = classification_loss(ROW_NLL, ROW_CNT, ROW_EX, ROW_CLS, [1, 0], 2)
    # ex0 gold pos: -(-1.5) + log(e^-2 + e^-1.5) = log(1 + e^-0.5); ex1 gold neg: log(1 + e^-0.8)
    want = [math.log(1 + math.exp(-0.5)), math.log(1 + math.exp(-0.8))]
    np.testing.assert_allclose(per, want, rtol=1e-12)
    assert mean == pytest.approx(sum(want) / 2)
    _, per_n = classification_loss(ROW_NLL, ROW_CNT, ROW_EX, ROW_CLS, [0, 0], 2, normalize=True)
    # ex0 gold neg: scores (-2, -0.75) -> log(1 + e^1.25); ex1 gold neg: (-1, -0.9) -> log(1 + e^0.1)
    np.testing.assert_allclose(per_n, [math.log(1 + math.exp(1.25)), math.log(1 + math.exp(0.1))], rtol=1e-12)


def test_metrics_by_hand():
    pred, gold = [0, 1, 1, 2], [0, 1, 2, 2]
    assert accuracy(pred, gold) == 0.75
    np.testing.assert_array_equal(confusion_matrix(pred, gold, 3), [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert macro_f1(pred, gold, 3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert macro_f1([0, 0], [0, 0], 4) == 1.0, "classes absent from both gold and pred do not count"


def _pairwise_auc(scores: np.ndarray, gold: np.ndarray, n_classes: int) -> float:
    """The definition, pair by pair: P(margin of a class-c example > margin of another's), ties half."""
    aucs = []
    for c in range(n_classes):
        margin = scores[:, c] - np.delete(scores, c, axis=1).max(axis=1)
        pos, neg = margin[gold == c], margin[gold != c]
        if len(pos) and len(neg):
            aucs.append(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))
    return float(np.mean(aucs))


@pytest.mark.parametrize("n_classes", [2, 3, 6])
def test_macro_auc_equals_the_pairwise_definition(n_classes):
    rng = np.random.default_rng(n_classes)
    scores = rng.integers(-3, 3, size=(40, n_classes)).astype(float)  # integer scores: many ties
    gold = rng.integers(0, n_classes, size=40)
    assert macro_auc(scores, gold, n_classes) == pytest.approx(_pairwise_auc(scores, gold, n_classes), abs=1e-12)
    shifted = scores + rng.integers(-50, 50, size=(40, 1)) / 4  # a per-row constant (exact in binary: ties stay)
    assert macro_auc(shifted, gold, n_classes) == pytest.approx(macro_auc(scores, gold, n_classes), abs=1e-12)


def test_macro_auc_ignores_class_bias_where_accuracy_does_not():
    scores = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4.0]])  # always class 1, ranked perfectly
    gold = np.array([0, 0, 1, 1])
    assert accuracy(scores.argmax(1), gold) == 0.5 and macro_auc(scores, gold, 2) == 1.0
    assert macro_auc(scores[::-1], gold, 2) == 0.0
    assert macro_auc(np.zeros((4, 3)), np.array([0, 0, 1, 1]), 3) == 0.5, "class 2 has no example: left out"
    assert np.isnan(macro_auc(np.zeros((2, 2)), np.array([1, 1]), 2)), "one class only: nothing to rank"


# -------------------------------------------------------------------------------------------------------------------
# Resumable iterator


def test_iterator_resume_equals_uninterrupted():
    exs = [Example({"text": str(i)}, "a") for i in range(10)]
    ref = BatchIterator(exs, batch_size=3, seed=7)
    full = [[e.fields["text"] for e in next(ref)] for _ in range(9)]
    # every epoch (4 batches: 3+3+3+1) visits each example once, in a different order
    assert sorted(sum(full[:4], [])) == sorted(str(i) for i in range(10)) and len(full[3]) == 1
    assert sum(full[:4], []) != sum(full[4:8], [])
    it = BatchIterator(exs, batch_size=3, seed=7)
    head = [[e.fields["text"] for e in next(it)] for _ in range(6)]
    state = json.loads(json.dumps(it.state_dict()))
    resumed = BatchIterator(exs, batch_size=3, seed=7)
    resumed.load_state_dict(state)
    tail = [[e.fields["text"] for e in next(resumed)] for _ in range(3)]
    assert head + tail == full
    assert [e.fields["text"] for e in next(BatchIterator(exs, 3, seed=8))] != full[0]
    with pytest.raises(TaskError, match="same data and seed"):
        BatchIterator(exs, 3, seed=8).load_state_dict(state)


def test_iterator_drop_last():
    exs = [Example({"text": str(i)}, "a") for i in range(10)]
    it = BatchIterator(exs, batch_size=4, seed=0, drop_last=True)
    sizes = [len(next(it)) for _ in range(5)]
    assert sizes == [4] * 5 and it.state_dict()["epoch"] == 2 and it.steps_per_epoch() == 2
    with pytest.raises(TaskError):
        BatchIterator(exs, batch_size=11, seed=0, drop_last=True)
    with pytest.raises(TaskError, match="empty"):
        BatchIterator([], batch_size=1, seed=0)


# -------------------------------------------------------------------------------------------------------------------
# The real SmolLM2 tokenizer: label words are single tokens and concatenating prompt + word ids is how the joined
# text tokenizes, so the scored tokens are the ones the model would see in running text.


@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_label_words_with_real_tokenizer(smollm2_tok, name):
    task = get_task(name)
    for words in task.verbalizer.values():
        for w in words:
            assert len(smollm2_tok.encode(w)) == 1, f"{w!r} is not a single token"
    data = task.load(seed=0, k=16)
    for ex in data.train[:20]:
        prompt = task.render(ex)
        w = task.verbalizer[ex.label][0]
        assert smollm2_tok.encode(prompt) + smollm2_tok.encode(w) == smollm2_tok.encode(prompt + w)
    f = lm_batch(smollm2_tok, data.train[:4], task, max_len=256)
    first_real = f["input_ids"][np.arange(4), f["attention_mask"].argmax(1)]
    assert (first_real == smollm2_tok.bos_token_id).all() and (f["loss_mask"].sum(1) == 1).all()
