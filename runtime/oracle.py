"""The oracle a ZO method talks to: per-sample losses for given port feeds, activation probes, and weight updates.

Methods never touch onnxruntime. They ask for losses under a low-rank perturbation ``{layer: (P, Q)}`` (ΔW = Q Pᵀ,
HF orientation), under output noise (Zoop), or for the activation bases/sketches/rows of the current batch, and
they apply updates through ``apply_lowrank`` / ``apply_dense``. Where the update lands depends on the base:

* fp32 base on CPU: folded into the bound weights in place (BLAS), seen by the next forward;
* INT4 base (frozen MatMulNBits weights), a device provider (CUDA, NPU: the weights live in device memory, and
  a host-side update would have to re-upload the model every step), or ``fold=False``: accumulated into a
  per-layer low-rank *adapter* (Σ Q_k P_kᵀ) that is fed through the same P/Q ports on every pass, concatenated
  with the perturbation. Above ``adapter_rank`` columns the adapter is recompressed by a truncated SVD of its
  factors (QR of each side + an r x r SVD): exact while the accumulated rank fits, the best
  rank-``adapter_rank`` approximation beyond.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.contract import LinearSpec, Manifest
from runtime.params import add_dense, add_lowrank
from runtime.session import GraphSession

__all__ = ["LowRankAdapter", "Objective", "Oracle", "lm_objective", "rayleigh_ritz"]

#: maps the graph's (row_nll, row_count) to per-sample losses; the batch loss is their mean
Objective = Callable[[np.ndarray, np.ndarray], np.ndarray]


def lm_objective(row_nll: np.ndarray, row_count: np.ndarray) -> np.ndarray:
    """Token-mean NLL of each row (rows without targets count 0)."""
    return np.asarray(row_nll, np.float64) / np.maximum(np.asarray(row_count, np.float64), 1.0)


def rayleigh_ritz(basis: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate an orthonormal basis V [d, r] into individual principal directions, by energy, descending.

    ``gram`` = (X V)ᵀ (X V); its eigenvectors rotate V within its span (ONNX has no eig op, so this r x r step
    runs here). Returns (directions [d, r], energies [r]).
    """
    if basis.shape[1] == 1:
        return basis, np.diag(gram).copy()
    evals, evecs = np.linalg.eigh(gram.astype(np.float64))
    order = np.argsort(evals)[::-1]
    return (basis.astype(np.float64) @ evecs[:, order]).astype(np.float32), evals[order]


@dataclass
class LowRankAdapter:
    """ΔW = Q Pᵀ kept as factors Q [d_out, k], P [d_in, k]."""

    q: np.ndarray
    p: np.ndarray

    @classmethod
    def empty(cls, spec: LinearSpec) -> LowRankAdapter:
        return cls(np.zeros((spec.d_out, 0), np.float32), np.zeros((spec.d_in, 0), np.float32))

    @property
    def rank(self) -> int:
        return self.q.shape[1]

    def add(self, q: np.ndarray, p: np.ndarray, alpha: float, max_rank: int) -> None:
        self.q = np.concatenate([self.q, (alpha * q).astype(np.float32)], axis=1)
        self.p = np.concatenate([self.p, p.astype(np.float32)], axis=1)
        if self.rank > max_rank:
            self.compress(max_rank)

    def compress(self, rank: int) -> None:
        qa, ra = np.linalg.qr(self.q.astype(np.float64))
        qb, rb = np.linalg.qr(self.p.astype(np.float64))
        u, s, vt = np.linalg.svd(ra @ rb.T, full_matrices=False)
        rank = min(rank, s.size)  # ΔW has rank <= min(d_out, d_in): a larger budget keeps it exact
        self.q = (qa @ (u[:, :rank] * s[:rank])).astype(np.float32)
        self.p = (qb @ vt[:rank].T).astype(np.float32)


class Oracle:
    """Losses and probes of one GraphSession, plus where updates go (in place, or an adapter)."""

    def __init__(
        self, session: GraphSession, *, fold: bool | None = None, adapter_rank: int = 64, micro_batch: int = 0
    ) -> None:
        if micro_batch < 0:
            raise ValueError(f"micro_batch must be >= 0 (0: whole batch per pass), got {micro_batch}")
        self.session = session
        #: rows per onnxruntime pass for loss-only forwards (0: the whole batch in one pass). A row's loss does not
        #: depend on the other rows, so a batch can be cut into row chunks (each trimmed of its all-padding columns)
        #: and the per-row outputs concatenated: the result is the same up to float reassociation, and activation
        #: memory, which grows with B x T² in the unfused attention, follows the micro-batch instead of the batch.
        #: Passes that fetch probes (bases, sketches, activation rows) or feed per-token noise run whole: their
        #: outputs are sums over the batch's tokens or indexed by flat token position.
        self.micro_batch = micro_batch
        self.manifest: Manifest = session.manifest
        self.params = session.params
        self.linears = {s.name: s for s in self.manifest.linears}
        self.fold = (self.manifest.dtype == "fp32" and session.device == "cpu") if fold is None else fold
        if self.fold and self.manifest.dtype != "fp32":
            raise ValueError("fold=True needs an fp32 export: INT4 base weights are frozen initializers")
        self.adapter_rank = adapter_rank
        self.adapters: dict[str, LowRankAdapter] = {}
        self.forwards = 0

    # --- losses -------------------------------------------------------------------------------------------
    def _feeds(
        self, lowrank: dict[str, tuple[np.ndarray, np.ndarray]] | None, noise: dict[str, np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        names = set(self.adapters) | set(lowrank or {})
        for layer in names:
            ps, qs = [], []
            if layer in self.adapters and self.adapters[layer].rank:
                ps.append(self.adapters[layer].p)
                qs.append(self.adapters[layer].q)
            if lowrank and layer in lowrank:
                p, q = lowrank[layer]
                ps.append(p)
                qs.append(q)
            if ps:
                feeds[contract.port_p(layer)] = ps[0] if len(ps) == 1 else np.concatenate(ps, axis=1)
                feeds[contract.port_q(layer)] = qs[0] if len(qs) == 1 else np.concatenate(qs, axis=1)
        for layer, xi in (noise or {}).items():
            feeds[contract.port_noise(layer)] = xi
        return feeds

    def run(
        self,
        batch: Batch,
        lowrank: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        noise: dict[str, np.ndarray] | None = None,
        extra: dict[str, np.ndarray] | None = None,
        fetch: tuple[str, ...] = (),
    ) -> dict[str, np.ndarray]:
        feeds = self._feeds(lowrank, noise)
        feeds.update(extra or {})
        self.forwards += 1
        outputs = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, *fetch)
        mb = self.micro_batch
        if not mb or batch.size <= mb or fetch or noise or extra:
            return self.session.forward(batch, feeds, outputs)
        parts = [
            self.session.forward(batch.rows(slice(i, i + mb)).trim_left(), feeds, outputs)
            for i in range(0, batch.size, mb)
        ]
        return {k: np.concatenate([part[k] for part in parts]) for k in outputs}

    def sample_losses(
        self,
        batch: Batch,
        objective: Objective = lm_objective,
        lowrank: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        noise: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        out = self.run(batch, lowrank, noise)
        return objective(out[contract.OUTPUT_ROW_NLL], out[contract.OUTPUT_ROW_COUNT])

    # --- probes -------------------------------------------------------------------------------------------
    def losses_and_bases(
        self,
        batch: Batch,
        omega: dict[str, np.ndarray],
        objective: Objective = lm_objective,
        lowrank: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One pass: per-sample losses and, per group, the top-r activation directions of the real tokens."""
        extra = {contract.INPUT_PROBE_ROWS: batch.real_token_rows()}
        extra.update({contract.probe_omega(g): w for g, w in omega.items()})
        fetch = tuple(n for g in omega for n in (contract.probe_basis(g), contract.probe_gram(g)))
        out = self.run(batch, lowrank, extra=extra, fetch=fetch)
        bases = {g: rayleigh_ritz(out[contract.probe_basis(g)], out[contract.probe_gram(g)])[0] for g in omega}
        return objective(out[contract.OUTPUT_ROW_NLL], out[contract.OUTPUT_ROW_COUNT]), bases

    def sketches(self, batch: Batch, omega: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Xᵀ (X Ω_g) per group over the batch's real tokens (ZO-Act calibration sums these over batches)."""
        extra = {contract.INPUT_PROBE_ROWS: batch.real_token_rows()}
        extra.update({contract.probe_sketch_omega(g): w for g, w in omega.items()})
        out = self.run(batch, extra=extra, fetch=tuple(contract.probe_sketch(g) for g in omega))
        return {g: out[contract.probe_sketch(g)] for g in omega}

    def activations(self, batch: Batch, rows: dict[str, np.ndarray], **kw) -> tuple[dict, dict[str, np.ndarray]]:
        """Raw input rows [M, d_in] of the given groups (Zoop's local Jacobian), with the pass's outputs."""
        extra = {contract.probe_act_rows(g): r for g, r in rows.items()}
        out = self.run(batch, extra=extra, fetch=tuple(contract.probe_act(g) for g in rows), **kw)
        return out, {g: out[contract.probe_act(g)] for g in rows}

    # --- updates ------------------------------------------------------------------------------------------
    def apply_lowrank(self, layer: str, q: np.ndarray, p: np.ndarray, alpha: float) -> None:
        """ΔW_layer += alpha Q Pᵀ: in place when folding, else into the layer's adapter."""
        spec = self.linears[layer]
        if self.fold:
            add_lowrank(self.params[spec.weight], q, p, alpha)
        else:
            self.adapters.setdefault(layer, LowRankAdapter.empty(spec)).add(q, p, alpha, self.adapter_rank)

    def apply_dense(self, key: str, alpha: float, x: np.ndarray) -> None:
        """param += alpha x in place (full-space methods; needs bound fp32 params)."""
        if key not in self.params:
            raise ValueError(f"{key} is not a bound fp32 parameter; full-space updates need an fp32 export")
        if self.session.device != "cpu":
            # The bound copy lives in device memory: a host update would be invisible, and re-uploading would move
            # the whole model across the bus every step. Low-rank methods train an adapter there instead.
            raise ValueError(
                f"full-space updates (mezo, zoop) run on the CPU provider only, not {self.session.providers[0]}; "
                "use a low-rank method (zo-act, agzo, lozo, subzero), whose adapter is fed per pass"
            )
        add_dense(self.params[key], alpha, x)

    # --- state --------------------------------------------------------------------------------------------
    def adapter_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for layer, a in self.adapters.items():
            out[f"adapter.q::{layer}"] = a.q
            out[f"adapter.p::{layer}"] = a.p
        return out

    def load_adapter_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.adapters = {}
        for key, q in arrays.items():
            if key.startswith("adapter.q::"):
                layer = key.removeprefix("adapter.q::")
                self.adapters[layer] = LowRankAdapter(q, arrays[f"adapter.p::{layer}"])
