"""ZO-Act: activation-informed coefficients on a frozen (fp32 or INT4) base, trained forward-only with Adam.

Calibration, once: for each activation group g, the top-r principal directions A_g [d_in x r] of the layer inputs
over M calibration batches, by block power iteration over the whole calibration set through the graph's sketch
port (each round: Y = Σ_batches Xᵀ(X Ω), Ω ← qr(Y)), then a Rayleigh-Ritz step (eigh of Ωᵀ Σ XᵀX Ω) that keeps
the r directions of largest energy. Oversampling (r + 4 columns) and 2 rounds make the top-r subspace accurate
without the K-fold pass count of per-vector power iteration (Halko, Martinsson & Tropp, 2011).

Training: per targeted linear l, coefficients C_l [d_out x r], initialised at zero, so ΔW_l = C_l A_gᵀ and the
model starts exactly at its base. Only C is perturbed::

    Z_l ~ N(0, I) [d_out x r];   f± = L(C ± μZ) through the ports (P = A_g, Q = C_l ± μ Z_l)
    ĝ_C = (f+ − f−) / 2μ · Z;     C ← Adam(C, ĝ_C)

The perturbation dimension is Σ d_out·r (1.2M for SmolLM2 at r = 8), not the model size, and Adam's moments are
as small, which is what makes Adam affordable here. Base weights are never touched, so the same code runs on fp32
and on INT4 (MatMulNBits) graphs; ``zo-edge merge`` folds C Aᵀ into fp32 weights or ships it as an adapter.
Defaults: r = 8, M = 8 calibration batches, μ 1e-2, Adam lr 2e-3 (ours, tuned on SmolLM2-135M + Rotten Tomatoes:
coefficients start at 0 and are tiny, so the finite difference tolerates a larger μ than full-weight methods).

State: C and A live in the runtime's TrainedState as each layer's adapter (q = C_l, p = A_g), stepped in place
by Adam, so every later pass (evaluation included) sees them and checkpoints hold them once. The method's own
state is Adam's moments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime import contract, rng
from runtime.batch import Batch
from runtime.method import MethodError, Probe, check_export, register_method
from runtime.oracle import Objective, Oracle
from runtime.trained_state import LowRank
from zo_edge import optim
from zo_edge.methods.base import BaseConfig, Timer, ZOBase, finite, knob

__all__ = ["ZOAct", "ZOActConfig", "calibrate_bases", "sketch_sums"]


@dataclass
class ZOActConfig(BaseConfig):
    mu: float = knob(1e-2, "perturbation scale μ of the coefficients C")
    rank: int = knob(8, "directions r of each activation basis A_g (ΔW = C Aᵀ has rank r)")
    calib_batches: int = knob(8, "calibration batches drawn from the training data before step 0")
    calib_rounds: int = knob(2, "block power-iteration rounds over the calibration set")
    oversample: int = knob(4, "extra power-iteration columns beyond r (accuracy of the top-r subspace)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("calib_batches", "calib_rounds"):
            if getattr(self, name) < 1:
                raise MethodError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.oversample < 0:
            raise MethodError(f"--oversample must be >= 0, got {self.oversample}")


def sketch_sums(oracle: Oracle, batches: list[Batch], omega: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Σ over ``batches`` of Xᵀ(X Ω_g) per group, in float64: one calibration sweep (what a federated client sends)."""
    total = {g: np.zeros(w.shape, np.float64) for g, w in omega.items()}
    for b in batches:
        for g, s in oracle.sketches(b, {g: w.astype(np.float32) for g, w in omega.items()}).items():
            total[g] += s
    return total


def calibrate_bases(
    oracle: Oracle,
    batches: list[Batch],
    rank: int,
    *,
    rounds: int = 2,
    oversample: int = 4,
    seed: int = 0,
    sweep: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Top-``rank`` input directions per activation group over all ``batches`` ((rounds + 1) passes per batch).

    ``sweep`` replaces the local ``sketch_sums`` over ``batches`` (the federated server sums its clients')."""
    k = rank + oversample
    omega = {
        g.name: np.linalg.qr(rng.gaussian(seed, (g.d_in, min(k, g.d_in)), "zoact-omega", g.name))[0]
        for g in oracle.manifest.groups
    }
    sweep = sweep or (lambda om: sketch_sums(oracle, batches, om))

    for _ in range(rounds):
        omega = {g: np.linalg.qr(y)[0] for g, y in sweep(omega).items()}
    y = sweep(omega)
    bases = {}
    for g, q in omega.items():
        gram = q.T @ y[g]
        evals, evecs = np.linalg.eigh(0.5 * (gram + gram.T))
        top = np.argsort(evals)[::-1][:rank]
        bases[g] = np.ascontiguousarray(q @ evecs[:, top], np.float32)
    return bases


@register_method("zo-act")
class ZOAct(ZOBase):
    Config = ZOActConfig
    bases = frozenset({"fp32", "int4"})
    ports = frozenset({contract.PORTS_LOWRANK, contract.PORTS_PROBE})  # the C Aᵀ adapter; calibration's sketches
    needs_calibration = True
    changes_weights = False
    default_lr = 2e-3
    default_optimizer = "adam"
    optimizers = frozenset({"sgd", "adam"})
    not_federated = ""

    def init(self, oracle: Oracle, seed: int) -> None:
        check_export(type(self), oracle.manifest)
        self.seed = seed
        r = self.config.rank
        # C_l = 0, A_g = 0 until calibration: ΔW = 0, the model starts exactly at its base. Layers of one group
        # share their A array in this process.
        bases = {g.name: np.zeros((g.d_in, r), np.float32) for g in oracle.manifest.groups}
        for s in oracle.manifest.linears:
            oracle.trained.set_adapter(s.name, LowRank(q=np.zeros((s.d_out, r), np.float32), p=bases[s.group]))
        self.opt_state = self.optimizer.init(self.trainable(oracle))

    def calibrate(self, oracle: Oracle, batches: list[Batch]) -> None:
        if not batches:
            raise MethodError("zo-act needs calibration batches (its activation bases come from the data)")
        c = self.config
        bases = calibrate_bases(
            oracle, batches, c.rank, rounds=c.calib_rounds, oversample=c.oversample, seed=self.seed
        )
        self.set_bases(oracle, bases)

    def set_bases(self, oracle: Oracle, bases: dict[str, np.ndarray]) -> None:
        """Install the activation bases A_g (from ``calibrate``, or sent by a federated server)."""
        for s in oracle.manifest.linears:
            oracle.trained.adapters[s.name].p[...] = bases[s.group]

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]:
        """The coefficients C_l (the adapters' q), stepped in place by the optimizer."""
        return {s.name: oracle.trained.adapters[s.name].q for s in oracle.manifest.linears}

    def _z(self, oracle: Oracle, t: int, k: int) -> dict[str, np.ndarray]:
        """Z_l of query k at step t, per targeted linear: a pure function of (seed, t, k, layer)."""
        r = self.config.rank
        layers = oracle.manifest.linears
        return {s.name: rng.gaussian(self.seed, (s.d_out, r), "zoact-Z", t, k, s.name) for s in layers}

    def probe(self, oracle: Oracle, batch: Batch, objective: Objective, t: int, timer: Timer | None = None) -> Probe:
        """f± of every query at the current C; nothing applied."""
        c = self.config
        timer = timer or Timer()
        gs, losses = [], []
        for k in range(c.queries):
            with timer("sample"):
                z = self._z(oracle, t, k)
            with timer("forward"):
                adapters = oracle.trained.adapters
                pert = {n: LowRank(q=v, p=adapters[n].p) for n, v in z.items()}
                f_plus = float(
                    np.mean(oracle.sample_losses(batch, objective, {n: d.scaled(c.mu) for n, d in pert.items()}))
                )
                f_minus = float(
                    np.mean(oracle.sample_losses(batch, objective, {n: d.scaled(-c.mu) for n, d in pert.items()}))
                )
            if not finite(f_plus, f_minus):
                return Probe(np.zeros(0), np.nan, 2 * (k + 1), skipped=True)
            gs.append((f_plus - f_minus) / (2 * c.mu))
            losses.append(0.5 * (f_plus + f_minus))
        return Probe(np.asarray(gs, np.float64), float(np.mean(losses)), 2 * c.queries)

    def replay(self, oracle: Oracle, t: int, scalars: np.ndarray, timer: Timer | None = None) -> bool:
        """C <- optimizer(C, Σ_k g_k Z_k / q), Z_k regenerated from (seed, t, k); False: skipped."""
        c = self.config
        timer = timer or Timer()
        if len(scalars) == 0:
            return False
        grads: dict[str, np.ndarray] = {}
        for k, g in enumerate(float(s) for s in scalars):
            with timer("sample"):
                z = self._z(oracle, t, k)
            for key, v in z.items():
                if key in grads:
                    grads[key] += (g / c.queries) * v
                else:
                    grads[key] = (g / c.queries) * v
        with timer("update"):
            params = self.trainable(oracle)
            deltas, self.opt_state = self.optimizer.update(grads, self.opt_state, params)
            if not all(finite(d) for d in deltas.values()):
                return False
            optim.apply_updates(params, deltas)
        return True

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int):
        timer = Timer()
        p = self.probe(oracle, batch, objective, t, timer)
        if p.skipped:
            return timer.report(np.nan, np.nan, p.forwards, skipped=True)
        if not self.replay(oracle, t, p.scalars, timer):
            return timer.report(p.loss, np.nan, p.forwards, skipped=True)
        return timer.report(p.loss, np.mean(p.scalars), p.forwards)
