"""The frozen-prefix cache on the real SmolLM2-135M: the default export's split graphs compose to the full graph.

    python -m pytest tests/runtime/test_prefix_cache_real.py -q      # slow: uses the real-model export fixture

A ZO-Act step on the top blocks behind the prefix cache gives the losses of the same step on the full graph
(restricted to the same blocks) to 1e-4 on real Rotten Tomatoes batches, and the suffix graph really is the one
running (speed is benchmarks/layer_cost.py's to measure, not a test's).
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.layers import n_blocks
from runtime.oracle import Oracle
from runtime.prefix_cache import make_oracle
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.data import TaskBatches, load_tokenizer
from zo_edge.methods import get_method
from zo_edge.tasks import get_task

pytestmark = pytest.mark.slow


def test_cached_zo_act_steps_equal_the_full_graph_on_smollm2(real_model_dirs):
    folder = real_model_dirs["fp32"]["dir"]
    full = Oracle(GraphSession(folder, threads=2))
    splits = full.manifest.splits
    assert splits, "the default fp32 export must carry the top-quarter split"
    blocks = list(range(splits[0], n_blocks(full.manifest)))
    full = Oracle(full.session, blocks=blocks)
    cached, used = make_oracle(folder, blocks=blocks, threads=2)
    assert used == splits[0]
    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=8)
    cand = full.manifest.has("candidate_scoring")
    batches = TaskBatches(task, data.train, load_tokenizer(folder), 8, 64, 0, "classification", candidate_scoring=cand)
    batch, objective = batches.next()
    losses = []
    for oracle in (full, cached):
        cls = get_method("zo-act")
        sched = optim.constant(cls.default_lr)
        method = cls(cls.Config(), optim.make_optimizer(cls.default_optimizer, sched), sched)
        method.init(oracle, 0)
        method.calibrate(oracle, [batch])
        losses.append([method.step(oracle, batch, objective, t).loss for t in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    assert cached.session.takes_hidden and cached.prefix.prefix_passes > 0, "the cached oracle ran the full graph"
    assert cached.prefix.hits > 0, "the cached rows were recomputed at every pass"


def test_head_only_mezo_steps_equal_the_full_graph_on_smollm2(real_model_dirs):
    """``--layers head`` on the real model: the whole stack cached (the head's split), each pass the candidates'
    head (no vocabulary log-sum-exp), MeZO + Adam on the final norm only, same losses as the full graph step for
    step, and no block's weight moves."""
    folder = real_model_dirs["fp32"]["dir"]
    session = GraphSession(folder, threads=2)
    head = [n_blocks(session.manifest)]
    assert head[0] in session.manifest.splits, "the default fp32 export must carry the head's split"
    full = Oracle(session, blocks=head)
    cached, used = make_oracle(folder, blocks=head, threads=2)
    assert used == head[0] and cached.prefix.scored_only and cached.candidate_head is not None
    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=8)
    batches = TaskBatches(task, data.train, load_tokenizer(folder), 8, 64, 0, "classification", candidate_scoring=True)
    batch, objective = batches.next()
    losses, finals = [], []
    gain0 = cached.params[cached.manifest.params[0].name].copy()
    for oracle in (full, cached):
        cls = get_method("mezo")
        sched = optim.constant(1e-2)
        method = cls(cls.Config(dist="rademacher", queries=2), optim.make_optimizer("adam", sched), sched)
        method.init(oracle, 0)
        assert method.names == [p.name for p in oracle.manifest.params] and len(method.names) == 1
        losses.append([method.step(oracle, batch, objective, t).loss for t in range(3)])
        finals.append(oracle.params[method.names[0]].copy())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    # the candidates' head rounds differently from log-softmax over 49152 logits (no float32 log-sum-exp to
    # subtract), and Adam's normalised step passes that on: 2.4e-5 after 3 steps of lr 1e-2 is 0.2% of one step
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-4, atol=1e-5)
    assert np.abs(finals[0] - gain0).max() > 1e-6, "the steps must move the final norm's gain"
    assert cached.prefix.prefix_passes > 0 and cached.prefix.hits > 0
