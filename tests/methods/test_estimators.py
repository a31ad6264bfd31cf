"""Each method's single-query gradient estimate against torch autograd on the tiny Llama (fp32).

    python -m pytest tests/methods/test_estimators.py -q -s     # -s prints the measured cosines

Marked slow: about 15 s of CPU (6 x 64 method steps + 2 x 64), 30-45 s of wall time on a busy 2-core machine.

The reference gradient is torch autograd on the untouched HF model that was exported (tests/conftest.py
``tiny_export``), of the same objective the methods minimise: the mean over rows of each row's token-mean NLL
(``runtime.oracle.lm_objective``) on the same left-padded batch. A method's estimates are read
back by ``single_query_estimates`` of ``benchmarks/alignment_lib.py`` (one step with learning rate 1 and plain SGD
per query, from the same weights every time; MeZO on the linear weights only, lazy periods of 1, Zoop unnormalised
over every layer; its docstring gives the details), which ``benchmarks/alignment.py`` also runs on SmolLM2-135M.

Checks, with 64 single-query estimates per batch and method (every method on one batch, AGZO and MeZO on two):
the mean of k estimates has positive cosine with the true gradient, rising with k (1 vs 16 vs 64); on the same
batches AGZO's cosine beats MeZO's (over the linear weights, which both perturb); MeZO, LOZO and SubZero are
(roughly) unbiased: averaging 4x more estimates roughly doubles their cosine (cos ≈ √(k / (k + D)) for an unbiased
estimator in D ≫ k dimensions), where a biased one would saturate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.oracle import Oracle
from runtime.session import GraphSession

# the readback is a benchmark diagnostic, not library code: import it the way the benchmark scripts do
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from alignment_lib import CONFIGS, cosine, single_query_estimates  # noqa: E402

QUERIES = 64
MU = 1e-3
UNBIASED = ("mezo", "lozo", "subzero")

pytestmark = pytest.mark.slow


def true_gradient(reference: torch.nn.Module, batch, linears, tiny) -> np.ndarray:
    """∂/∂W of mean_rows(row_nll / row_count), HF orientation, flattened in manifest order (float64)."""
    reference.zero_grad(set_to_none=True)
    nll, count = tiny.torch_row_losses(reference, batch)
    (nll / count.clamp(min=1.0)).mean().backward()
    params = dict(reference.named_parameters())
    flat = np.concatenate([params[s.weight].grad.detach().double().numpy().ravel() for s in linears])
    reference.zero_grad(set_to_none=True)
    return flat


def estimates(name: str, model_dir, batch, seed: int = 0) -> np.ndarray:
    """[QUERIES, D] single-query gradient estimates of method ``name`` at the exported weights (float64)."""
    draws = single_query_estimates(name, model_dir, batch, QUERIES, seed=seed, mu=MU)
    return np.stack([np.concatenate([g.ravel() for g in est]).astype(np.float64) for est in draws])


def cosines(est: np.ndarray, grad: np.ndarray) -> dict[int, float]:
    """Cosine with the true gradient of the mean of k estimates, averaged over the QUERIES // k disjoint groups."""
    return {
        k: float(np.mean([cosine([g.mean(axis=0)], [grad]) for g in np.split(est, QUERIES // k)])) for k in (1, 16, 64)
    }


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
        results[seed] = {name: cosines(estimates(name, exp.dir, batch), grad) for name in names}
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
