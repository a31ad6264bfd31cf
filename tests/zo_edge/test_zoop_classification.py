"""Zoop under the classification objective (issue #13.4): one loss per row is what its per-sample noise needs.

    python -m pytest tests/zo_edge/test_zoop_classification.py -q

On one-row batches (candidate scoring) each row is one example, so the example's cross-entropy over its candidates
is the per-sample loss Zoop's α_i reads, and its noise on that row's tokens is the example's own: Zoop trains, and
the classification loss on the batch falls. On per-candidate rows there are C rows per loss: Zoop refuses in one
line instead of pairing losses with the wrong rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.method import MethodError
from runtime.oracle import Oracle
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.data import TaskBatches, load_tokenizer
from zo_edge.methods import get_method
from zo_edge.tasks import get_task


def _zoop():
    cls = get_method("zoop")
    schedule = optim.constant(0.3)
    return cls(cls.Config(select="all"), optim.sgd(schedule), schedule)


def test_zoop_learns_the_classification_objective_on_one_row_batches(tiny_lm_dirs):
    model = tiny_lm_dirs["fp32"]
    task = get_task("rotten-tomatoes")
    train = task.load(seed=0, k=8).train
    batches = TaskBatches(task, train, load_tokenizer(model), 8, 64, 0, "classification", candidate_scoring=True)
    batch, objective = batches.next()
    assert batch.candidate_ids is not None and batch.size == 8
    oracle = Oracle(GraphSession(model))
    method = _zoop()
    method.init(oracle, 0)
    before = float(np.mean(oracle.sample_losses(batch, objective)))
    for t in range(30):
        assert not method.step(oracle, batch, objective, t).skipped
    after = float(np.mean(oracle.sample_losses(batch, objective)))
    assert after < before - 0.05, f"classification CE {before:.4f} -> {after:.4f}"


def test_zoop_refuses_per_candidate_rows(tiny_lm_dirs):
    model = tiny_lm_dirs["fp32"]
    task = get_task("rotten-tomatoes")
    train = task.load(seed=0, k=8).train
    batches = TaskBatches(task, train, load_tokenizer(model), 4, 64, 0, "classification", candidate_scoring=False)
    batch, objective = batches.next()
    oracle = Oracle(GraphSession(model))
    method = _zoop()
    method.init(oracle, 0)
    with pytest.raises(MethodError, match="one loss per batch row") as info:
        method.step(oracle, batch, objective, 0)
    assert "\n" not in str(info.value)
