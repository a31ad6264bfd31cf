"""MeZO facts beyond the common suite: the Rademacher option learns like the Gaussian one, and bad options fail.

python -m pytest tests/methods/test_mezo.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods.mezo import MeZO, MeZOConfig


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_loss_falls_with_either_distribution(dist, tiny_export, tiny):
    model = tiny_export("llama")
    oracle = Oracle(GraphSession(model.dir))
    batch = tiny.make_batch(tiny.VOCAB, seed=0, batch=4, seq=10)
    sched = optim.constant(2e-3)
    method = MeZO(MeZOConfig(mu=1e-3, dist=dist), optim.sgd(sched), sched)
    method.init(oracle, 0)
    before = float(np.mean(oracle.sample_losses(batch)))
    for t in range(100):
        method.step(oracle, batch, lm_objective, t)
    after = float(np.mean(oracle.sample_losses(batch)))
    assert after < before - 0.2, f"{dist}: {before:.3f} -> {after:.3f}"


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="gaussian or rademacher"):
        MeZOConfig(dist="uniform")
