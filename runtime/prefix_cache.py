"""The frozen-prefix cache: hidden states entering the lowest trained block, computed once and reused.

In a layer-selective run (``--layers top:6``) the blocks below the lowest trained one do not depend on the
perturbation, so every ± pass of a step would recompute the same prefix. The export writes, per split S (a block
boundary), a *prefix graph* (tokens -> the residual stream entering block S) and a *suffix graph* (that hidden
state -> blocks S.. with their ports -> the same loss head and probes as the full graph); both share the model's
bound parameters. The oracle then runs only the suffix per pass::

    step cost ≈ (prefix, once per batch or once per run) + passes x (suffix)      vs      passes x (full)

Rows are cached by their real tokens (the ids under the attention mask): with left padding and positions from the
mask's running sum, a real token's hidden state does not depend on how much padding its row got, so a row computed
in one batch is reused in any other batch layout. A run's k-shot training set fits easily (RT: 32 examples x 64
tokens x 576 floats = 4.7 MB); beyond ``budget_mb`` new rows are still computed (once per batch, for all passes
of that step) but not kept. Dev and test rows scored through the same oracle are cached too, within the
budget (the dev split is re-scored at every evaluation).

At the head's split (S = n, ``--layers head``: only the final norm trains) nothing above the prefix mixes
positions, so the cache keeps only the positions the loss head reads (one per row in the one-row classification
layout): d floats a row, so a user's whole file is computed once and then every step costs the head alone.
"""

from __future__ import annotations

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.layers import n_blocks
from runtime.session import GraphSession

__all__ = ["PrefixCache", "choose_split", "make_oracle"]


class PrefixCache:
    """Hidden states at the split for any batch: from the cache, or one prefix-graph pass over the missing rows."""

    def __init__(self, prefix: GraphSession, budget_mb: float = 512.0, scored_only: bool = False) -> None:
        self.prefix = prefix
        self.budget = int(budget_mb * 2**20)
        #: keep only the positions the loss head reads (the head's split: no block above the prefix mixes
        #: positions, so the others never reach an output); a row then costs d floats per scored position
        #: instead of T x d, and a whole user file fits (RT's 10k training rows: 23 MB instead of ~2 GB)
        self.scored_only = scored_only
        self.rows: dict[bytes, np.ndarray] = {}
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.prefix_passes = 0
        #: the last batch looked up and its hidden states: a step's ± passes and queries all score one Batch
        #: object, so its [B, T, d] array is assembled once per step, not once per pass
        self._last: tuple[Batch, np.ndarray] | None = None

    def _key(self, batch: Batch, i: int, scored: np.ndarray) -> bytes:
        """Row ``i``'s identity: its real tokens (and, keeping scored positions only, which ones are scored);
        ``scored``: ``batch.scored_positions()``."""
        real = batch.attention_mask[i] != 0
        key = batch.input_ids[i][real].tobytes()
        return key + b"|" + scored[i][real].tobytes() if self.scored_only else key

    def _kept(self, batch: Batch, i: int, scored: np.ndarray) -> np.ndarray:
        """The positions of row ``i`` the cache keeps: its real tokens, or only the scored ones."""
        real = batch.attention_mask[i] != 0
        return real & scored[i] if self.scored_only else real

    def hidden(self, batch: Batch) -> np.ndarray:
        """[B, T, d] float32 hidden states entering the split block, laid out like ``batch`` (padding: zeros).
        Read-only: the same array comes back for the same Batch object."""
        if self._last is not None and self._last[0] is batch:
            self.hits += batch.size
            return self._last[1]
        scored = batch.scored_positions()
        keys = [self._key(batch, i, scored) for i in range(batch.size)]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        self.hits += batch.size - len(missing)
        self.misses += len(missing)
        fresh: dict[int, np.ndarray] = {}
        # Missing rows go in passes of rows with the same real length, so no pass holds padding: a row's hidden
        # state then does not depend on how much padding a batch gave it, and a resumed run (which refills the
        # cache from other batches) gets the same bits (tests/runtime/test_prefix_cache.py checks resume).
        lengths = batch.attention_mask.sum(axis=1)
        for length in sorted({int(lengths[i]) for i in missing}):
            group = [i for i in missing if lengths[i] == length]
            sub = batch.rows(np.asarray(group))
            sub = Batch(sub.input_ids[:, -max(length, 2) :], sub.attention_mask[:, -max(length, 2) :],
                        sub.loss_mask[:, -max(length, 2) :])  # fmt: skip
            out = self.prefix.forward(sub, fetch=(contract.OUTPUT_HIDDEN,))[contract.OUTPUT_HIDDEN]
            self.prefix_passes += 1
            sub_scored = sub.scored_positions()
            for j, i in enumerate(group):
                row = np.ascontiguousarray(out[j, self._kept(sub, j, sub_scored)], np.float32)
                fresh[i] = row
                if self.nbytes + row.nbytes <= self.budget:
                    self.rows[keys[i]] = row
                    self.nbytes += row.nbytes
        d = next(iter(fresh.values())).shape[1] if fresh else self.rows[keys[0]].shape[1]
        hidden = np.zeros((batch.size, batch.input_ids.shape[1], d), np.float32)
        for i, k in enumerate(keys):
            hidden[i, self._kept(batch, i, scored)] = fresh[i] if i in fresh else self.rows[k]
        hidden.flags.writeable = False
        self._last = (batch, hidden)
        return hidden

    def stats(self) -> dict[str, float]:
        return {
            "prefix_cache_rows": len(self.rows),
            "prefix_cache_mb": round(self.nbytes / 2**20, 2),
            "prefix_hits": self.hits,
            "prefix_misses": self.misses,
        }


def choose_split(splits: list[int], blocks: list[int] | None) -> int | None:
    """The deepest exported split S at or below the lowest trained block (None: no split helps, run the full graph).

    Any S <= min(blocks) is exact: the suffix graph has ports for every block >= S and the untrained ones stay at
    their off defaults; the deepest one leaves the least work per pass."""
    if not blocks:
        return None
    usable = [s for s in splits if s <= min(blocks)]
    return max(usable) if usable else None


def make_oracle(
    model_dir,
    *,
    blocks: list[int] | None = None,
    cache_mb: float = 512.0,
    provider: str = "cpu",
    provider_options=None,
    threads: int | None = None,
    micro_batch: int = 0,
):
    """The Oracle a run trains with: on the suffix graph behind a prefix cache when ``blocks`` start at or above an
    exported split, else on the full graph (restricted to ``blocks`` either way). Returns (oracle, split or None)."""
    from runtime.contract import Manifest
    from runtime.oracle import Oracle

    kw = dict(provider=provider, provider_options=provider_options, threads=threads)
    split = choose_split(Manifest.load(model_dir).splits, blocks) if cache_mb > 0 else None
    if split is None:
        return Oracle(GraphSession(model_dir, **kw), micro_batch=micro_batch, blocks=blocks), None
    prefix = GraphSession(model_dir, graph_file=contract.prefix_graph_file(split), **kw)
    suffix = GraphSession(model_dir, graph_file=contract.suffix_graph_file(split), params=prefix.params, **kw)
    head_split = split >= n_blocks(prefix.manifest)
    cache = PrefixCache(prefix, cache_mb, scored_only=head_split)
    head = None
    if head_split and prefix.manifest.has(contract.FEATURE_CANDIDATE_HEAD):
        head = GraphSession(model_dir, graph_file=contract.candidate_head_file(split), params=prefix.params, **kw)
    return Oracle(suffix, micro_batch=micro_batch, blocks=blocks, prefix=cache, candidate_head=head), split
