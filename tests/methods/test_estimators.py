"""Each method's single-query gradient estimate against torch autograd on the tiny Llama (fp32).

    python -m pytest tests/methods/test_estimators.py -q -s     # -s prints the measured cosines

Marked slow: about 15 s of CPU (6 x 64 method steps + 2 x 64), 30-45 s of wall time on a busy 2-core machine.

The reference gradient is torch autograd on the untouched HF model that was exported (tests/conftest.py
``tiny_export``), of the same objective the methods minimise: the mean over rows of each row's token-mean NLL
(``runtime.oracle.lm_objective``) on the same left-padded batch. A method's estimate ĝ is read back from one step
with learning rate 1 and plain SGD on a fresh point:

* LOZO, SubZero, AGZO: on an adapter oracle (``fold=False``) the step's whole change is the adapter ΔW = Q Pᵀ,
  and ΔW = −ĝ (cleared before every query, so every query starts from the same weights);
* MeZO (linear weights only, ``kinds="linear"``) and Zoop (unnormalised, every layer): the in-place change
  W_after − W_before = −ĝ, read in the stored [d_in, d_out] layout, then the weights are restored;
* ZO-Act: the change of C (from 0), mapped through the calibrated basis: ĝ_W = −ΔC Aᵀ.

Checks, with 64 single-query estimates per batch and method (every method on one batch, AGZO and MeZO on two):
the mean of k estimates has positive cosine with the true gradient, rising with k (1 vs 16 vs 64); on the same
batches AGZO's cosine beats MeZO's (over the linear weights, which both perturb); MeZO, LOZO and SubZero are
(roughly) unbiased: averaging 4x more estimates roughly doubles their cosine (cos ≈ √(k / (k + D)) for an unbiased
estimator in D ≫ k dimensions), where a biased one would saturate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import get_method

QUERIES = 64
MU = 1e-3
# lazy periods of 1: every query draws fresh factors, so the mean of many estimates is the estimator's expectation
CONFIGS = {
    "mezo": {"kinds": "linear"},
    "lozo": {"rank": 2, "nu": 1},
    "subzero": {"rank": 2, "refresh": 1},
    "agzo": {"rank": 1},
    "zo-act": {"rank": 4},
    "zoop": {"select": "all", "normalize": False},
}
UNBIASED = ("mezo", "lozo", "subzero")

pytestmark = pytest.mark.slow


def _method(name: str):
    cls = get_method(name)
    schedule = optim.constant(1.0)
    return cls(cls.Config(mu=MU, **CONFIGS[name]), optim.sgd(schedule), schedule)


def true_gradient(reference: torch.nn.Module, batch, linears, tiny) -> np.ndarray:
    """∂/∂W of mean_rows(row_nll / row_count), HF orientation, flattened in manifest order (float64)."""
    reference.zero_grad(set_to_none=True)
    nll, count = tiny.torch_row_losses(reference, batch)
    (nll / count.clamp(min=1.0)).mean().backward()
    params = dict(reference.named_parameters())
    flat = np.concatenate([params[s.weight].grad.detach().double().numpy().ravel() for s in linears])
    reference.zero_grad(set_to_none=True)
    return flat


def estimates(name: str, model_dir, batch, linears, seed: int = 0) -> np.ndarray:
    """[QUERIES, D] single-query gradient estimates of method ``name`` at the exported weights."""
    method = _method(name)
    dense = name in ("mezo", "zoop")
    oracle = Oracle(GraphSession(model_dir), fold=dense)
    method.init(oracle, seed)
    if name == "zo-act":
        method.calibrate(oracle, [batch])
    keys = [s.weight for s in linears]
    start = {k: oracle.params[k].copy() for k in keys}
    out = np.empty((QUERIES, sum(s.d_in * s.d_out for s in linears)))
    for t in range(QUERIES):
        report = method.step(oracle, batch, lm_objective, t)
        assert not report.skipped, f"{name}: query {t} skipped"
        if dense:
            delta = [(oracle.params[k] - start[k]).astype(np.float64).T for k in keys]  # stored [d_in, d_out]
            for k in keys:
                oracle.params[k][...] = start[k]  # in place: the buffers stay bound
        elif name == "zo-act":
            delta = []
            for s in linears:
                c, a = method.state[f"C::{s.name}"], method.state[f"A::{s.group}"]
                delta.append(c.astype(np.float64) @ a.T.astype(np.float64))
                c[...] = 0.0  # the adapter shares this array: the next query starts at the base again
        else:
            delta = []
            for s in linears:
                a = oracle.adapters.get(s.name)
                delta.append(np.zeros((s.d_out, s.d_in)) if a is None else a.q.astype(np.float64) @ a.p.T)
            oracle.adapters.clear()
        out[t] = -np.concatenate([d.ravel() for d in delta])  # lr = 1: the change is −ĝ
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cosines(est: np.ndarray, grad: np.ndarray) -> dict[int, float]:
    """Cosine with the true gradient of the mean of k estimates, averaged over the QUERIES // k disjoint groups."""
    return {k: float(np.mean([_cos(g.mean(axis=0), grad) for g in np.split(est, QUERIES // k)])) for k in (1, 16, 64)}


@pytest.fixture(scope="module")
def measured(tiny_export, tiny):
    """{batch seed: {method: {k: cosine}}}: every method on batch 0, AGZO and MeZO also on batch 1 (ORT vs torch
    loss parity checked first)."""
    exp = tiny_export("llama")
    linears = exp.manifest.linears
    session = GraphSession(exp.dir)
    ref_params = dict(exp.reference.named_parameters())
    for s in linears:  # the exported weights are the reference's, stored transposed
        np.testing.assert_array_equal(session.params[s.weight], ref_params[s.weight].detach().numpy().T)
    results = {}
    for seed, names in ((0, list(CONFIGS)), (1, ["mezo", "agzo"])):
        batch = tiny.make_batch(tiny.VOCAB, seed=seed, batch=4, seq=10)
        with torch.no_grad():
            nll, count = tiny.torch_row_losses(exp.reference, batch)
        torch_loss = float((nll / count.clamp(min=1.0)).mean())
        ort_loss = float(np.mean(Oracle(session).sample_losses(batch)))
        assert abs(torch_loss - ort_loss) < 1e-4, f"ORT loss {ort_loss} vs torch {torch_loss}"
        grad = true_gradient(exp.reference, batch, linears, tiny)
        results[seed] = {name: cosines(estimates(name, exp.dir, batch, linears), grad) for name in names}
    print("\ncosine(mean of k single-query estimates, autograd gradient), tiny Llama, linear weights:")
    for seed, per in results.items():
        for name, c in per.items():
            print(f"  batch {seed}  {name:8s} " + "  ".join(f"k={k:<2d} {v:+.4f}" for k, v in c.items()))
    return results


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cosine_positive_and_rising_with_queries(name, measured):
    for seed, per in measured.items():
        if name not in per:
            continue
        c = per[name]
        assert c[1] > 0, f"{name}, batch {seed}: single-query estimates point away from the gradient: {c}"
        assert c[1] < c[16] < c[64], f"{name}, batch {seed}: cosine does not rise with the queries averaged: {c}"


def test_agzo_beats_mezo_on_the_same_batches(measured):
    for seed, per in measured.items():
        agzo, mezo = per["agzo"], per["mezo"]
        for k in (1, 16, 64):
            assert agzo[k] > mezo[k], f"batch {seed}, k={k}: AGZO cosine {agzo[k]:.4f} <= MeZO {mezo[k]:.4f}"


@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimators_keep_improving(name, measured):
    for seed, per in measured.items():
        if name not in per:
            continue
        c = per[name]
        # unbiased in D >> k dimensions: cos(64) / cos(16) ≈ √4 = 2; a biased estimator's cosine saturates
        assert c[64] > 1.5 * c[16], f"{name}, batch {seed}: cosine saturates like a biased estimator: {c}"
