"""One-row classification (the contract's candidate scoring) against today's one row per (example, label word).

    python -m pytest tests/zo_edge/test_one_row.py -q

With single-token label words, every candidate's log-likelihood is one log-probability at the prompt's last
position, so ``one_row_batch`` + ``row_candidate_logp`` must give the per-candidate rows' class scores (the
reference: ``candidate_batch``'s -row_nll, each candidate its own forward row) to float precision, the same
predictions, and the same training losses. Multi-token verbalizers and exports without the feature keep the
per-candidate rows. A tiny random Llama with the real SmolLM2 tokenizer (``tiny_lm_dirs``) stands in for the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime import contract
from runtime.batch import Batch
from runtime.oracle import ForwardOutputs, Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.batching import candidate_batch, lm_batch, one_row_batch, single_token_words
from zo_edge.data import TaskBatches, load_tokenizer
from zo_edge.evaluate import evaluate
from zo_edge.methods import get_method
from zo_edge.objectives import candidate_class_scores, class_scores, encode
from zo_edge.tasks import Example, TaskError, get_task

TASKS = ("rotten-tomatoes", "trec")
MAX_LEN = 64


def _examples(task_name: str, n: int) -> list[Example]:
    data = get_task(task_name).load(seed=0, k=8)
    return (data.dev + data.train)[:n]


def _strip_candidate_scoring(src: Path, dst: Path) -> Path:
    """An export as it was before candidate scoring: the graph without ``candidate_ids``/``row_candidate_logp``
    (dead nodes pruned) and a manifest without ``features``."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / contract.GRAPH_FILE))
    g = model.graph
    outputs = [o for o in g.output if o.name != contract.OUTPUT_ROW_CANDIDATE_LOGP]
    del g.output[:]
    g.output.extend(outputs)
    needed = {o.name for o in g.output}
    kept = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # names a subgraph reads from the outer scope
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(i for n in attr.g.node for i in n.input)
    assert contract.INPUT_CANDIDATE_IDS not in needed, "the loss outputs must not depend on candidate_ids"
    del g.node[:]
    g.node.extend(reversed(kept))
    inputs = [i for i in g.input if i.name != contract.INPUT_CANDIDATE_IDS]
    del g.input[:]
    g.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst / contract.GRAPH_FILE))
    manifest = json.loads((dst / contract.MANIFEST_FILE).read_text())
    del manifest["features"]
    (dst / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def old_export(tiny_lm_dirs, tmp_path_factory) -> Path:
    return _strip_candidate_scoring(tiny_lm_dirs["fp32"], tmp_path_factory.mktemp("old") / "model")


def _per_candidate_scores(oracle: Oracle, tok, task, examples) -> np.ndarray:
    """The reference: one forward row per (example, label word), class score = best -row_nll."""
    feeds, row_ex, row_cls = candidate_batch(tok, examples, task, MAX_LEN)
    out = oracle.run(Batch.from_dict(feeds))
    return class_scores(out["row_nll"], out["row_count"], row_ex, row_cls, len(examples), len(task.classes))


# --- scores and predictions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["fp32", "int4"])
@pytest.mark.parametrize("task_name", TASKS)
def test_one_row_scores_equal_per_candidate_rows(tiny_lm_dirs, task_name, base):
    model = tiny_lm_dirs[base]
    oracle, tok = Oracle(GraphSession(model)), load_tokenizer(model)
    task = get_task(task_name)
    assert single_token_words(tok, task), f"{task_name}'s label words should be single SmolLM2 tokens"
    examples = _examples(task_name, 12)
    feeds, word_class = one_row_batch(tok, examples, task, MAX_LEN)
    batch = Batch.from_dict(feeds)
    assert batch.size == len(examples) and int(batch.loss_mask.sum()) == len(examples), "one target per example"
    out = oracle.run(batch)
    got = candidate_class_scores(out[contract.OUTPUT_ROW_CANDIDATE_LOGP], word_class, len(task.classes))
    want = _per_candidate_scores(oracle, tok, task, examples)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # row_nll of the one-row batch is the gold word's NLL: the LM objective's batch (lm_batch) is this very batch
    lm = Batch.from_dict(lm_batch(tok, examples, task, MAX_LEN))
    np.testing.assert_array_equal(lm.input_ids, batch.input_ids)
    np.testing.assert_array_equal(lm.loss_mask, batch.loss_mask)
    gold = np.array([task.class_index(e.label) for e in examples])
    np.testing.assert_allclose(-out[contract.OUTPUT_ROW_NLL], want[np.arange(len(examples)), gold], atol=1e-5)


def test_micro_batches_keep_the_candidates(tiny_lm_dirs):
    """``--micro-batch``: every row chunk carries the batch's candidate_ids; the [B, C] parts concatenate."""
    model = tiny_lm_dirs["fp32"]
    tok, task = load_tokenizer(model), get_task("trec")
    batch = Batch.from_dict(one_row_batch(tok, _examples("trec", 7), task, MAX_LEN)[0])
    session = GraphSession(model)
    whole = Oracle(session).run(batch)[contract.OUTPUT_ROW_CANDIDATE_LOGP]
    micro = Oracle(session, micro_batch=3).run(batch)[contract.OUTPUT_ROW_CANDIDATE_LOGP]
    assert micro.shape == whole.shape == (7, 6)
    np.testing.assert_allclose(micro, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("task_name", TASKS)
def test_evaluate_one_row_equals_many_rows(tiny_lm_dirs, task_name):
    model = tiny_lm_dirs["fp32"]
    oracle, tok = Oracle(GraphSession(model)), load_tokenizer(model)
    task = get_task(task_name)
    examples = _examples(task_name, 20)
    before = oracle.forwards
    one = evaluate(oracle, tok, task, examples, max_len=MAX_LEN, batch_examples=8)
    assert oracle.forwards - before == 3, "default: one pass per 8 examples, one row each"
    many = evaluate(oracle, tok, task, examples, max_len=MAX_LEN, batch_examples=8, one_row=False)
    np.testing.assert_array_equal(one.predictions, many.predictions)
    np.testing.assert_allclose(one.loglik, many.loglik, rtol=1e-5, atol=1e-5)
    assert (one.accuracy, one.macro_f1, one.confusion) == (many.accuracy, many.macro_f1, many.confusion)


def test_several_words_per_class(tiny_lm_dirs):
    """A class with two single-token words takes its best word, in both layouts."""
    model = tiny_lm_dirs["fp32"]
    oracle, tok = Oracle(GraphSession(model)), load_tokenizer(model)
    task = get_task("rotten-tomatoes").with_prompt(verbalizer="rotten=terrible|bad,fresh=great|good")
    assert single_token_words(tok, task)
    examples = _examples("rotten-tomatoes", 10)
    one = evaluate(oracle, tok, task, examples, max_len=MAX_LEN)
    many = evaluate(oracle, tok, task, examples, max_len=MAX_LEN, one_row=False)
    np.testing.assert_allclose(one.loglik, many.loglik, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(one.predictions, many.predictions)


# --- training ---------------------------------------------------------------------------------------------------
def _zo_act_losses(model: Path, batches: TaskBatches, steps: int) -> list[float]:
    oracle = Oracle(GraphSession(model))
    cls = get_method("zo-act")
    schedule = optim.constant(1e-2)
    method = cls(cls.Config(mu=1e-3, rank=4), optim.adam(schedule), schedule)
    method.init(oracle, 0)
    method.calibrate(oracle, batches.calibration(2))
    losses = []
    for t in range(steps):
        batch, objective = batches.next()
        losses.append(method.step(oracle, batch, objective, t).loss)
    return losses


@pytest.mark.parametrize("task_name", TASKS)
def test_training_one_row_equals_many_rows(tiny_lm_dirs, task_name):
    """ZO-Act on the classification objective: the same step losses through both layouts (same data order, same
    random directions), and the one-row batch really is one row per example."""
    model = tiny_lm_dirs["fp32"]
    tok = load_tokenizer(model)
    task = get_task(task_name)
    train = task.load(seed=0, k=8).train

    def batches(one_row: bool) -> TaskBatches:
        tb = TaskBatches(task, train, tok, 8, MAX_LEN, 0, "classification", balance="off")
        tb.candidate_scoring = one_row
        return tb

    b1, _ = batches(True).next()
    bm, _ = batches(False).next()
    assert b1.size == 8 and bm.size == 8 * len(task.classes)
    one, many = _zo_act_losses(model, batches(True), 4), _zo_act_losses(model, batches(False), 4)
    assert len(set(np.round(one, 6))) > 1, "the losses should move over the steps"
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_objective_receives_forward_outputs(tiny_lm_dirs):
    """The objectives read a ForwardOutputs: per-example CE from candidate_logp equals the per-candidate CE."""
    model = tiny_lm_dirs["fp32"]
    oracle, tok = Oracle(GraphSession(model)), load_tokenizer(model)
    task = get_task("trec")
    examples = _examples("trec", 6)
    b1, obj1 = encode(tok, task, examples, "classification", MAX_LEN, candidate_scoring=True)
    bm, objm = encode(tok, task, examples, "classification", MAX_LEN, candidate_scoring=False)
    assert b1.candidate_ids is not None and bm.candidate_ids is None
    np.testing.assert_allclose(oracle.sample_losses(b1, obj1), oracle.sample_losses(bm, objm), rtol=1e-5, atol=1e-5)
    lm_b, lm_obj = encode(tok, task, examples, "lm", MAX_LEN, candidate_scoring=True)
    assert lm_obj is lm_objective and lm_b.candidate_ids is None, "the LM objective needs no candidates"
    out = ForwardOutputs(np.array([2.0, 3.0]), np.array([1.0, 0.0]))
    np.testing.assert_array_equal(lm_objective(out), [2.0, 3.0])


# --- fallbacks --------------------------------------------------------------------------------------------------
def test_multi_token_words_keep_per_candidate_rows(tiny_lm_dirs):
    model = tiny_lm_dirs["fp32"]
    tok = load_tokenizer(model)
    task = get_task("rotten-tomatoes").with_prompt(verbalizer="rotten=terrible movie,fresh=great")
    assert not single_token_words(tok, task)
    examples = _examples("rotten-tomatoes", 4)
    batch, _ = encode(tok, task, examples, "classification", MAX_LEN, candidate_scoring=True)
    assert batch.size == 8 and batch.candidate_ids is None
    with pytest.raises(TaskError, match="single-token"):
        one_row_batch(tok, examples, task, MAX_LEN)
    oracle = Oracle(GraphSession(model))
    r = evaluate(oracle, tok, task, examples, max_len=MAX_LEN)
    np.testing.assert_allclose(r.loglik, _per_candidate_scores(oracle, tok, task, examples), rtol=1e-6)


def test_old_export_falls_back(tiny_lm_dirs, old_export):
    """An export made before candidate scoring (no graph input, no manifest feature) loads, evaluates and trains on
    the per-candidate rows with the same results; asking it for candidates is a one-line ManifestError."""
    old = GraphSession(old_export)
    assert not old.manifest.has(contract.FEATURE_CANDIDATE_SCORING)
    assert contract.INPUT_CANDIDATE_IDS not in {i.name for i in old.session.get_inputs()}
    tok = load_tokenizer(old_export)
    task = get_task("trec")
    examples = _examples("trec", 8)
    before = Oracle(old)
    r_old = evaluate(before, tok, task, examples, max_len=MAX_LEN)
    assert before.forwards == 1
    r_new = evaluate(Oracle(GraphSession(tiny_lm_dirs["fp32"])), tok, task, examples, max_len=MAX_LEN)
    np.testing.assert_allclose(r_old.loglik, r_new.loglik, rtol=1e-5, atol=1e-5)
    with pytest.raises(TaskError, match="candidate scoring"):
        evaluate(before, tok, task, examples, max_len=MAX_LEN, one_row=True)
    feeds, _ = one_row_batch(tok, examples, task, MAX_LEN)
    with pytest.raises(contract.ManifestError, match="without candidate scoring"):
        old.forward(Batch.from_dict(feeds))
