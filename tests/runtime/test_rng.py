"""Tests for runtime/rng.py: same key -> same numbers in any process; different keys -> independent streams.

Run with ``python -m pytest tests/runtime/test_rng.py -q``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import rng

REPO = Path(__file__).resolve().parents[2]

_CHILD = """
import sys, numpy as np
from runtime import rng
a = rng.gaussian(1234, (3, 5), 7, "model.layers.0.self_attn.q_proj", "z")
b = rng.orthonormal(1234, 6, 3, 7, "basis")
c = rng.stream(99, "x", 2**70, -5).integers(0, 2**63, size=4)
sys.stdout.write(a.tobytes().hex() + "|" + b.tobytes().hex() + "|" + c.tobytes().hex())
"""


def _child_output(hashseed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_same_numbers_in_two_processes_and_here():
    # Different PYTHONHASHSEEDs: string keys must not go through Python's salted hash().
    out1, out2 = _child_output("1"), _child_output("2")
    assert out1 == out2, "rng streams differ between processes"
    a = rng.gaussian(1234, (3, 5), 7, "model.layers.0.self_attn.q_proj", "z")
    b = rng.orthonormal(1234, 6, 3, 7, "basis")
    c = rng.stream(99, "x", 2**70, -5).integers(0, 2**63, size=4)
    assert out1 == a.tobytes().hex() + "|" + b.tobytes().hex() + "|" + c.tobytes().hex()


def test_regenerated_not_stored():
    a = rng.gaussian(0, (64, 32), 10, 3)
    b = rng.gaussian(0, (64, 32), 10, 3)
    assert a.dtype == np.float32 and a.shape == (64, 32)
    np.testing.assert_array_equal(a, b)
    out = np.empty((64, 32), np.float32)
    assert rng.gaussian(0, (64, 32), 10, 3, out=out) is out
    np.testing.assert_array_equal(out, a)


def test_key_encoding_is_unambiguous():
    keys = {
        rng.key_of(0, 1),
        rng.key_of(0, "1"),
        rng.key_of(0, 1, 2),
        rng.key_of(0, 12),
        rng.key_of(0, "1", "2"),
        rng.key_of(0, "12"),
        rng.key_of(1, 0),
        rng.key_of(0, -1),
        rng.key_of(0),
    }
    assert len(keys) == 9, "distinct key tuples collided"
    assert rng.key_of(0, np.int64(5)) == rng.key_of(0, 5), "numpy ints must key like Python ints"
    with pytest.raises(TypeError):
        rng.key_of(0, 1.5)
    with pytest.raises(TypeError):
        rng.key_of(0, True)


@pytest.mark.parametrize("other", [(1, 0, "z"), (0, 1, "z"), (0, 0, "u"), (0, 0)])
def test_different_keys_are_uncorrelated(other):
    n = 200_000
    a = rng.gaussian(7, n, 0, 0, "z", dtype=np.float64)
    b = rng.gaussian(7, n, *other, dtype=np.float64)
    corr = float(np.corrcoef(a, b)[0, 1])
    assert abs(corr) < 5.0 / np.sqrt(n), f"keys {other} correlate with (0, 0, 'z'): {corr:.4f}"
    assert abs(a.mean()) < 5.0 / np.sqrt(n) and abs(a.std() - 1.0) < 0.01, "not a standard normal"


def test_gaussian_other_dtypes():
    h = rng.gaussian(3, (4, 4), "k", dtype=np.float16)
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, rng.gaussian(3, (4, 4), "k").astype(np.float16))


@pytest.mark.parametrize("rows,cols", [(16, 4), (4, 16), (8, 8), (1, 1)])
def test_orthonormal(rows, cols):
    q = rng.orthonormal(5, rows, cols, 2, "p")
    assert q.shape == (rows, cols) and q.dtype == np.float32
    gram = q.T @ q if rows >= cols else q @ q.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=1e-5)
    np.testing.assert_array_equal(q, rng.orthonormal(5, rows, cols, 2, "p"))


def test_orthonormal_sign_fixed():
    # The sign fix makes the columns the Gram-Schmidt of the Gaussian: each column has a positive dot product with
    # the Gaussian column it came from (diag R > 0), whatever sign convention LAPACK uses.
    rows, cols = 32, 6
    g = rng.stream(11, "s").standard_normal((rows, cols))
    q = rng.orthonormal(11, rows, cols, "s", dtype=np.float64)
    r = q.T @ g
    assert np.all(np.diagonal(r) > 0), "diag(R) must be positive after the sign fix"
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-10)
    np.testing.assert_allclose(q @ r, g, atol=1e-10)
    # Independent reference: classical Gram-Schmidt on the same Gaussian.
    ref = np.zeros_like(g)
    for j in range(cols):
        v = g[:, j] - ref[:, :j] @ (ref[:, :j].T @ g[:, j])
        ref[:, j] = v / np.linalg.norm(v)
    np.testing.assert_allclose(q, ref, atol=1e-10)


# --- parallel chunked fills ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_fill_is_deterministic_and_independent_of_threads(dist, monkeypatch):
    n = 2 * rng.CHUNK + 12345
    a = rng.fill(np.empty(n, np.float32), 3, 7, "layer", dist=dist)
    monkeypatch.setattr(rng, "_POOL", None)
    monkeypatch.setattr("os.cpu_count", lambda: 1)  # one worker: the same numbers, chunk by chunk
    b = rng.fill(np.empty(n, np.float32), 3, 7, "layer", dist=dist)
    assert np.array_equal(a, b)
    # chunk i is the stream keyed (..., i): an independent reference for the layout
    first = rng.stream(3, 7, "layer", 0)
    if dist == "gaussian":
        np.testing.assert_array_equal(a[: rng.CHUNK], first.standard_normal(rng.CHUNK, dtype=np.float32))
        assert abs(a.mean()) < 5 / np.sqrt(n) and abs(a.std() - 1) < 0.01
    else:
        assert set(np.unique(a)) == {-1.0, 1.0} and abs(a.mean()) < 5 / np.sqrt(n)
    assert not np.array_equal(a, rng.fill(np.empty(n, np.float32), 3, 8, "layer", dist=dist))


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
def test_fill_in_slabs_of_whole_chunks_is_the_whole_fill(dist):
    n = 5 * rng.CHUNK + 777
    whole = rng.fill(np.empty(n, np.float32), 3, 7, "embed", dist=dist)
    slabs = [
        rng.fill(np.empty(min(2 * rng.CHUNK, n - a), np.float32), 3, 7, "embed", dist=dist, first_chunk=a // rng.CHUNK)
        for a in range(0, n, 2 * rng.CHUNK)
    ]
    assert np.concatenate(slabs).tobytes() == whole.tobytes()
    # an offset is a different part of the stream, not a reseed of chunk 0
    assert not np.array_equal(slabs[1][:100], whole[:100])


def test_fill_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="gaussian or rademacher"):
        rng.fill(np.empty(10, np.float32), 0, dist="uniform")
