"""The oracle's numerics against independent numpy references, its zero-copy binding, and runtime's import weight.

    python -m pytest tests/runtime/test_oracle.py -q

Checked here: the in-place BLAS updates (``add_lowrank``, ``add_dense``) against numpy and for the absence of copies;
``LowRank.compress`` against the exact best rank-k approximation (numpy SVD, Eckart-Young); an adapter fed
through the ports of an fp32 graph against the same ΔW folded into its weights; ``rayleigh_ritz`` against
``numpy.linalg.eigh``; that an in-place numpy update of a bound param is seen by the next forward and equals a
fresh session built from the updated values; and that importing the runtime loads neither torch nor transformers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime import contract
from runtime.errors import ZoEdgeError
from runtime.oracle import ForwardOutputs, Oracle, lm_objective, rayleigh_ritz
from runtime.params import add_dense, add_lowrank, hf_view
from runtime.session import GraphSession
from runtime.trained_state import LowRank


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


# --- in-place updates ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 3])
def test_add_lowrank_matches_numpy_in_place(rank):
    rng = np.random.default_rng(rank)
    d_in, d_out = 7, 5
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)  # stored [d_in, d_out]
    q = rng.standard_normal((d_out, rank)).astype(np.float32)
    p = rng.standard_normal((d_in, rank)).astype(np.float32)
    alpha = -0.37
    want = w.astype(np.float64) + alpha * (q.astype(np.float64) @ p.T.astype(np.float64)).T
    before = w
    addr = _address(w)
    add_lowrank(w, q, p, alpha)
    assert w is before and _address(w) == addr, "add_lowrank must update the bound buffer, not rebind it"
    np.testing.assert_allclose(w, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hf_view(w), want.T, rtol=1e-5, atol=1e-6)


def test_add_lowrank_rejects_mismatched_factors():
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(AssertionError, match="do not fit"):
        add_lowrank(w, np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32), 1.0)


def test_add_dense_matches_numpy_in_place():
    rng = np.random.default_rng(0)
    param = rng.standard_normal((6, 4)).astype(np.float32)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    want = param.astype(np.float64) + 0.25 * x
    addr = _address(param)
    add_dense(param, 0.25, x)
    assert _address(param) == addr
    np.testing.assert_allclose(param, want, rtol=1e-6, atol=1e-7)
    # a 1-D param (a norm) goes through the same path
    norm = np.ones(5, np.float32)
    add_dense(norm, -2.0, np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(norm, 1.0 - 2.0 * np.arange(5, dtype=np.float32))


# --- adapters ---------------------------------------------------------------------------------------------------
def _best_rank_k(m: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize(
    ("d_out", "d_in", "k", "rank"),
    [
        (12, 9, 6, 3),  # truncation: best rank-3 of a rank-6 product
        (12, 9, 6, 6),  # exact: the budget holds the whole product
        (8, 5, 10, 64),  # budget above min(d_out, d_in): exact, rank capped at min(d_out, d_in)
    ],
)
def test_compress_is_the_best_rank_k_approximation(d_out, d_in, k, rank):
    rng = np.random.default_rng(d_out * 100 + k)
    q = rng.standard_normal((d_out, k)).astype(np.float32)
    p = rng.standard_normal((d_in, k)).astype(np.float32)
    product = q.astype(np.float64) @ p.T.astype(np.float64)
    a = LowRank(q=q.copy(), p=p.copy())
    a.compress(rank)
    assert a.rank == min(rank, d_out, d_in, k), f"rank {a.rank}"
    got = a.q.astype(np.float64) @ a.p.T.astype(np.float64)
    want = _best_rank_k(product, rank)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(product).max())


def test_adapter_add_compresses_above_budget():
    rng = np.random.default_rng(3)
    spec = contract.LinearSpec("l", "q", d_in=10, d_out=9, group="g", weight=None)
    a = LowRank.empty(spec)
    total = np.zeros((9, 10))
    for _ in range(4):  # 4 x rank 2 into a budget of 5
        q = rng.standard_normal((9, 2)).astype(np.float32)
        p = rng.standard_normal((10, 2)).astype(np.float32)
        a.add(LowRank(q=q, p=p), 0.5, max_rank=5)
        total = _best_rank_k(total + 0.5 * q.astype(np.float64) @ p.T.astype(np.float64), 5)
        assert a.rank <= 5
        np.testing.assert_allclose(a.q.astype(np.float64) @ a.p.T, total, atol=1e-4)


# --- graph-level checks -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32(tiny_export):
    return tiny_export("llama")


def test_adapter_equals_folded_weights(fp32, tiny):
    batch = tiny.make_batch(tiny.VOCAB, seed=1, batch=3, seq=9)
    adapted = Oracle(GraphSession(fp32.dir), fold=False)
    folded = Oracle(GraphSession(fp32.dir), fold=True)
    rng = np.random.default_rng(0)
    base_loss = folded.sample_losses(batch)
    for spec in fp32.manifest.linears[::2]:
        for _ in range(2):  # two updates per layer: the adapter concatenates them
            q = rng.standard_normal((spec.d_out, 2)).astype(np.float32)
            p = rng.standard_normal((spec.d_in, 2)).astype(np.float32)
            adapted.trained.apply_lowrank(spec.name, LowRank(q=q, p=p), 0.05)
            folded.trained.apply_lowrank(spec.name, LowRank(q=q, p=p), 0.05)
    assert adapted.trained.adapters, "fold=False must accumulate adapters"
    assert not folded.trained.adapters, "fold=True must write into the weights"
    a, f = adapted.sample_losses(batch), folded.sample_losses(batch)
    assert np.abs(f - base_loss).max() > 1e-3, "the update should change the loss"
    np.testing.assert_allclose(a, f, rtol=1e-5, atol=1e-5)
    # the adapter path leaves the bound weights untouched
    fresh = GraphSession(fp32.dir)
    for k, v in adapted.params.items():
        np.testing.assert_array_equal(v, fresh.params[k], err_msg=k)


@pytest.mark.parametrize("micro_batch", [1, 2, 4])
def test_micro_batches_match_torch_and_the_whole_batch(fp32, tiny, micro_batch):
    """Row chunks (each trimmed of its all-padding columns) give the whole batch's per-row losses, with low-rank
    port feeds live; the torch model is the independent reference. Probe passes run whole."""
    import torch

    batch = tiny.make_batch(tiny.VOCAB, seed=2, batch=5, seq=12)  # row b has 2b left pads: chunks get trimmed
    assert batch.rows(slice(4, 5)).trim_left().input_ids.shape[1] == 4
    whole = Oracle(GraphSession(fp32.dir))
    micro = Oracle(GraphSession(fp32.dir), micro_batch=micro_batch)
    with torch.no_grad():
        ref_nll, ref_count = tiny.torch_row_losses(fp32.reference, batch)
    out_w, out_m = whole.run(batch), micro.run(batch)
    assert micro.forwards == 1, "a micro-batched pass is still one forward of the batch"
    np.testing.assert_array_equal(out_m[contract.OUTPUT_ROW_COUNT], ref_count.numpy())
    np.testing.assert_allclose(out_m[contract.OUTPUT_ROW_NLL], ref_nll.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out_m[contract.OUTPUT_ROW_NLL], out_w[contract.OUTPUT_ROW_NLL], rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)
    spec = fp32.manifest.linears[0]
    lowrank = {
        spec.name: LowRank(
            q=rng.standard_normal((spec.d_out, 2)).astype(np.float32),
            p=rng.standard_normal((spec.d_in, 2)).astype(np.float32),
        )
    }
    lw, lm = whole.sample_losses(batch, lowrank=lowrank), micro.sample_losses(batch, lowrank=lowrank)
    assert np.abs(lw - lm_objective(ForwardOutputs.from_run(out_w))).max() > 1e-4
    np.testing.assert_allclose(lm, lw, rtol=1e-5, atol=1e-5)
    omega = {g.name: rng.standard_normal((g.d_in, 3)).astype(np.float32) for g in fp32.manifest.groups[:2]}
    for g, sk in micro.sketches(batch, omega).items():
        np.testing.assert_allclose(sk, whole.sketches(batch, omega)[g], rtol=1e-5, atol=1e-5)


def test_micro_batch_must_not_be_negative(fp32):
    with pytest.raises(ZoEdgeError, match="micro_batch must be >= 0"):
        Oracle(GraphSession(fp32.dir), micro_batch=-1)


@pytest.mark.parametrize("r", [1, 4])
def test_rayleigh_ritz_matches_eigh(r):
    rng = np.random.default_rng(r)
    x = rng.standard_normal((40, 9)) @ np.diag(np.linspace(3, 0.2, 9))
    v, _ = np.linalg.qr(rng.standard_normal((9, r)))
    gram = (x @ v).T @ (x @ v)
    dirs, energies = rayleigh_ritz(v.astype(np.float32), gram.astype(np.float32))
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    np.testing.assert_allclose(energies, evals[order], rtol=1e-5)
    assert np.all(np.diff(energies) <= 0), "directions must be ordered by energy, descending"
    want = v @ evecs[:, order]
    for j in range(r):  # eigenvectors are defined up to sign
        sign = np.sign(want[:, j] @ dirs[:, j])
        np.testing.assert_allclose(dirs[:, j], sign * want[:, j], atol=1e-5)
        np.testing.assert_allclose(np.sum((x @ dirs[:, j]) ** 2), energies[j], rtol=1e-4)
    np.testing.assert_allclose(dirs.T @ dirs, np.eye(r), atol=1e-5)


def test_in_place_param_update_is_seen_zero_copy(fp32, tiny, tmp_path):
    from safetensors.numpy import save_file

    batch = tiny.make_batch(tiny.VOCAB, seed=2)
    s = GraphSession(fp32.dir)
    key = fp32.manifest.linears[0].weight
    before = lm_objective(ForwardOutputs.from_run(s.forward(batch)))
    buf = s.params[key]
    addr = _address(buf)
    buf *= np.float32(1.5)  # plain numpy, in place; no rebind
    s.params["model.norm.weight"] += np.float32(0.25)
    assert _address(s.params[key]) == addr
    after = lm_objective(ForwardOutputs.from_run(s.forward(batch)))
    assert np.abs(after - before).max() > 1e-4, "the in-place update was not seen by the next forward"
    # a fresh session built from the updated values gives the same losses
    other = tmp_path / "updated"
    other.mkdir()
    for name in (contract.GRAPH_FILE, contract.MANIFEST_FILE):
        shutil.copy(fp32.dir / name, other / name)
    for extra in fp32.dir.glob("model.onnx*.data"):
        shutil.copy(extra, other / extra.name)
    save_file({k: np.ascontiguousarray(v) for k, v in s.params.items()}, str(other / contract.PARAMS_FILE))
    fresh = GraphSession(other)
    np.testing.assert_allclose(
        lm_objective(ForwardOutputs.from_run(fresh.forward(batch))), after, rtol=1e-6, atol=1e-6
    )


def test_importing_runtime_loads_no_torch():
    code = (
        "import sys\n"
        "import runtime.session, runtime.oracle, runtime.loop, runtime.method\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing runtime loaded: {out.stdout.strip()[:300]}"
