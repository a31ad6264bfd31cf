"""What every ZO method shares: the common config, timing, the non-finite guard, and the rank-r SGD step.

A step whose losses (or whose update scale) are not finite applies no update (full-space methods still undo their
in-place perturbation) and reports ``skipped``; the training loop stops after ``max_bad_steps`` in a row with a
clear message.

The learning-rate schedule runs on ONE clock for every method: the number of updates applied so far. The optimizer
chain counts them per key (zo_edge/optim.py); the rank-r SGD methods (LOZO, SubZero, AGZO), whose update is written
straight into W (no optimizer state can be afforded there), count them in ``state["applied"]``, checkpointed with
the rest of their state. A skipped step advances neither.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from runtime import contract
from runtime.contract import Manifest
from runtime.method import MethodError, Probe, StepReport, check_export
from runtime.oracle import Oracle
from runtime.trained_state import LowRank
from zo_edge import optim

__all__ = ["BaseConfig", "LowRankSPSA", "Timer", "ZOBase", "finite", "knob", "lowrank_spsa"]


def knob(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (the CLI derives ``--flag`` and its help from it)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class BaseConfig:
    # float32 matters for μ: with unit-scale perturbation entries 1e-4..1e-3 gave the most accurate central
    # difference on a 100M model; 1e-2 is dominated by curvature.
    mu: float = knob(1e-3, "perturbation scale μ of the finite difference")
    queries: int = knob(1, "perturbations averaged per step (q >= 1); each costs two forwards (one for AGZO)")
    rank: int = knob(2, "rank r of each layer's perturbation")
    #: the smallest valid rank (AGZO's 0 means "the graph's basis rank")
    min_rank: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mu) and self.mu > 0):
            raise MethodError(f"--mu must be finite and > 0, got {self.mu}")
        if self.queries < 1:
            raise MethodError(f"--queries must be >= 1, got {self.queries}")
        if self.rank < self.min_rank:
            raise MethodError(f"--rank must be >= {self.min_rank}, got {self.rank}")


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
    """Holds config, optimizer and seed; subclasses implement init/step and list their state arrays.

    The class-level declarations are the protocol's (runtime/method.py); a subclass overrides what differs."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = BaseConfig
    bases: ClassVar[frozenset[str]] = frozenset({"fp32"})
    #: port families the passes use (runtime/contract.py); none: the bound weights themselves are perturbed
    ports: ClassVar[frozenset[str]] = frozenset()
    changes_weights: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-5
    default_optimizer: ClassVar[str] = "sgd"
    optimizers: ClassVar[frozenset[str]] = frozenset({"sgd"})
    #: True for methods whose update is a rank-r SGD step written straight into W: plain SGD only (no momentum,
    #: no weight decay: their state would be model-sized), learning rate from the schedule
    direct_sgd: ClassVar[bool] = False
    #: why the method cannot be federated ("" when step == probe + replay; zo_edge/federated/)
    not_federated: ClassVar[str] = "its step is not a pure function of (seed, step, scalars)"

    def __init__(self, config: BaseConfig, optimizer: optim.Transform, schedule: optim.Schedule) -> None:
        self.config = config
        #: steps the trainable arrays (MeZO's weights, ZO-Act's C, Zoop's layers)
        self.optimizer = optimizer
        #: the learning rate of the direct-SGD methods, read at the count of applied updates
        self.schedule = schedule
        self.seed = 0
        self.opt_state = None
        self.state: dict[str, np.ndarray] = {}

    def calibrate(self, oracle: Oracle, batches: list) -> None:
        """Nothing to calibrate (methods with ``needs_calibration`` override this)."""

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]:
        """The arrays training changes: the targeted weights when updates fold in place, else the adapters."""
        if oracle.trained.fold:
            return {s.weight: oracle.params[s.weight] for s in oracle.manifest.linears}
        return {f"{k}.q": a.q for k, a in oracle.trained.adapters.items()}

    @property
    def rounds_per_step(self) -> int:
        """Federated rounds per step: one per optimizer update (``updates_per_step``): 1 where every query is
        probed at one state; MeZO's q, whose queries run in turn (query k probes the θ query k - 1's update left,
        so a federation cannot probe them together)."""
        return self.updates_per_step(self.config)

    @classmethod
    def updates_per_step(cls, config: BaseConfig) -> int:
        """Optimizer updates a step applies to each trained array: 1 (the queries averaged into one update), or
        MeZO's q (its queries run in turn, each updating θ). The optimizer's schedule counts updates, so
        ``zo_edge.train.build_method`` stretches ``--steps`` and ``--warmup`` by this to keep them in steps."""
        return 1

    @classmethod
    def schedule_steps(cls, config: BaseConfig, manifest: Manifest, steps: int) -> int:
        """How far the schedule's clock (each trained array's own update count, ``zo_edge.optim``) runs in
        ``steps`` steps: what ``build_method`` spans ``--steps`` and ``--warmup`` over. steps x
        ``updates_per_step``; a method that updates only some arrays per step (Zoop's "cycle") counts less."""
        return steps * cls.updates_per_step(config)

    def probe(self, oracle: Oracle, batch, objective, t: int) -> Probe:
        raise MethodError(f"{self.name} cannot be federated: {self.not_federated}")

    def replay(self, oracle: Oracle, t: int, scalars: np.ndarray) -> bool:
        raise MethodError(f"{self.name} cannot be federated: {self.not_federated}")

    # --- direct SGD (one clock: applied updates) -------------------------------------------------------------
    def _init_direct_sgd(self) -> None:
        self.state["applied"] = np.zeros((), np.int64)

    def direct_lr(self) -> float:
        return float(self.schedule(int(self.state["applied"])))

    def count_applied(self) -> None:
        self.state["applied"] += 1

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
                if key in self.state and self.state[key].shape != v.shape:
                    raise MethodError(
                        f"checkpoint state {key} has shape {v.shape}, this run's is {self.state[key].shape}: was the "
                        "run made with another --rank or model? Resume with its own config"
                    )
                if key in self.state:
                    self.state[key][...] = v  # in place: other objects (the oracle's adapters) may hold these arrays
                else:
                    self.state[key] = np.array(v, copy=True)
        if self.opt_state is not None:
            self.opt_state = optim.state_from_arrays(
                self.opt_state, {k: v for k, v in arrays.items() if k.startswith("opt/")}, prefix="opt/"
            )


def lowrank_spsa(
    oracle: Oracle, batch, objective, pert: dict[str, LowRank], mu: float, timer: Timer
) -> tuple[float, float, float]:
    """Central difference along ΔW = Q Pᵀ per layer (``pert``: layer -> LowRank); returns (f+, f-, g)."""
    with timer("forward"):
        f_plus = float(np.mean(oracle.sample_losses(batch, objective, {k: d.scaled(mu) for k, d in pert.items()})))
        f_minus = float(np.mean(oracle.sample_losses(batch, objective, {k: d.scaled(-mu) for k, d in pert.items()})))
    return f_plus, f_minus, (f_plus - f_minus) / (2 * mu)


class LowRankSPSA(ZOBase):
    """The step shared by LOZO and SubZero: per query, a central difference along ``perturbation(...)`` and a
    rank-r SGD update W -= η g ΔW (in place, or into the INT4 adapter). Subclasses define only the perturbation.

    All q queries are probed first and applied together, so a non-finite loss in any query skips the whole step
    (nothing half-applied)."""

    bases = frozenset({"fp32", "int4"})
    ports = frozenset({contract.PORTS_LOWRANK})
    direct_sgd = True
    not_federated = ""

    def init(self, oracle: Oracle, seed: int) -> None:
        check_export(type(self), oracle.manifest)
        self.seed = seed
        self._init_direct_sgd()

    def perturbation(self, oracle: Oracle, t: int, k: int) -> dict[str, LowRank]:
        raise NotImplementedError

    def probe(self, oracle: Oracle, batch, objective, t: int, timer: Timer | None = None) -> Probe:
        """Every query's central difference at the current W; nothing applied."""
        c = self.config
        timer = timer or Timer()
        gs, losses = [], []
        for k in range(c.queries):
            with timer("sample"):
                pert = self.perturbation(oracle, t, k)
            f_plus, f_minus, g = lowrank_spsa(oracle, batch, objective, pert, c.mu, timer)
            if not finite(f_plus, f_minus, g):
                return Probe(np.zeros(0), np.nan, 2 * (k + 1), skipped=True)
            gs.append(g)
            losses.append(0.5 * (f_plus + f_minus))
        return Probe(np.asarray(gs, np.float64), float(np.mean(losses)), 2 * c.queries)

    def replay(self, oracle: Oracle, t: int, scalars: np.ndarray, timer: Timer | None = None) -> bool:
        """W -= η g_k ΔW_k / q for each query (perturbations regenerated from (seed, t, k)); False: skipped."""
        c = self.config
        timer = timer or Timer()
        lr = self.direct_lr()
        if len(scalars) == 0 or not finite(lr * np.asarray(scalars)):
            return False
        with timer("update"):
            for k, g in enumerate(float(s) for s in scalars):
                for layer, delta in self.perturbation(oracle, t, k).items():
                    oracle.trained.apply_lowrank(layer, delta, -lr * g / c.queries)
        self.count_applied()
        return True

    def step(self, oracle: Oracle, batch, objective, t: int):
        timer = Timer()
        p = self.probe(oracle, batch, objective, t, timer)
        if p.skipped or not self.replay(oracle, t, p.scalars, timer):
            return timer.report(np.nan, np.nan, p.forwards, skipped=True)
        return timer.report(p.loss, np.mean(p.scalars), p.forwards)
