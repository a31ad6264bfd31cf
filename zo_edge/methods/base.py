"""What every ZO method shares: the common config, timing, and the non-finite guard.

A step whose losses are not finite applies no update (full-space methods still undo their in-place perturbation)
and reports ``skipped``; the training loop stops after ``max_bad_steps`` in a row with a clear message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from runtime.method import StepReport
from runtime.oracle import Oracle
from zo_edge import optim

__all__ = ["BaseConfig", "LowRankSPSA", "Timer", "ZOBase", "finite", "lowrank_spsa"]


@dataclass
class BaseConfig:
    #: perturbation scale μ. float32 matters: with unit-scale perturbation entries 1e-4..1e-3 gave the most
    #: accurate central difference on a 100M model; 1e-2 is dominated by curvature.
    mu: float = 1e-3
    #: perturbations averaged per step (q >= 1); each costs two forwards (one for AGZO)
    queries: int = 1
    rank: int = 2

    def __post_init__(self) -> None:
        if not self.mu > 0:
            raise ValueError(f"mu must be > 0, got {self.mu}")
        if self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


def finite(*values: np.ndarray | float) -> bool:
    return all(bool(np.all(np.isfinite(v))) for v in values)


class Timer:
    """Accumulates wall time per phase: forwards, update, sampling (the StepReport split)."""

    def __init__(self) -> None:
        self.t = {"forward": 0.0, "update": 0.0, "sample": 0.0}
        self._phase: str | None = None
        self._start = 0.0

    def __call__(self, phase: str) -> Timer:
        self._phase = phase
        return self

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.t[self._phase] += time.perf_counter() - self._start

    def report(self, loss: float, g: float, forwards: int, skipped: bool = False, **extra) -> StepReport:
        return StepReport(
            loss=float(loss),
            projected_grad=float(g),
            forwards=forwards,
            t_forward=self.t["forward"],
            t_update=self.t["update"],
            t_sample=self.t["sample"],
            skipped=skipped,
            extra=extra,
        )


class ZOBase:
    """Holds config, optimizer and seed; subclasses implement init/step and list their state arrays."""

    name = "base"
    bases = frozenset({"fp32"})
    changes_weights = True

    def __init__(self, config: BaseConfig, optimizer: optim.Transform, schedule: optim.Schedule) -> None:
        self.config = config
        #: used by methods whose trainable coordinates are explicit arrays (MeZO's weights, ZO-Act's C)
        self.optimizer = optimizer
        #: used by the low-rank methods, whose update is a rank-r SGD step written straight into W
        self.schedule = schedule
        self.seed = 0
        self.opt_state = None
        self.state: dict[str, np.ndarray] = {}

    def check_base(self, oracle: Oracle) -> None:
        dtype = oracle.manifest.dtype
        if dtype not in self.bases:
            raise ValueError(
                f"{self.name} cannot train an {dtype} base (it updates full weights); "
                f"use zo-act, lozo, subzero or agzo, which train a low-rank adapter on {dtype}"
            )

    def optimizer_lr(self, t: int) -> float:
        return float(self.schedule(t))

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]:
        return self.state

    # --- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        out = {f"state/{k}": v for k, v in self.state.items()}
        if self.opt_state is not None:
            out.update(optim.state_to_arrays(self.opt_state, prefix="opt/"))
        return out

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        for k, v in arrays.items():
            if k.startswith("state/"):
                key = k.removeprefix("state/")
                if key in self.state and self.state[key].shape == v.shape:
                    self.state[key][...] = v  # in place: other objects (the oracle's adapters) may hold these arrays
                else:
                    self.state[key] = np.array(v, copy=True)
        if self.opt_state is not None:
            self.opt_state = optim.state_from_arrays(
                self.opt_state, {k: v for k, v in arrays.items() if k.startswith("opt/")}, prefix="opt/"
            )


def lowrank_spsa(oracle: Oracle, batch, objective, pert: dict, mu: float, timer: Timer) -> tuple[float, float, float]:
    """Central difference along ΔW = Q Pᵀ per layer (``pert``: layer -> (P, Q)); returns (f+, f-, g)."""
    with timer("forward"):
        plus = {k: (p, mu * q) for k, (p, q) in pert.items()}
        f_plus = float(np.mean(oracle.sample_losses(batch, objective, plus)))
        minus = {k: (p, -mu * q) for k, (p, q) in pert.items()}
        f_minus = float(np.mean(oracle.sample_losses(batch, objective, minus)))
    return f_plus, f_minus, (f_plus - f_minus) / (2 * mu)


class LowRankSPSA(ZOBase):
    """The step shared by LOZO and SubZero: per query, a central difference along ``perturbation(...)`` and a
    rank-r SGD update W -= η g ΔW (in place, or into the INT4 adapter). Subclasses define only the perturbation."""

    bases = frozenset({"fp32", "int4"})

    def init(self, oracle: Oracle, seed: int) -> None:
        self.check_base(oracle)
        self.seed = seed

    def perturbation(self, oracle: Oracle, t: int, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def step(self, oracle: Oracle, batch, objective, t: int):
        c = self.config
        timer = Timer()
        lr = self.optimizer_lr(t)
        gs, losses = [], []
        for k in range(c.queries):
            with timer("sample"):
                pert = self.perturbation(oracle, t, k)
            f_plus, f_minus, g = lowrank_spsa(oracle, batch, objective, pert, c.mu, timer)
            if not finite(f_plus, f_minus):
                return timer.report(np.nan, np.nan, 2 * (k + 1), skipped=True)
            with timer("update"):
                for layer, (p, q) in pert.items():
                    oracle.apply_lowrank(layer, q, p, -lr * g / c.queries)
            gs.append(g)
            losses.append(0.5 * (f_plus + f_minus))
        return timer.report(np.mean(losses), np.mean(gs), 2 * c.queries)
