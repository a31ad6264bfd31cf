"""In-place updates of the bound parameters: rank-r BLAS updates and axpy, in HF orientation.

Every ZO method's update is one of two shapes: a rank-r change ΔW = α Q Pᵀ (LOZO, SubZero, AGZO, folding an
adapter), or a dense change (MeZO's z, Zoop's gradient). Both must happen in place: ``W -= a @ b`` allocates a
temporary of W's size and took 200 ms on a 100M model, about a whole forward, against 10 ms for BLAS sger/sgemm
writing into W. Linear weights are stored [d_in, d_out] (runtime.contract), so the HF-oriented update
W_hf += α Q Pᵀ is done as an sgemm into the Fortran-ordered view Wᵀ of the C-ordered array, with overwrite.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas

__all__ = ["add_dense", "add_lowrank", "hf_view"]


def hf_view(weight_in_out: np.ndarray) -> np.ndarray:
    """The [d_out, d_in] (HF orientation) view of a stored [d_in, d_out] weight; Fortran-ordered, no copy."""
    return weight_in_out.T


def add_lowrank(weight_in_out: np.ndarray, q: np.ndarray, p: np.ndarray, alpha: float) -> None:
    """W_hf += alpha * Q Pᵀ in place, for Q [d_out, r], P [d_in, r] (r = 1 uses sger, else sgemm)."""
    w = hf_view(weight_in_out)
    assert w.flags.f_contiguous and w.dtype == np.float32, "weights must be C-contiguous float32 [d_in, d_out]"
    assert q.shape[0] == w.shape[0] and p.shape[0] == w.shape[1], f"Q {q.shape} / P {p.shape} do not fit W {w.shape}"
    q = np.asarray(q, np.float32)
    p = np.asarray(p, np.float32)
    if q.shape[1] == 1:
        out = blas.sger(alpha, q[:, 0], p[:, 0], a=w, overwrite_a=True)
    else:
        out = blas.sgemm(alpha, q, p, beta=1.0, c=w, trans_b=True, overwrite_c=True)
    assert np.shares_memory(out, weight_in_out), "BLAS made a copy: the update would be lost"


def add_dense(param: np.ndarray, alpha: float, x: np.ndarray) -> None:
    """param += alpha * x in place (saxpy on the flat buffers; x in the param's stored layout)."""
    assert param.flags.c_contiguous and param.dtype == np.float32
    flat = param.reshape(-1)
    out = blas.saxpy(np.ascontiguousarray(x, np.float32).reshape(-1), flat, a=alpha)
    assert np.shares_memory(out, param), "BLAS made a copy: the update would be lost"
