"""MeZO: SPSA over every trainable tensor, in place, from a regenerated seed (Malladi et al., 2023, arXiv 2305.17333).

Per query k of step t, with z ~ N(0, I) over all parameters drawn from ``rng.stream(seed, t, k, name)``::

    θ += μ z;  f+ = L(θ)         (z regenerated per tensor, never stored: memory stays at inference level)
    θ -= 2μ z; f- = L(θ)
    g  = (f+ - f-) / 2μ
    θ += μ z;  θ ← optimizer(θ, grad = g z / q)   (restore and update share one regeneration)

Three regenerations of z per query (the restore and the update share one); on SmolLM2-135M drawing 135M normals
dominates the step, so z is drawn in parallel chunks, and ``dist="rademacher"`` makes it ~5x cheaper (see
benchmarks). One tensor-sized temporary exists at a time (the embedding's, 113 MB, is the largest).
Paper defaults (its repo): lr 1e-6, μ 1e-3, batch 16, SGD; weight decay enters as θ −= η(g z + λθ).
Model-sized optimizer state is refused beyond momentum (Adam would cost 8 bytes per parameter); a small selection
(``--layers head``, a few blocks' norms: state under ``SMALL_STATE`` of the model's bytes) may use Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import contract, rng
from runtime.batch import Batch
from runtime.method import MethodError, Probe, check_export, register_method
from runtime.oracle import Objective, Oracle
from zo_edge import optim
from zo_edge.methods.base import BaseConfig, Timer, ZOBase, finite, knob

__all__ = ["SMALL_STATE", "MeZO", "MeZOConfig"]

#: optimizer state always allowed, as a fraction of the model's weight bytes (Adam on 2.5% of the values)
SMALL_STATE = 0.05


@dataclass
class MeZOConfig(BaseConfig):
    kinds: str = knob(
        "all", 'parameter kinds perturbed, comma-separated (linear, bias, norm, embedding; "all" = every bound tensor)'
    )
    # Rademacher (±1, classic SPSA) has the same E[z zᵀ] = I, lower estimator variance, and is about 5x cheaper to
    # draw, which matters because drawing z dominates a MeZO step.
    dist: str = knob("gaussian", 'distribution of z: "gaussian" (the paper\'s) or "rademacher" (±1, ~5x cheaper)')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dist not in ("gaussian", "rademacher"):
            raise MethodError(f"--dist must be gaussian or rademacher, got {self.dist!r}")


@register_method("mezo")
class MeZO(ZOBase):
    Config = MeZOConfig
    # INT4: only its float tensors are bound (the norms' gains: export/quantize.py), so only those can move, and
    # only when the user names them (init): the head recipe's ``--layers head --kinds norm``
    bases = frozenset({"fp32", "int4"})
    # Adam only where its moments are small (init's budget check): a --layers head / few-norms selection
    optimizers = frozenset({"sgd", "adam"})
    not_federated = ""

    def init(self, oracle: Oracle, seed: int) -> None:
        check_export(type(self), oracle.manifest)
        self.seed = seed
        kinds = {p.name: p.kind for p in oracle.manifest.params}
        wanted = None if self.config.kinds == "all" else set(self.config.kinds.split(","))
        if wanted is not None and not wanted & set(kinds.values()):
            raise MethodError(
                f"--kinds {self.config.kinds!r} names none of this model's parameter kinds "
                f"({', '.join(sorted(set(kinds.values())))})"
            )
        if oracle.manifest.dtype != "fp32" and (wanted is None or wanted - {contract.KIND_NORM}):
            raise MethodError(
                f"mezo on an {oracle.manifest.dtype} base can move only its float norms' gains (its linear weights "
                "are quantized); pass --kinds norm (with --layers head: the head recipe), or train an adapter "
                "with lozo, subzero, agzo or zo-act"
            )
        # the manifest the oracle shows: every param, or only the trained blocks' (--layers)
        self.names = [p.name for p in oracle.manifest.params if wanted is None or p.kind in wanted]
        # Probe the optimizer's state size on one value before allocating it for the whole model: momentum (4 B per
        # value, 1x the model) is allowed, Adam (8 B, 2x) is refused with its cost named — unless the trained
        # selection is small (``--layers head``: the final norm's 576 values), where Adam's moments cost nothing.
        per_value = optim.state_nbytes(self.optimizer.init({"probe": np.zeros(1024, np.float32)})) // 1024
        n_values = sum(oracle.params[k].size for k in self.names)
        model_bytes = sum(v.nbytes for v in oracle.params.values())
        optim.check_state_budget(
            "full-space optimizer state", n_values, per_value, max(4 * n_values, int(SMALL_STATE * model_bytes))
        )
        self.opt_state = self.optimizer.init({k: oracle.params[k] for k in self.names})
        self._scratch: np.ndarray | None = None
        #: the round whose ±μ round trip ``probe`` last left in θ (federated replay must not retrace it twice)
        self._probed: int | None = None

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]:
        return {k: oracle.params[k] for k in self.names}

    def _z(self, t: int, k: int, name: str, shape) -> np.ndarray:
        """z for one tensor, regenerated from (seed, t, k, name); filled in parallel chunks (runtime.rng.fill).

        Written into one reused scratch buffer (the largest tensor's size): a fresh 100 MB allocation per tensor
        and draw page-faults its way in, which cost about a quarter of the sampling time."""
        size = int(np.prod(shape))
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(size, np.float32)
        z = self._scratch[:size].reshape(shape)
        return rng.fill(z, self.seed, t, k, name, dist=self.config.dist)

    def _perturb(self, oracle: Oracle, t: int, k: int, scale: float, timer: Timer) -> None:
        for name in self.names:
            with timer("sample"):
                z = self._z(t, k, name, oracle.params[name].shape)
            with timer("update"):
                oracle.trained.apply_dense(name, scale, z)

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int) -> object:
        mu, q = self.config.mu, self.config.queries
        timer = Timer()
        gs, losses, skipped = [], [], False
        for k in range(q):
            self._perturb(oracle, t, k, mu, timer)
            with timer("forward"):
                f_plus = objective_mean(oracle, batch, objective)
            self._perturb(oracle, t, k, -2 * mu, timer)
            with timer("forward"):
                f_minus = objective_mean(oracle, batch, objective)
            g = (f_plus - f_minus) / (2 * mu)
            ok = finite(f_plus, f_minus)
            skipped |= not ok
            # restore θ, then (if the losses were finite) step along g z with the same regenerated z
            for name in self.names:
                with timer("sample"):
                    z = self._z(t, k, name, oracle.params[name].shape)
                with timer("update"):
                    oracle.trained.apply_dense(name, mu, z)
                    if ok:
                        self._descend(oracle, name, z, g / q)
            gs.append(g)
            losses.append(0.5 * (f_plus + f_minus))
        return timer.report(np.mean(losses), np.mean(gs) if not skipped else np.nan, 2 * q, skipped)

    def _descend(self, oracle: Oracle, name: str, z: np.ndarray, scale: float) -> None:
        """θ_name ← optimizer(θ_name, grad = scale·z) (z is overwritten)."""
        z *= np.float32(scale)
        deltas, self.opt_state = self.optimizer.update({name: z}, self.opt_state, oracle.params)
        oracle.trained.apply_dense(name, 1.0, deltas[name])

    @classmethod
    def updates_per_step(cls, config: MeZOConfig) -> int:
        """q: each query steps the optimizer (so a schedule over --steps spans steps x q updates)."""
        return config.queries

    def probe(self, oracle: Oracle, batch: Batch, objective: Objective, r: int, timer: Timer | None = None) -> Probe:
        """Round r = query k of step t (r = t·q + k): θ ± μz and back through ``step``'s own in-place ops (θ keeps
        their rounding drift, as in ``step``)."""
        t, k = divmod(r, self.config.queries)
        mu, timer = self.config.mu, timer or Timer()
        self._perturb(oracle, t, k, mu, timer)
        with timer("forward"):
            f_plus = objective_mean(oracle, batch, objective)
        self._perturb(oracle, t, k, -2 * mu, timer)
        with timer("forward"):
            f_minus = objective_mean(oracle, batch, objective)
        self._perturb(oracle, t, k, mu, timer)
        self._probed = r  # θ already went through this query's ±μ round trip (its bits drift by rounding)
        if not finite(f_plus, f_minus):
            return Probe(np.zeros(0), np.nan, 2, skipped=True)
        return Probe(np.array([(f_plus - f_minus) / (2 * mu)]), 0.5 * (f_plus + f_minus), 2)

    def replay(self, oracle: Oracle, r: int, scalars: np.ndarray, timer: Timer | None = None) -> bool:
        """``step``'s update for query k of step t (r = t·q + k) along (g / q) z, z regenerated per tensor from
        (seed, t, k). A replica that did not probe round r first retraces the probe's θ ± μz round trip without
        forwards: ``step`` leaves those rounding bits in θ, so every replica must (empty ``scalars``: a skipped
        query, the round trip only)."""
        q = self.config.queries
        t, k = divmod(r, q)
        timer = timer or Timer()
        if self._probed != r:
            for scale in (self.config.mu, -2 * self.config.mu, self.config.mu):
                self._perturb(oracle, t, k, scale, timer)
        self._probed = None
        if len(scalars) != 1 or not finite(scalars):
            return False
        for name in self.names:
            with timer("sample"):
                z = self._z(t, k, name, oracle.params[name].shape)
            with timer("update"):
                self._descend(oracle, name, z, float(scalars[0]) / q)  # step's g / q
        return True


def objective_mean(oracle: Oracle, batch: Batch, objective: Objective) -> float:
    return float(np.mean(oracle.sample_losses(batch, objective)))
