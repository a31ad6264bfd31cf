"""Zoop: zeroth-order *output* perturbation for linear layers, forward-only on onnxruntime.

Reference: "Zoop it! Efficient Zero-Order Optimization with Output Perturbation", ICML 2025 workshop TTODLer-FM
(OpenReview Tc8vFyRhPO); the linear-layer estimator is its Appendix A.5, the update its Algorithm 1.

Instead of perturbing the d_in·d_out weights of a layer (MeZO), Zoop perturbs the layer's *output* per token and
back-propagates the resulting output-gradient estimate through the layer's own, analytically known, local Jacobian.
Rows of a batch are independent in a causal LM, so every row gives its own estimate from its own loss, and the
error of the layer's estimate falls as (perturbed output width) / (batch size) instead of (weights) / 1 -- for
the part of the gradient the rows share. On the tiny test Llama with rows that share one sample, the per-layer
cosine with autograd is 0.09 / 0.20 / 0.44 at B = 4 / 16 / 64 (√(B / (B + T·d_out)) predicts 0.12 / 0.24 / 0.45),
against 0.02-0.03 for MeZO restricted to that layer; with unrelated random rows the row gradients are nearly
orthogonal and the cosine stays near 1/√(T·d_out) at every B (tests/methods/test_zoop.py).

Per step t, for the selected layers S_t (see ``select``) and each query k::

    pass 0 (clean):  L_i(θ) per row i, and X_g [M, d_in] = the raw input rows of each selected layer's group at
                     the M "live" tokens (probe_act_rows; empty, i.e. free, for every other group)
    ξ_l ~ N(0, I) [M, d_out] from rng.gaussian(seed, …, "zoop-xi", t, k, layer), scattered into [B, T, d_out]
                     (zeros at padding and at positions after the row's last predicting position: those cannot
                     change any loss term, so their noise would only add variance)
    pass +:  L_i(+) = L_i with y_l += ε ξ_l for all l in S_t   (the port_noise inputs)
    pass −:  L_i(−) = L_i with y_l −= ε ξ_l
    α_i   = (L_i(+) − L_i(−)) / 2ε                             (one scalar per sample: the objective's per-row loss)
    G_l   = (1/B) Σ_i α_i Σ_t ξ_{l,i,t} x_{i,t}ᵀ  = (1/B) (α ⊙ ξ_l)ᵀ X_g     [d_out, d_in], one sgemm
    g_b   = (1/B) Σ_i α_i Σ_t ξ_{l,i,t}                                          (a bound bias, if any)
    (G_l, g_b) ← (G_l, g_b) / ‖(G_l, g_b)‖          (per-layer normalisation, Algorithm 1; ``layer_normalize``)
    W_l ← optimizer(W_l, G_l)                                  SGD, or Adam ("Zoop-Adam")

with B the batch size (the batch loss is the mean of the per-row losses; rows without targets contribute α = 0).
E[α_i ξ_{l,i,t}] = ∂L_i/∂y_{l,i,t} + O(ε²), so G_l is an unbiased estimate of ∂L/∂W_l up to O(ε²). The joint
perturbation of all layers in S_t adds the other layers' noise to every α_i, which is why perturbing fewer layers
per step (``select``) trades steps for accuracy.

Arguments (the paper's hyperparameters are not restated here; these defaults are ours, tuned on tiny models):
``mu`` = ε 1e-3 (output entries are O(1); 1e-3 keeps the float32 central difference accurate), ``queries`` 1
(noise draws per step, each 2 more forwards, averaged), ``select`` "cycle" (one transformer block per step, in
order), ``subset`` 4 (layers per step for "random"), ``blocks`` "" (which blocks are trained at all, e.g.
"0-3,10"; empty = every targeted linear), ``bias`` True, ``layer_normalize`` True. Learning rate: with normalisation
SGD moves each layer by exactly η in Frobenius norm per update (the tiny-model tests use 3e-2; no value tuned on a
real model yet).

Design decisions:

* **The third (clean) pass.** The local Jacobian needs each perturbed layer's input x at the unperturbed point.
  Rather than storing activations for the whole network, a clean pass returns the input rows of the *selected*
  layers' groups only (probe_act_rows; every other group gets an empty index, a Gather of zero rows). It also
  yields the unperturbed loss that the StepReport shows. Order: clean → + → −. Measured (T = 64, on a shared
  2-core VM, so absolute times are inflated; ``benchmarks/zoop_scaling.py`` and an interleaved timing loop):
  on the tiny test Llama (B = 16) the clean pass costs 1.06x a plain forward with one block's rows, 1.16x with
  every group's (the rows are copied out), and the noise feed is free (0.97x); on SmolLM2-135M fp32 (B = 8) the
  clean pass and a plain forward are within timing noise (4.4 vs 4.7 s, 4.8 vs 4.9 s). So the third pass costs
  one forward: a step is 3 forwards where MeZO/LOZO take 2 (+50% forward time; AGZO also takes 2, one of them
  with its probes). Extra memory: X_g, M·Σ_g d_in float32 for the selected groups, plus the noise feeds
  M·Σ_l d_out (reused in place as the α-weighted ξ), plus one layer's G at a time. SmolLM2 at B = 8, T = 64:
  6.3 MB of rows and 10 MB of noise for one block ("cycle"; peak RSS the same as AGZO's and MeZO's, +290 MB over
  the loaded session, which is onnxruntime's forward arena), 188 MB and 299 MB for "all" (peak +965 MB). Hence
  the "cycle" default.
* **Optimizer state.** SGD keeps none. Zoop-Adam keeps moments (8 B per value) for the trained layers only:
  ``blocks`` restricts which layers are trained, and init refuses (one line) Adam whose moments would exceed the
  model's own fp32 size, as MeZO does. The optimizer is called with only the layers updated this step; its
  per-key step counters mean Adam's bias correction counts a layer's own updates (right), and a learning-rate
  *schedule* likewise advances per layer; ``schedule_steps`` spans it over what a layer's count reaches (under
  "cycle", steps / n_blocks), so a decay ends when the run does.
* **INT4 bases** are refused: the update is a dense d_out x d_in matrix, which needs bound fp32 weights.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from runtime import contract, rng
from runtime.batch import Batch
from runtime.contract import LinearSpec, Manifest
from runtime.layers import block_of
from runtime.method import MethodError, check_export, register_method
from runtime.oracle import ForwardOutputs, Objective, Oracle
from zo_edge import optim
from zo_edge.methods.base import BaseConfig, Timer, ZOBase, finite, knob

__all__ = ["Zoop", "ZoopConfig", "live_positions"]

_SELECT = ("all", "cycle", "random")


@dataclass
class ZoopConfig(BaseConfig):
    select: str = knob(
        "cycle",
        'layers perturbed (and updated) per step: "all", one block per step in turn ("cycle"), or '
        '--subset random layers ("random")',
        choices=_SELECT,
    )
    subset: int = knob(4, "layers per step for --select random")
    blocks: str = knob("", 'transformer blocks trained at all, e.g. "0-3,10" (empty: every targeted linear)')
    bias: bool = knob(True, "also train the bound biases of the perturbed layers")
    layer_normalize: bool = knob(True, "per-layer normalisation g / ‖g‖ (the paper's Algorithm 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.select not in _SELECT:
            raise MethodError(f"--select must be one of {', '.join(_SELECT)}, got {self.select!r}")
        if self.subset < 1:
            raise MethodError(f"--subset must be >= 1, got {self.subset}")
        _parse_blocks(self.blocks)  # one-line error on a malformed spec


def _parse_blocks(spec: str) -> set[int] | None:
    if not spec.strip():
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise MethodError(f"zoop blocks must look like '0-3,10', got {spec!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out.update(range(lo, hi + 1))
    return out


def _trained_layers(config: ZoopConfig, manifest: Manifest) -> list[LinearSpec]:
    """The targeted linears in ``config.blocks`` (all of them when blank), in manifest order."""
    wanted = _parse_blocks(config.blocks)
    return [s for s in manifest.linears if wanted is None or block_of(s.name) in wanted]


def live_positions(batch: Batch) -> np.ndarray:
    """Flat indices b*T + t of the tokens whose layer outputs can change the loss, ascending.

    A target u counts when loss_mask[u], attention_mask[u] and attention_mask[u-1] are set (the graph's rule); it
    is predicted from position u-1 and, causally, depends on every position <= u-1. So a position is live when it
    is a real token at or before its row's last predicting position.
    """
    attn, loss = batch.attention_mask, batch.loss_mask
    eff = (loss[:, 1:] * attn[:, 1:] * attn[:, :-1]) > 0  # [B, T-1], target u = j + 1, predictor j
    t = attn.shape[1]
    has = eff.any(axis=1)
    last_pred = np.where(has, t - 2 - np.argmax(eff[:, ::-1], axis=1), -1)  # last j with eff[:, j]
    live = (attn > 0) & (np.arange(t)[None, :] <= last_pred[:, None])
    return np.flatnonzero(live.reshape(-1)).astype(np.int64)


@register_method("zoop")
class Zoop(ZOBase):
    Config = ZoopConfig
    default_lr = 1e-4
    optimizers = frozenset({"sgd", "adam"})
    bases = frozenset({"fp32"})
    ports = frozenset({contract.PORTS_NOISE, contract.PORTS_PROBE})  # output noise; the clean pass's input rows

    def init(self, oracle: Oracle, seed: int) -> None:
        check_export(type(self), oracle.manifest)
        self.seed = seed
        self.layers: list[LinearSpec] = _trained_layers(self.config, oracle.manifest)
        if not self.layers:
            raise MethodError(f"zoop blocks {self.config.blocks!r} select none of the model's targeted linears")
        missing = [s.name for s in self.layers if s.weight is None or s.weight not in oracle.params]
        if missing:
            raise MethodError(f"zoop needs bound fp32 weights; {missing[0]} has none (re-export without --int4)")
        self.block_ids = sorted({block_of(s.name) for s in self.layers})
        names = self.param_names(self.layers)
        per_value = optim.state_nbytes(self.optimizer.init({"probe": np.zeros(1024, np.float32)})) // 1024
        n_values = sum(oracle.params[k].size for k in names)
        model_bytes = 4 * sum(p.size for p in oracle.params.values())
        optim.check_state_budget("zoop optimizer state", n_values, per_value, model_bytes)
        self.opt_state = self.optimizer.init({k: oracle.params[k] for k in names})

    @classmethod
    def schedule_steps(cls, config: ZoopConfig, manifest: Manifest, steps: int) -> int:
        """Each layer counts its own updates (``zo_edge.optim``'s per-key counters): under "cycle" a layer is
        updated once every n_blocks steps, under "random" subset / n_layers of the steps on average; the schedule
        spans what a layer's count reaches, so ``--steps`` and ``--warmup`` keep meaning steps (a linear decay over
        300 steps of 30 blocks ran a thirtieth of the way down before: the count was the clock)."""
        layers = _trained_layers(config, manifest)
        if config.select == "all" or not layers:
            return steps
        if config.select == "cycle":
            return math.ceil(steps / len({block_of(s.name) for s in layers}))
        return math.ceil(steps * min(config.subset, len(layers)) / len(layers))

    def param_names(self, layers: list[LinearSpec]) -> list[str]:
        names = []
        for s in layers:
            names.append(s.weight)
            if self.config.bias and s.bias is not None:
                names.append(s.bias)
        return names

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]:
        return {k: oracle.params[k] for k in self.param_names(self.layers)}

    # --- which layers a step perturbs ------------------------------------------------------------------------
    def selected(self, t: int) -> list[LinearSpec]:
        c = self.config
        if c.select == "all":
            return list(self.layers)
        if c.select == "cycle":
            block = self.block_ids[t % len(self.block_ids)]
            return [s for s in self.layers if block_of(s.name) == block]
        k = min(c.subset, len(self.layers))
        pick = rng.stream(self.seed, "zoop-select", t).choice(len(self.layers), size=k, replace=False)
        return [self.layers[i] for i in sorted(pick)]

    # --- the estimator -----------------------------------------------------------------------------------------
    def passes(
        self,
        oracle: Oracle,
        batch: Batch,
        objective: Objective,
        t: int,
        layers: list[LinearSpec],
        timer: Timer | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], list[float], bool]:
        """The 1 + 2·queries forwards of one estimate for ``layers``.

        Returns (clean per-row losses, X_g per group [M, d_in], W_l = Σ_k (α_k / Bq) ⊙ ξ_{l,k} per layer [M, d_out],
        α-means per query, ok); ok is False on a non-finite loss. The only buffers are the noise feeds
        [B, T, d_out], which end up holding W_l (in place when every token is live, as in packed text).
        """
        c = self.config
        timer = timer or Timer()
        rows = live_positions(batch)
        m, flat = rows.size, batch.input_ids.size
        all_live = m == flat
        row_of = rows // batch.input_ids.shape[1]  # the sample each live token belongs to
        groups = sorted({s.group for s in layers})
        with timer("forward"):
            out, acts = oracle.activations(batch, {g: rows for g in groups})
        f0 = objective(ForwardOutputs.from_run(out))
        if np.shape(f0) != (batch.size,):
            # α_i pairs sample i's loss with the noise on row i's tokens: a loss per row is what makes it local.
            # The classification objective gives one per row only on one-row batches (candidate scoring).
            raise MethodError(
                f"zoop needs one loss per batch row, got {np.size(f0)} for {batch.size} rows: use --objective lm, "
                "or an export with candidate scoring and single-token label words for --objective classification"
            )
        acc: dict[str, np.ndarray] = {}
        alphas: list[float] = []
        if not finite(f0):
            return f0, acts, acc, alphas, False
        for k in range(c.queries):
            with timer("sample"):
                noise: dict[str, np.ndarray] = {}
                for s in layers:
                    full = np.zeros((flat, s.d_out), np.float32)
                    if all_live:  # draw straight into the feed: the same numbers as a separate (m, d_out) draw
                        rng.gaussian(self.seed, (m, s.d_out), "zoop-xi", t, k, s.name, out=full)
                    else:
                        full[rows] = rng.gaussian(self.seed, (m, s.d_out), "zoop-xi", t, k, s.name)
                    full *= np.float32(c.mu)
                    noise[s.name] = full
            with timer("forward"):
                shaped = {n: v.reshape(batch.input_ids.shape + (v.shape[1],)) for n, v in noise.items()}
                f_plus = oracle.sample_losses(batch, objective, noise=shaped)
                for v in noise.values():
                    np.negative(v, out=v)  # the same buffers, now −ε ξ: no second allocation
                f_minus = oracle.sample_losses(batch, objective, noise=shaped)
            if not finite(f_plus, f_minus):
                return f0, acts, {}, alphas, False
            alpha = (np.asarray(f_plus, np.float64) - np.asarray(f_minus, np.float64)) / (2.0 * c.mu)
            alphas.append(float(np.mean(alpha)))
            # the feeds hold −ε ξ: scale by −α_i / (ε B q) per token to get (α_i / B q) ξ
            scale = (-alpha[row_of] / (c.mu * batch.size * c.queries)).astype(np.float32)[:, None]
            with timer("update"):
                for name, v in noise.items():
                    live = v if all_live else v[rows]
                    live *= scale
                    if name in acc:
                        acc[name] += live
                    else:
                        acc[name] = live
            del noise, shaped
        return f0, acts, acc, alphas, True

    def layer_grads(self, spec: LinearSpec, acts: dict[str, np.ndarray], acc: dict[str, np.ndarray]):
        """{param key: gradient in its stored layout}: a weight gets G_lᵀ = Xᵀ W_l [d_in, d_out] (one sgemm)."""
        w = acc[spec.name]
        out = {spec.weight: acts[spec.group].T @ w}
        if self.config.bias and spec.bias is not None:
            out[spec.bias] = w.sum(axis=0)
        return out

    def estimate(
        self, oracle: Oracle, batch: Batch, objective: Objective, t: int, layers: list[LinearSpec]
    ) -> tuple[np.ndarray, dict[str, np.ndarray], list[float], bool]:
        """Zoop's (unnormalised) gradient estimates for ``layers``, all at once (tests; ``step`` streams them).

        Returns (clean per-row losses, {param key: gradient in its stored layout}, α-means per query, ok).
        """
        f0, acts, acc, alphas, ok = self.passes(oracle, batch, objective, t, layers)
        grads: dict[str, np.ndarray] = {}
        if ok:
            for s in layers:
                grads.update(self.layer_grads(s, acts, acc))
        return f0, grads, alphas, ok

    # --- one step ----------------------------------------------------------------------------------------------
    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int):
        c = self.config
        timer = Timer()
        layers = self.selected(t)
        forwards = 1 + 2 * c.queries
        f0, acts, acc, alphas, ok = self.passes(oracle, batch, objective, t, layers, timer)
        loss = float(np.mean(f0)) if finite(f0) else np.nan
        if not ok:
            return timer.report(loss, np.nan, forwards, skipped=True)
        with timer("update"):
            for s in layers:  # one layer-sized gradient at a time
                grads = self.layer_grads(s, acts, acc)
                del acc[s.name]
                if c.layer_normalize:
                    norm = np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
                    if norm > 0:
                        for g in grads.values():
                            g *= np.float32(1.0 / norm)
                deltas, self.opt_state = self.optimizer.update(grads, self.opt_state, oracle.params)
                for k, d in deltas.items():
                    oracle.trained.apply_dense(k, 1.0, d)
        return timer.report(loss, np.mean(alphas), forwards, layers=len(layers))
