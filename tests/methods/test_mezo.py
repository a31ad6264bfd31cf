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


@pytest.mark.parametrize("opt", ["sgd-momentum-wd", "adam"])
def test_slab_wise_z_is_the_whole_tensor_z(opt, tiny_export, tiny, monkeypatch):
    """z drawn and applied in slabs (one chunk per slab, chunks shrunk so every tiny tensor spans several) trains to
    the same bits as one slab per tensor: the scratch is slab-sized, the run is unchanged. Also through the
    optimizer's state (momentum + decay; Adam's moments and counts) and a warmup schedule's per-key counts."""
    from runtime import rng
    from zo_edge.methods import mezo

    # Adam's moments are allowed on a small selection only (the norms), so its chunks are smaller still
    chunk, kinds = (8, "norm") if opt == "adam" else (100, "linear,norm")
    monkeypatch.setattr(rng, "CHUNK", chunk)
    model = tiny_export("llama")
    batch = tiny.make_batch(tiny.VOCAB, seed=0, batch=4, seq=10)

    def run(slab_chunks: int) -> tuple[dict[str, np.ndarray], int]:
        monkeypatch.setattr(mezo, "SLAB_CHUNKS", slab_chunks)
        oracle = Oracle(GraphSession(model.dir))
        sched = optim.linear(1e-3, 6, warmup_steps=2)
        make = optim.adam(sched) if opt == "adam" else optim.sgd(sched, momentum=0.9, weight_decay=0.01)
        method = MeZO(MeZOConfig(mu=1e-3, queries=2, kinds=kinds), make, sched)
        method.init(oracle, 0)
        for t in range(3):
            assert not method.step(oracle, batch, lm_objective, t).skipped
        return {k: oracle.params[k].copy() for k in method.names}, method._scratch.size

    whole, whole_scratch = run(10**6)
    slabbed, slab_scratch = run(1)
    largest = max(v.size for v in whole.values())
    # the point: a slab-sized scratch
    assert largest > 3 * chunk and whole_scratch == largest and slab_scratch == chunk
    for k in whole:
        assert slabbed[k].tobytes() == whole[k].tobytes(), k


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="gaussian or rademacher"):
        MeZOConfig(dist="uniform")
