"""In-place updates of the bound parameters: rank-r BLAS updates and axpy, in HF orientation.

Every ZO method's update is one of two shapes: a rank-r change ΔW = α Q Pᵀ (LOZO, SubZero, AGZO, folding an
adapter), or a dense change (MeZO's z, Zoop's gradient). Both must happen in place: ``W -= a @ b`` allocates a
temporary of W's size and took 200 ms on a 100M model, about a whole forward, against 10 ms for BLAS sger/sgemm
writing into W. Linear weights are stored [d_in, d_out] (runtime.contract), so the HF-oriented update
W_hf += α Q Pᵀ is done as an sgemm into the Fortran-ordered view Wᵀ of the C-ordered array, with overwrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.linalg import blas

from runtime.contract import ManifestError, ParamSpec

__all__ = ["add_dense", "add_lowrank", "check_params", "hf_view"]


def check_params(specs: Sequence[ParamSpec], arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """Refuse a params file that does not hold what the manifest promises: every param present, float32, of the
    manifest's exact shape (never broadcast), and finite. Training on a float64, reshaped or NaN base would run, and
    silently save garbage; this is the one check ``GraphSession`` runs when it opens a model folder."""
    for spec in specs:
        a = arrays.get(spec.name)
        if a is None:
            raise ManifestError(f"{path} lacks {spec.name!r}, which the manifest lists; re-export the model --force")
        if a.dtype != np.float32:
            raise ManifestError(f"{path}: {spec.name} is {a.dtype}, not float32; re-export the model with --force")
        if list(a.shape) != list(spec.shape):
            raise ManifestError(
                f"{path}: {spec.name} has shape {list(a.shape)}, the manifest says {spec.shape}; re-export the model"
            )
        if not np.isfinite(a).all():
            raise ManifestError(f"{path}: {spec.name} holds NaN/inf; re-export the model with --force")


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
