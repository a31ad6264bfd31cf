"""MeZO: SPSA over every trainable tensor, in place, from a regenerated seed (Malladi et al., 2023, arXiv 2305.17333).

Per query k of step t, with z ~ N(0, I) over all parameters drawn from ``rng.stream(seed, t, k, name)``::

    θ += μ z;  f+ = L(θ)         (z regenerated per tensor, never stored: memory stays at inference level)
    θ -= 2μ z; f- = L(θ)
    g  = (f+ - f-) / 2μ
    θ += μ z;  θ ← optimizer(θ, grad = g z / q)   (restore and update share one regeneration)

Three regenerations of z per query (the restore and the update share one); on SmolLM2-135M drawing 135M normals
dominates the step, so z is drawn in parallel chunks, and ``dist="rademacher"`` makes it ~5x cheaper (see
benchmarks). z is drawn and applied in slabs of ``SLAB_CHUNKS`` whole RNG chunks (``rng.fill``'s ``first_chunk``;
the optimizer updates a slab through ``optim.state_slice``): one 16 MiB scratch, where a whole-tensor buffer was
the largest tensor's size (Qwen2.5-0.5B's tied table: 0.51 GiB, a quarter of the forward's peak). The slabs give
the same numbers as whole tensors, bit for bit.
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

__all__ = ["SLAB_CHUNKS", "SMALL_STATE", "MeZO", "MeZOConfig"]

#: z is drawn and applied per slab of this many ``rng.CHUNK`` chunks (16 x 2^18 values = 16 MiB of float32): every
#: linear of a 0.5B model fits in one, and the embedding streams through; enough chunks for rng.fill's threads
SLAB_CHUNKS = 16

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

    @staticmethod
    def _slabs(size: int) -> list[slice]:
        """The flattened tensor's slabs: whole RNG chunks, so a slab's z is that part of the tensor's z."""
        step = SLAB_CHUNKS * rng.CHUNK
        return [slice(a, min(a + step, size)) for a in range(0, size, step)]

    def _z(self, t: int, k: int, name: str, elements: slice) -> np.ndarray:
        """Elements ``elements`` (a slab) of one tensor's flattened z, regenerated from (seed, t, k, name); filled in
        parallel chunks (runtime.rng.fill).

        Written into one reused scratch buffer (a slab's size): a fresh allocation per tensor and draw page-faults
        its way in, which cost about a quarter of the sampling time."""
        size = elements.stop - elements.start
        if self._scratch is None or self._scratch.size < size:
            self._scratch = np.empty(size, np.float32)
        first_chunk, rest = divmod(elements.start, rng.CHUNK)
        assert rest == 0, "a slab starts at a chunk boundary"
        return rng.fill(self._scratch[:size], self.seed, t, k, name, dist=self.config.dist, first_chunk=first_chunk)

    def _perturb(self, oracle: Oracle, t: int, k: int, scale: float, timer: Timer) -> None:
        for name in self.names:
            for part in self._slabs(oracle.params[name].size):
                with timer("sample"):
                    z = self._z(t, k, name, part)
                with timer("update"):
                    oracle.trained.apply_dense(name, scale, z, at=part)

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
                for part in self._slabs(oracle.params[name].size):
                    with timer("sample"):
                        z = self._z(t, k, name, part)
                    with timer("update"):
                        oracle.trained.apply_dense(name, mu, z, at=part)
                        if ok:
                            self._descend(oracle, name, part, z, g / q)
            gs.append(g)
            losses.append(0.5 * (f_plus + f_minus))
        return timer.report(np.mean(losses), np.mean(gs) if not skipped else np.nan, 2 * q, skipped)

    def _descend(self, oracle: Oracle, name: str, part: slice, z: np.ndarray, scale: float) -> None:
        """θ_name[part] ← optimizer(θ_name[part], grad = scale·z) (z, the slab's, is overwritten).

        The optimizer sees the slab's views of its state (``optim.state_slice``); the last slab moves the step
        counts on, so the slabs of a tensor make one update of it, in place in ``self.opt_state``."""
        z *= np.float32(scale)
        flat = oracle.params[name].reshape(-1)
        state = optim.state_slice(self.opt_state, name, part, advance=part.stop == flat.size)
        deltas, _ = self.optimizer.update({name: z}, state, {name: flat[part]})
        oracle.trained.apply_dense(name, 1.0, deltas[name], at=part)

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
            for part in self._slabs(oracle.params[name].size):
                with timer("sample"):
                    z = self._z(t, k, name, part)
                with timer("update"):
                    self._descend(oracle, name, part, z, float(scalars[0]) / q)  # step's g / q
        return True


def objective_mean(oracle: Oracle, batch: Batch, objective: Objective) -> float:
    return float(np.mean(oracle.sample_losses(batch, objective)))
