"""LOZO: low-rank ZO with a lazily resampled right factor (Chen et al., 2024, "Enhancing Zeroth-order Fine-tuning for
Language Models with Low-rank Structures", arXiv 2410.07698).

Per targeted linear l, step t, query k::

    V_l ~ N(0, I) [d_in x r], redrawn every ν steps (the lazy subspace);  U_l ~ N(0, I) [d_out x r], every step
    ΔW_l = U_l V_lᵀ / √r        through the P/Q ports: P = V_l, Q = ±μ U_l / √r (no in-place perturbation)
    g    = (L(+μΔW) − L(−μΔW)) / 2μ
    W_l ← W_l − η g ΔW_l         one in-place rank-r BLAS update (or the INT4 adapter)

The 1/√r is our choice: it makes E‖ΔW‖² = d_in·d_out (MeZO's scale, so MeZO's μ and η carry over) and the
estimator unbiased, E[g ΔW] = ∇W L for small μ. Defaults: rank 2, ν = 50 (the paper's), μ 1e-3.
Works on INT4 bases in adapter form: the update accumulates in a low-rank adapter fed through the same ports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import rng
from runtime.method import MethodError, register_method
from runtime.oracle import Oracle
from runtime.trained_state import LowRank
from zo_edge.methods.base import BaseConfig, LowRankSPSA, knob

__all__ = ["LOZO", "LOZOConfig"]


@dataclass
class LOZOConfig(BaseConfig):
    nu: int = knob(50, "steps between redraws of the shared factor V (the paper's ν)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nu < 1:
            raise MethodError(f"--nu must be >= 1, got {self.nu}")


@register_method("lozo")
class LOZO(LowRankSPSA):
    Config = LOZOConfig

    def perturbation(self, oracle: Oracle, t: int, k: int) -> dict[str, LowRank]:
        c = self.config
        pert = {}
        for spec in oracle.manifest.linears:
            v = rng.gaussian(self.seed, (spec.d_in, c.rank), "lozo-V", t // c.nu, spec.name)
            u = rng.gaussian(self.seed, (spec.d_out, c.rank), "lozo-U", t, k, spec.name)
            pert[spec.name] = LowRank(q=u / np.float32(np.sqrt(c.rank)), p=v)
        return pert
