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
from runtime.method import register_method
from runtime.oracle import Objective, Oracle
from runtime.session import Batch
from zo_edge.methods.base import BaseConfig, Timer, ZOBase, finite

__all__ = ["LOZO", "LOZOConfig"]


@dataclass
class LOZOConfig(BaseConfig):
    #: steps between redraws of V (the paper's ν)
    nu: int = 50


def lowrank_spsa(oracle: Oracle, batch: Batch, objective: Objective, pert: dict, mu: float, timer: Timer):
    """Central difference along ΔW = Q Pᵀ per layer (``pert``: layer -> (P, Q)); returns (f+, f-, g)."""
    with timer("forward"):
        f_plus = float(np.mean(oracle.sample_losses(batch, objective, {k: (p, mu * q) for k, (p, q) in pert.items()})))
        f_minus = float(
            np.mean(oracle.sample_losses(batch, objective, {k: (p, -mu * q) for k, (p, q) in pert.items()}))
        )
    return f_plus, f_minus, (f_plus - f_minus) / (2 * mu)


@register_method("lozo")
class LOZO(ZOBase):
    Config = LOZOConfig
    bases = frozenset({"fp32", "int4"})

    def init(self, oracle: Oracle, seed: int) -> None:
        self.check_base(oracle)
        self.seed = seed

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int):
        c = self.config
        timer = Timer()
        lr = self.optimizer_lr(t)
        gs, losses = [], []
        for k in range(c.queries):
            with timer("sample"):
                pert = {}
                for spec in oracle.manifest.linears:
                    v = rng.gaussian(self.seed, (spec.d_in, c.rank), "lozo-V", t // c.nu, spec.name)
                    u = rng.gaussian(self.seed, (spec.d_out, c.rank), "lozo-U", t, k, spec.name)
                    pert[spec.name] = (v, u / np.float32(np.sqrt(c.rank)))
            f_plus, f_minus, g = lowrank_spsa(oracle, batch, objective, pert, c.mu, timer)
            if not finite(f_plus, f_minus):
                return timer.report(np.nan, np.nan, 2 * (k + 1), skipped=True)
            with timer("update"):
                for layer, (p, q) in pert.items():
                    oracle.apply_lowrank(layer, q, p, -lr * g / c.queries)
            gs.append(g)
            losses.append(0.5 * (f_plus + f_minus))
        return timer.report(np.mean(losses), np.mean(gs), 2 * c.queries)
