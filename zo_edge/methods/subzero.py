"""SubZero: random subspace ZO with orthonormal, lazily refreshed factors (Yu et al., 2024, arXiv 2410.08989).

Per targeted linear l (m = d_out, n = d_in), step t::

    U_l [m x r], V_l [n x r] column-orthonormal (QR of Gaussians), refreshed every F steps
    Z_l ~ N(0, I) [r x r] every step;   ΔW_l = s U_l Z_l V_lᵀ with s = √(mn) / r
    g = (L(+μΔW) − L(−μΔW)) / 2μ;       W_l ← W_l − η g ΔW_l  (rank-r, in place)

s makes E‖ΔW‖² = mn, MeZO's perturbation energy, so MeZO's hyperparameters carry over (the paper's point), and
the estimator is unbiased: E[g ΔW] → ∇W L as μ → 0. Defaults: rank 2 (ours; the paper sweeps), F = 1000.
Through the ports: P = V_l, Q = ±μ s U_l Z_l. INT4 bases train in adapter form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import rng
from runtime.method import MethodError, register_method
from runtime.oracle import Oracle
from runtime.trained_state import LowRank
from zo_edge.methods.base import BaseConfig, LowRankSPSA, knob

__all__ = ["SubZero", "SubZeroConfig"]


@dataclass
class SubZeroConfig(BaseConfig):
    refresh: int = knob(1000, "steps between refreshes of the orthonormal subspace U, V (the paper's F)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refresh < 1:
            raise MethodError(f"--refresh must be >= 1, got {self.refresh}")


@register_method("subzero")
class SubZero(LowRankSPSA):
    Config = SubZeroConfig

    def init(self, oracle: Oracle, seed: int) -> None:
        super().init(oracle, seed)
        self._cached: tuple[int, dict] | None = None

    def _subspace(self, oracle: Oracle, epoch: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(U, V) per layer for this refresh epoch: regenerated from the seed, cached while the epoch lasts."""
        if self._cached is None or self._cached[0] != epoch:
            r = self.config.rank
            uv = {
                s.name: (
                    rng.orthonormal(self.seed, s.d_out, r, "subzero-U", epoch, s.name),
                    rng.orthonormal(self.seed, s.d_in, r, "subzero-V", epoch, s.name),
                )
                for s in oracle.manifest.linears
            }
            self._cached = (epoch, uv)
        return self._cached[1]

    def perturbation(self, oracle: Oracle, t: int, k: int) -> dict[str, LowRank]:
        c = self.config
        uv = self._subspace(oracle, t // c.refresh)
        pert = {}
        for spec in oracle.manifest.linears:
            u, v = uv[spec.name]
            z = rng.gaussian(self.seed, (c.rank, c.rank), "subzero-Z", t, k, spec.name)
            scale = np.float32(np.sqrt(spec.d_in * spec.d_out) / c.rank)
            pert[spec.name] = LowRank(q=scale * (u @ z), p=v)
        return pert
