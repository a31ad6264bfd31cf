"""The oracle a ZO method talks to: per-sample losses of base + trained state + a perturbation, and probes.

Methods never touch onnxruntime. They ask for losses under a low-rank perturbation ``{layer: LowRank(q, p)}``
(ΔW = Q Pᵀ, HF orientation), under output noise (Zoop), or for the activation bases/sketches/rows of the current
batch. Updates go to ``oracle.trained`` (runtime.trained_state.TrainedState), which the runtime owns: folded into
the bound fp32 weights in place on CPU, or a per-layer adapter fed through the same P/Q ports on every pass
(INT4 base, device providers). The oracle only reads it, to feed each pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.contract import Manifest
from runtime.errors import ZoEdgeError
from runtime.layers import restrict_manifest
from runtime.session import GraphSession
from runtime.trained_state import LowRank, TrainedState

if TYPE_CHECKING:
    from runtime.prefix_cache import PrefixCache

__all__ = ["ForwardOutputs", "Objective", "Oracle", "lm_objective", "rayleigh_ritz"]


@dataclass(frozen=True)
class ForwardOutputs:
    """What an objective reads from one loss pass: the graph's per-row outputs.

    ``candidate_logp`` [B, C] is there when the batch carried ``candidate_ids`` (the contract's candidate scoring:
    a one-row classification batch), else None. A pass through the candidates' head (``--layers head``, see
    ``Oracle``) returns ``candidate_logit`` instead, and no NLL: the same scores up to a per-row constant.
    """

    row_nll: np.ndarray | None  # [B] summed NLL over each row's loss positions
    row_count: np.ndarray | None  # [B] number of loss positions
    candidate_logp: np.ndarray | None = None  # [B, C] summed log p(candidate) over each row's loss positions
    candidate_logit: np.ndarray | None = None  # [B, C] the same minus each row's log-sum-exp (candidates' head)

    @classmethod
    def from_run(cls, out: Mapping[str, np.ndarray]) -> ForwardOutputs:
        """From the dict ``Oracle.run`` / ``GraphSession.forward`` return."""
        return cls(
            out.get(contract.OUTPUT_ROW_NLL),
            out.get(contract.OUTPUT_ROW_COUNT),
            out.get(contract.OUTPUT_ROW_CANDIDATE_LOGP),
            out.get(contract.OUTPUT_ROW_CANDIDATE_LOGIT),
        )

    @property
    def candidate_scores(self) -> np.ndarray:
        """[B, C] the candidates' log-likelihoods up to a per-row constant: exact for a softmax over the
        candidates or an argmax (a one-row classification loss or prediction), whichever head computed them."""
        scores = self.candidate_logp if self.candidate_logp is not None else self.candidate_logit
        if scores is None:
            raise ValueError("this pass scored no candidates: the batch carried no candidate_ids")
        return scores


#: maps one pass's outputs to per-sample losses; the batch loss is their mean
Objective = Callable[[ForwardOutputs], np.ndarray]


def lm_objective(out: ForwardOutputs) -> np.ndarray:
    """Token-mean NLL of each row (rows without targets count 0)."""
    if out.row_nll is None or out.row_count is None:
        raise ValueError("the lm objective needs row_nll: this pass ran the candidates' head (one-row scoring only)")
    return np.asarray(out.row_nll, np.float64) / np.maximum(np.asarray(out.row_count, np.float64), 1.0)


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


class Oracle:
    """Losses and probes of one GraphSession, plus where updates go (in place, or an adapter)."""

    def __init__(
        self,
        session: GraphSession,
        *,
        fold: bool | None = None,
        adapter_rank: int = 64,
        micro_batch: int = 0,
        blocks: list[int] | None = None,
        prefix: PrefixCache | None = None,
        candidate_head: GraphSession | None = None,
    ) -> None:
        if micro_batch < 0:
            raise ZoEdgeError(f"micro_batch must be >= 0 (0: whole batch per pass), got {micro_batch}")
        self.session = session
        #: the frozen-prefix cache when ``session`` runs a suffix graph (runtime/prefix_cache.py), else None
        self.prefix = prefix
        if session.takes_hidden != (prefix is not None):
            raise ZoEdgeError("a suffix-graph session needs a PrefixCache and a full-graph session must have none")
        #: the candidates' head (``contract.candidate_head_file``) beside the head's-split suffix, or None: a plain
        #: loss pass over a one-row classification batch then runs it, C instead of V head rows a row (the only
        #: pass a ``--layers head`` step makes); NLL passes and probes keep the suffix's full head
        self.candidate_head = candidate_head
        if candidate_head is not None and (prefix is None or not candidate_head.takes_hidden):
            raise ZoEdgeError("the candidates' head runs behind a head's-split PrefixCache only")
        #: rows per onnxruntime pass for loss-only forwards (0: the whole batch in one pass). A row's loss does not
        #: depend on the other rows, so a batch can be cut into row chunks (each trimmed of its all-padding columns)
        #: and the per-row outputs concatenated: the result is the same up to float reassociation, and activation
        #: memory, which grows with B x T² in the unfused attention, follows the micro-batch instead of the batch.
        #: Passes that fetch probes (bases, sketches, activation rows) or feed per-token noise run whole: their
        #: outputs are sums over the batch's tokens or indexed by flat token position.
        self.micro_batch = micro_batch
        #: what methods see: the whole model, or the view of the trained blocks only (runtime.layers, ``--layers``)
        self.manifest: Manifest = restrict_manifest(session.manifest, blocks)
        self.params = session.params
        self.linears = {s.name: s for s in self.manifest.linears}
        fold = (self.manifest.dtype == "fp32" and session.device == "cpu") if fold is None else fold
        if fold and self.manifest.dtype != "fp32":
            raise ZoEdgeError("fold=True needs an fp32 export: INT4 base weights are frozen initializers")
        #: everything training changed (folded weights, adapters); fed into every pass
        self.trained = TrainedState(
            self.params, self.manifest.linears, fold=fold, adapter_rank=adapter_rank, device=session.device
        )
        self.forwards = 0

    # --- losses -------------------------------------------------------------------------------------------
    def _feeds(self, lowrank: dict[str, LowRank] | None, noise: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        feeds = self.trained.feeds(lowrank)
        for layer, xi in (noise or {}).items():
            feeds[contract.port_noise(layer)] = xi
        return feeds

    def run(
        self,
        batch: Batch,
        lowrank: dict[str, LowRank] | None = None,
        noise: dict[str, np.ndarray] | None = None,
        extra: dict[str, np.ndarray] | None = None,
        fetch: tuple[str, ...] = (),
    ) -> dict[str, np.ndarray]:
        self.forwards += 1
        session, feeds = self.session, {}
        if batch.candidate_ids is None:
            outputs: tuple[str, ...] = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, *fetch)
        elif self.candidate_head is not None and not (fetch or noise or extra or lowrank):
            session, outputs = self.candidate_head, (contract.OUTPUT_ROW_CANDIDATE_LOGIT,)  # no ports: no feeds
        else:
            outputs = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, contract.OUTPUT_ROW_CANDIDATE_LOGP, *fetch)
        if session is self.session:
            feeds = self._feeds(lowrank, noise)
            feeds.update(extra or {})
        mb = self.micro_batch
        if not mb or batch.size <= mb or fetch or noise or extra:
            return self._forward(session, batch, feeds, outputs)
        parts = [
            self._forward(session, batch.rows(slice(i, i + mb)).trim_left(), feeds, outputs)
            for i in range(0, batch.size, mb)
        ]
        return {k: np.concatenate([part[k] for part in parts]) for k in outputs}

    def _forward(
        self, session: GraphSession, batch: Batch, feeds: dict[str, np.ndarray], outputs: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """One session pass; a suffix session is fed the cached prefix hidden states of exactly these rows (the
        candidates' head only the columns from the first scored position on: nothing before it reaches its output)."""
        if self.prefix is None:
            return session.forward(batch, feeds, outputs)
        hidden = self.prefix.hidden(batch)
        if session is self.candidate_head:
            cols = np.flatnonzero(batch.scored_positions().any(axis=0))
            first = int(cols[0]) if cols.size else 0
            batch, hidden = batch.columns(first), hidden[:, first:]
        return session.forward(batch, {**feeds, contract.INPUT_HIDDEN: hidden}, outputs)

    def sample_losses(
        self,
        batch: Batch,
        objective: Objective = lm_objective,
        lowrank: dict[str, LowRank] | None = None,
        noise: dict[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        return objective(ForwardOutputs.from_run(self.run(batch, lowrank, noise)))

    # --- probes -------------------------------------------------------------------------------------------
    def losses_and_bases(
        self,
        batch: Batch,
        omega: dict[str, np.ndarray],
        objective: Objective = lm_objective,
        lowrank: dict[str, LowRank] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One pass: per-sample losses and, per group, the top-r activation directions of the real tokens."""
        extra = {contract.INPUT_PROBE_ROWS: batch.real_token_rows()}
        extra.update({contract.probe_omega(g): w for g, w in omega.items()})
        fetch = tuple(n for g in omega for n in (contract.probe_basis(g), contract.probe_gram(g)))
        out = self.run(batch, lowrank, extra=extra, fetch=fetch)
        bases = {g: rayleigh_ritz(out[contract.probe_basis(g)], out[contract.probe_gram(g)])[0] for g in omega}
        return objective(ForwardOutputs.from_run(out)), bases

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
