"""TrainedState: what training changed on top of the exported base, owned by the runtime (not by the Oracle).

Two forms, chosen by the base and the provider, never by the method:

* **folded** (fp32 base on the CPU provider): updates are written into the bound weights in place (BLAS), seen by
  the next forward with no copy; ``params`` then IS the trained model;
* **adapter** (INT4 base: frozen MatMulNBits initializers; a device provider, whose bound copy lives in device
  memory; or ``fold=False``): a per-layer low-rank ``LowRank`` ΔW = Q Pᵀ fed through the graph's P/Q ports on every
  pass. Accumulated updates are recompressed by a truncated SVD above ``adapter_rank`` columns: exact while the
  accumulated rank fits, the best rank-``adapter_rank`` approximation beyond.

A method may also own an adapter's arrays outright (ZO-Act's coefficients C and basis A: ΔW = C Aᵀ) by
``set_adapter``; the optimizer then steps ``adapters[layer].q`` in place and every later pass sees it.

One factor order everywhere: ``LowRank(q=[d_out, k], p=[d_in, k])``, ΔW = Q Pᵀ (HF orientation [d_out, d_in]).
Checkpoint array names come from ``runtime.contract`` (one place), and ``check_finite`` is what the loop calls
before anything is saved: no non-finite value is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import contract
from runtime.contract import LinearSpec
from runtime.errors import ZoEdgeError
from runtime.params import add_dense, add_lowrank

__all__ = ["LowRank", "NonFiniteState", "TrainedState"]


class NonFiniteState(ZoEdgeError):
    """Trained state holds NaN/inf (an update blew up, or a run folder was corrupted)."""


@dataclass
class LowRank:
    """ΔW = Q Pᵀ kept as factors: ``q`` [d_out, k], ``p`` [d_in, k]. Also the form of a low-rank perturbation."""

    q: np.ndarray
    p: np.ndarray

    def __post_init__(self) -> None:
        assert self.q.ndim == 2 and self.p.ndim == 2 and self.q.shape[1] == self.p.shape[1], (
            f"LowRank factors must be q [d_out, k], p [d_in, k]; got {self.q.shape}, {self.p.shape}"
        )

    @classmethod
    def empty(cls, spec: LinearSpec) -> LowRank:
        return cls(q=np.zeros((spec.d_out, 0), np.float32), p=np.zeros((spec.d_in, 0), np.float32))

    @property
    def rank(self) -> int:
        return self.q.shape[1]

    def scaled(self, alpha: float) -> LowRank:
        """alpha·ΔW, sharing P (a ± perturbation feed costs one scaled copy of the small Q side)."""
        return LowRank(q=np.float32(alpha) * self.q, p=self.p)

    def dense(self) -> np.ndarray:
        """ΔW [d_out, d_in] (tests and merge; never on the training path)."""
        return self.q.astype(np.float64) @ self.p.astype(np.float64).T

    def add(self, delta: LowRank, alpha: float, max_rank: int) -> None:
        self.q = np.concatenate([self.q, (alpha * delta.q).astype(np.float32)], axis=1)
        self.p = np.concatenate([self.p, delta.p.astype(np.float32)], axis=1)
        if self.rank > max_rank:
            self.compress(max_rank)

    def compress(self, rank: int) -> None:
        """Best rank-``rank`` approximation of Q Pᵀ: QR of each side, then an SVD of the small core."""
        qa, ra = np.linalg.qr(self.q.astype(np.float64))
        qb, rb = np.linalg.qr(self.p.astype(np.float64))
        u, s, vt = np.linalg.svd(ra @ rb.T, full_matrices=False)
        rank = min(rank, s.size)  # ΔW has rank <= min(d_out, d_in): a larger budget keeps it exact
        self.q = (qa @ (u[:, :rank] * s[:rank])).astype(np.float32)
        self.p = (qb @ vt[:rank].T).astype(np.float32)


class TrainedState:
    """Folded weights and/or per-layer adapters: the single store of everything a run trained."""

    def __init__(
        self,
        params: dict[str, np.ndarray],
        linears: list[LinearSpec],
        *,
        fold: bool,
        adapter_rank: int = 64,
        device: str = "cpu",
    ) -> None:
        if fold and not params:
            raise ZoEdgeError("fold=True needs an fp32 export: INT4 base weights are frozen initializers")
        self.params = params  # the session's bound arrays: updated in place, never replaced
        self.linears = {s.name: s for s in linears}
        self.fold = fold
        self.adapter_rank = adapter_rank
        self.device = device
        self.adapters: dict[str, LowRank] = {}

    # --- updates ------------------------------------------------------------------------------------------
    def apply_lowrank(self, layer: str, delta: LowRank, alpha: float) -> None:
        """ΔW_layer += alpha Q Pᵀ: in place when folding, else into the layer's adapter."""
        spec = self.linears[layer]
        if self.fold:
            add_lowrank(self.params[spec.weight], delta.q, delta.p, alpha)
        else:
            self.adapters.setdefault(layer, LowRank.empty(spec)).add(delta, alpha, self.adapter_rank)

    def apply_dense(self, key: str, alpha: float, x: np.ndarray, at: slice | None = None) -> None:
        """param += alpha x in place (full-space methods; needs bound fp32 params on the CPU provider).

        ``at``: a slice of the param's flattened elements that ``x`` covers (MeZO applies z slab by slab)."""
        if key not in self.params:
            raise ZoEdgeError(f"{key} is not a bound fp32 parameter; full-space updates need an fp32 export")
        if self.device != "cpu":
            # The bound copy lives in device memory: a host update would be invisible, and re-uploading would move
            # the whole model across the bus every step. Low-rank methods train an adapter there instead.
            raise ZoEdgeError(
                f"full-space updates (mezo, zoop) run on the CPU provider only, not {self.device}; "
                "use a low-rank method (zo-act, agzo, lozo, subzero), whose adapter is fed per pass"
            )
        param = self.params[key]
        add_dense(param if at is None else param.reshape(-1)[at], alpha, x)

    def set_adapter(self, layer: str, adapter: LowRank) -> None:
        """Make ``adapter`` (arrays a method owns and steps in place) the layer's adapter."""
        spec = self.linears[layer]
        assert adapter.q.shape[0] == spec.d_out and adapter.p.shape[0] == spec.d_in, f"{layer}: adapter shape"
        self.adapters[layer] = adapter

    # --- feeds --------------------------------------------------------------------------------------------
    def feeds(self, perturbation: dict[str, LowRank] | None = None) -> dict[str, np.ndarray]:
        """P/Q port feeds: each layer's adapter, concatenated with the perturbation's factors where both exist."""
        out: dict[str, np.ndarray] = {}
        perturbation = perturbation or {}
        for layer in set(self.adapters) | set(perturbation):
            parts = [a for a in (self.adapters.get(layer), perturbation.get(layer)) if a is not None and a.rank]
            if not parts:
                continue
            out[contract.port_p(layer)] = parts[0].p if len(parts) == 1 else np.concatenate([a.p for a in parts], 1)
            out[contract.port_q(layer)] = parts[0].q if len(parts) == 1 else np.concatenate([a.q for a in parts], 1)
        return out

    # --- checkpoints --------------------------------------------------------------------------------------
    def arrays(self, *, include_params: bool) -> dict[str, np.ndarray]:
        """What a checkpoint holds of the trained state (params only for methods that change the weights)."""
        out = {}
        for layer, a in self.adapters.items():
            out[contract.adapter_q_name(layer)] = a.q
            out[contract.adapter_p_name(layer)] = a.p
        if include_params:
            out.update({contract.checkpoint_param_name(k): v for k, v in self.params.items()})
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore from ``arrays()`` output: params in place (the bound buffers stay bound), adapters replaced."""
        adapters: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            param = contract.parse_checkpoint_param_name(key)
            if param is not None:
                if param not in self.params or self.params[param].shape != value.shape or value.dtype.kind != "f":
                    raise ZoEdgeError(
                        f"checkpoint array {key} {value.shape} does not match this model; was the run made on "
                        "another model?"
                    )
                self.params[param][...] = value
                continue
            parsed = contract.parse_adapter_name(key)
            if parsed is not None:
                adapters.setdefault(parsed[0], {})[parsed[1]] = value
        self.adapters = {}
        for layer, qp in adapters.items():
            spec = self.linears.get(layer)
            q, p = qp.get("q"), qp.get("p")
            if (
                spec is None
                or q is None
                or p is None
                or q.ndim != 2
                or p.ndim != 2
                or q.shape != (spec.d_out, p.shape[1])
                or p.shape[0] != spec.d_in
                or q.dtype.kind != "f"
                or p.dtype.kind != "f"
            ):
                raise ZoEdgeError(f"checkpoint adapter for {layer!r} does not match this model's layers")
            self.adapters[layer] = LowRank(q=np.array(q, np.float32), p=np.array(p, np.float32))

    def check_finite(self, what: str = "trained state") -> None:
        """Raise NonFiniteState naming the first non-finite array (cheap: one pass, no copies)."""
        for name, a in self.arrays(include_params=self.fold).items():
            if not np.isfinite(a).all():
                raise NonFiniteState(f"{what}: {name} holds NaN/inf; lower the learning rate or mu")
