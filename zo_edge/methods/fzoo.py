"""FZOO: batched one-sided Rademacher probes sharing one f0, step normalised by the spread of the probe losses.

FZOO (Dang et al., 2025, arXiv 2506.09034, "FZOO: Fast Zeroth-Order Optimizer for Fine-Tuning Large Language
Models towards Adam-Scale Speed") replaces MeZO's two-sided single probe with N one-sided Rademacher probes around
one unperturbed loss, and divides the step by the standard deviation of the probe losses instead of by μ::

    f0 = L(θ);   u_i ∈ {±1}^D (i = 1..N);   f_i = L(θ + μ u_i)
    σ  = std(f_1, ..., f_N)                            (≈ μ‖∇L‖ for Rademacher u: the step becomes scale-free)
    ĝ  = 1/(N σ) Σ_i (f_i − f0) u_i
    θ ← optimizer(θ, ĝ)                                 (plain SGD in the paper: θ −= η ĝ)

so a step costs N + 1 forwards and its size adapts to the local gradient norm (the paper reports about 3x fewer
forwards than MeZO for the same accuracy). Paper defaults: N = 8, μ 1e-3, SGD.

Our decision: θ is ZO-Act's coefficient space (ΔW_l = C_l A_gᵀ, with the activation basis A calibrated once), not
the full weights. On SmolLM2-135M the full space has 1.35e8 coordinates, where a probe's directional signal is at
the random-direction level (benchmarks/RESULTS.md §3); the coefficient space has 1.2e6 (r = 8) and keeps the
frozen base, so the same code trains fp32 and INT4 bases. Everything but the step is ZO-Act's (calibration, state,
checkpoints, merge), which is why this file only overrides ``step``. N >= 2 (σ is a spread).

This file is also the worked example of CONTRIBUTING.md: a method is one registered file plus one row in
tests/methods/test_common.py; config flags, help and TOML keys come from ``FZOOConfig``'s fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import rng
from runtime.batch import Batch
from runtime.method import MethodError, StepReport, register_method
from runtime.oracle import Objective, Oracle
from runtime.trained_state import LowRank
from zo_edge import optim
from zo_edge.methods.base import Timer, finite, knob
from zo_edge.methods.zo_act import ZOAct, ZOActConfig

__all__ = ["FZOO", "FZOOConfig"]


@dataclass
class FZOOConfig(ZOActConfig):
    mu: float = knob(1e-2, "perturbation scale μ of the coefficients C")
    queries: int = knob(8, "one-sided Rademacher probes N per step, sharing one unperturbed forward (N + 1 in all)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.queries < 2:
            raise MethodError(f"fzoo needs --queries >= 2 (σ is the spread of the probe losses), got {self.queries}")


@register_method("fzoo")
class FZOO(ZOAct):
    Config = FZOOConfig
    default_lr = 2e-3
    default_optimizer = "sgd"
    optimizers = frozenset({"sgd", "adam"})
    not_federated = "its step size is 1/std of the step's own probe losses (a batch statistic, not a scalar per seed)"

    def direction(self, oracle: Oracle, batch: Batch, objective: Objective, t: int, timer: Timer):
        """(f0, probe losses, ĝ per layer) at the current coefficients; None for ĝ if a loss is not finite."""
        c = self.config
        adapters = oracle.trained.adapters
        with timer("forward"):
            f0 = float(np.mean(oracle.sample_losses(batch, objective)))
        losses, probes = [], []
        for k in range(c.queries):
            with timer("sample"):
                u = {
                    s.name: rng.fill(np.empty((s.d_out, c.rank), np.float32), self.seed, "fzoo-u", t, k, s.name,
                                     dist="rademacher")
                    for s in oracle.manifest.linears
                }  # fmt: skip
            with timer("forward"):
                pert = {n: LowRank(q=c.mu * v, p=adapters[n].p) for n, v in u.items()}
                losses.append(float(np.mean(oracle.sample_losses(batch, objective, pert))))
            probes.append(u)
        if not finite(f0, *losses):
            return f0, losses, None
        sigma = float(np.std(losses, ddof=1))
        if not (np.isfinite(sigma) and sigma > 0):
            return f0, losses, None
        grads: dict[str, np.ndarray] = {}
        for f, u in zip(losses, probes, strict=True):
            w = np.float32((f - f0) / (c.queries * sigma))
            for name, v in u.items():
                if name in grads:
                    grads[name] += w * v
                else:
                    grads[name] = w * v
        return f0, losses, grads

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int) -> StepReport:
        timer = Timer()
        n = self.config.queries + 1
        f0, losses, grads = self.direction(oracle, batch, objective, t, timer)
        if grads is None:
            return timer.report(f0 if np.isfinite(f0) else np.nan, np.nan, n, skipped=True)
        with timer("update"):
            params = self.trainable(oracle)
            deltas, self.opt_state = self.optimizer.update(grads, self.opt_state, params)
            if not all(finite(d) for d in deltas.values()):
                return timer.report(f0, np.nan, n, skipped=True)
            optim.apply_updates(params, deltas)
        spread = float(np.std(losses, ddof=1))
        return timer.report(f0, (float(np.mean(losses)) - f0) / self.config.mu, n, sigma=spread)
