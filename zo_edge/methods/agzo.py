"""AGZO: activation-guided ZO, perturbing along the batch's top activation directions (arXiv 2601.17261).

The gradient of a linear layer is Σ_tokens δ xᵀ: its rows live in the span of the layer's input activations.
AGZO perturbs only inside that span. Per step t, for each targeted linear l of activation group g(l)::

    pass 1 (unperturbed, with probes): f0 and A_g [d_in x r] = top-r right singular vectors of the batch's real-token
           activations X_g, by K power iterations inside the graph (K = export's --power-iters, 3 by default)
    R_l ~ N(0, I) [d_out x r];  ΔW_l = R_l A_gᵀ
    pass 2: f+ = L(W + μΔW);   g = (f+ − f0) / μ          (forward difference: two passes per step, as the paper)
    W_l ← W_l − η g R_l A_gᵀ                            (rank-r, in place)

The power iteration starts from the previous step's basis (a warm start; the state holds it, so resume is exact),
which is why K = 3 suffices: consecutive batches' activation subspaces are close. Defaults: r = 1 (the paper's; the
export's --basis-rank fixes r), μ 1e-3.

Non-linear-weight parameters (norms, embeddings, biases) stay frozen: their gradient has no activation structure to
exploit, and MeZO-style Gaussian perturbation of them would add its full-space variance back into every step.
(That is our decision; the paper tunes linear layers.) INT4 bases train in adapter form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from runtime import contract, rng
from runtime.batch import Batch
from runtime.method import MethodError, check_export, register_method
from runtime.oracle import Objective, Oracle
from runtime.trained_state import LowRank
from zo_edge.methods.base import BaseConfig, Timer, ZOBase, finite, knob

__all__ = ["AGZO", "AGZOConfig"]


@dataclass
class AGZOConfig(BaseConfig):
    # One name for AGZO's rank: the graph's power-iteration basis rank (export --basis-rank) decides it.
    rank: int = knob(0, "rank of the activation basis; 0 = the exported graph's --basis-rank (the only one it has)")
    min_rank: ClassVar[int] = 0


@register_method("agzo")
class AGZO(ZOBase):
    Config = AGZOConfig
    bases = frozenset({"fp32", "int4"})
    ports = frozenset({contract.PORTS_LOWRANK, contract.PORTS_PROBE})  # P/Q, and each step's in-graph bases
    default_lr = 1e-4
    direct_sgd = True
    not_federated = (
        "its perturbation lies along each batch's own top activation directions, so every round would ship client-"
        "data-dependent d_in x r bases per layer group; federate zo-act (one basis, summed once) or lozo instead"
    )

    def init(self, oracle: Oracle, seed: int) -> None:
        check_export(type(self), oracle.manifest)
        if self.config.rank == 0:
            self.config.rank = oracle.manifest.basis_rank
        if oracle.manifest.basis_rank != self.config.rank:
            raise MethodError(
                f"agzo rank {self.config.rank} differs from the graph's basis rank {oracle.manifest.basis_rank}; "
                f"re-export with --basis-rank {self.config.rank} or pass --rank {oracle.manifest.basis_rank}"
            )
        self.seed = seed
        # start vectors of the in-graph power iteration; replaced by each step's basis (warm start)
        self.state = {
            f"omega::{g.name}": rng.gaussian(seed, (g.d_in, self.config.rank), "agzo-omega", g.name)
            for g in oracle.manifest.groups
        }
        self._init_direct_sgd()

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int):
        c = self.config
        timer = Timer()
        lr = self.direct_lr()
        omega = {g.name: self.state[f"omega::{g.name}"] for g in oracle.manifest.groups}
        with timer("forward"):
            losses0, bases = oracle.losses_and_bases(batch, omega, objective)
        f0 = float(np.mean(losses0))
        if not finite(f0) or not all(finite(b) for b in bases.values()):
            return timer.report(np.nan, np.nan, 1, skipped=True)
        for g, a in bases.items():
            self.state[f"omega::{g}"][...] = a
        # all queries are measured at the same point (f0's), then their updates are applied together
        gs, perts = [], []
        for k in range(c.queries):
            with timer("sample"):
                pert = {
                    spec.name: LowRank(
                        q=rng.gaussian(self.seed, (spec.d_out, c.rank), "agzo-R", t, k, spec.name),
                        p=bases[spec.group],
                    )
                    for spec in oracle.manifest.linears
                }
            with timer("forward"):
                scaled = {n: d.scaled(c.mu) for n, d in pert.items()}
                f_plus = float(np.mean(oracle.sample_losses(batch, objective, scaled)))
            if not finite(f_plus, lr * (f_plus - f0) / c.mu):
                return timer.report(f0, np.nan, 2 + k, skipped=True)
            gs.append((f_plus - f0) / c.mu)
            perts.append(pert)
        with timer("update"):
            for g, pert in zip(gs, perts, strict=True):
                for layer, delta in pert.items():
                    oracle.trained.apply_lowrank(layer, delta, -lr * g / c.queries)
        self.count_applied()
        return timer.report(f0, np.mean(gs), 1 + c.queries)
