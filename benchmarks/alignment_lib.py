"""Single-query gradient estimates of the ZO methods, read back for the gradient-alignment diagnostic.

A diagnostic, not part of the library: it reads method internals (ZO-Act's C/A state, the dense methods' written
tensors) that no training code may depend on, so it lives with the benchmarks. Importable as ``alignment_lib`` with
``benchmarks/`` on ``sys.path``, as the benchmark scripts and ``tests/methods/test_estimators.py`` put it.

The diagnostic (AGZO paper, arXiv 2601.17261): the cosine between one method's single-query gradient estimate ĝ
and the true gradient ∇L of the same objective at the same point, over many independent draws. Used by
``tests/methods/test_estimators.py`` (tiny Llama, against torch autograd) and ``benchmarks/alignment.py``
(SmolLM2-135M on Rotten Tomatoes). numpy + runtime only: the reference gradient is the caller's business.

``single_query_estimates`` yields, per draw, one estimate per targeted linear layer in HF orientation
[d_out, d_in], in manifest order. Decisions:

* **Readback by an lr = 1 SGD step.** Each method runs its own ``step`` with plain SGD at learning rate 1 (constant
  schedule), so the change it makes is exactly −ĝ; nothing of the estimator is re-implemented here.

  - LOZO, SubZero, AGZO: on an adapter oracle (``fold=False``) the step's whole change is the adapter
    ΔW = Q Pᵀ, so ĝ = −Q Pᵀ; the adapters are cleared after every draw, so every draw starts from the same weights.
  - MeZO and Zoop (dense, in place): ĝ = W_before − W_after, read in the stored layout (``in_out`` = [d_in, d_out]
    is transposed to HF orientation); then every tensor the method wrote is copied back from a snapshot, bit-exactly
    (in place: the buffers stay bound to the session). With lr = 1 the step moves W far (by ĝ itself), so the
    restore is a copy, never a second update.
  - ZO-Act: the change of C from 0 mapped through the calibrated basis: ĝ_W = −ΔC Aᵀ; C is zeroed in place after
    every draw (the oracle's adapter shares the array). Calibration runs first, on ``calib_batches`` (default: the
    batch itself); a training run calibrates on 8 batches of its training data.

* **Same coordinates for every method.** MeZO is restricted to the linear weights (``kinds="linear"``), the only
  coordinates the low-rank methods perturb, so every cosine is over the same space (106M values on SmolLM2-135M).
* **Lazy periods of 1** (LOZO ν = 1, SubZero F = 1): every draw has fresh factors, so draws are independent and the
  mean of many draws is the estimator's expectation (with the training defaults, consecutive draws share V / U, V).
* **Zoop** perturbs every layer at once (``select="all"``, whereas training cycles through one block per step) and
  is read unnormalised (``normalize=False``: Algorithm 1's per-layer normalisation rescales each layer's block of
  ĝ, which changes the direction of the whole-model vector).
* AGZO's in-graph power iteration starts, as in training, from the previous draw's basis (random on the first).

The yielded arrays are float32 buffers reused by the next draw: consume them (or copy) before advancing the
generator, and never stack draws of a real model (one draw of SmolLM2-135M is 106M floats). ``CosineMeter``
streams the cosines with float64 accumulation (a single-query cosine in 10⁸ dimensions is ~1e-4, below what a
float32 dot product of that length resolves).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.oracle import Objective, Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import get_method
from zo_edge.methods.zo_act import ZOAct

__all__ = ["CONFIGS", "CosineMeter", "cosine", "dot64", "make_method", "single_query_estimates", "summary"]

#: per-method config of the readback (merged under the caller's ``config``); lazy periods of 1, see above
CONFIGS: dict[str, dict] = {
    "mezo": {"kinds": "linear"},
    "lozo": {"rank": 2, "nu": 1},
    "subzero": {"rank": 2, "refresh": 1},
    "agzo": {"rank": 1},
    "zo-act": {"rank": 4},
    "zoop": {"select": "all", "layer_normalize": False},
    "fzoo": {"rank": 4, "queries": 8},
}


def _dense(name: str) -> bool:
    """A method with no adapter form (no P/Q ports: MeZO, Zoop) updates the bound weights in place: read back as
    W_before − W_after, then restored. The others write adapters on an unfolded oracle. (Not "trains fp32 bases
    only": MeZO also takes INT4 bases, for their norms.)"""
    return contract.PORTS_LOWRANK not in get_method(name).ports


def make_method(name: str, mu: float = 1e-3, config: Mapping | None = None):
    """Method ``name`` with plain SGD at constant learning rate 1: its step changes its coordinates by −ĝ."""
    cls = get_method(name)
    schedule = optim.constant(1.0)
    return cls(cls.Config(mu=mu, **{**CONFIGS.get(name, {}), **(config or {})}), optim.sgd(schedule), schedule)


def _written_params(name: str, method, oracle: Oracle) -> list[str]:
    """The bound tensors a dense method's step writes (all of them are snapshotted and restored)."""
    keys = list(method.names) if name == "mezo" else method.param_names(method.layers)
    missing = [s.weight for s in oracle.manifest.linears if s.weight not in keys]
    if missing:
        raise ValueError(f"{name} does not update {missing[0]} (and {len(missing) - 1} more linear weights)")
    return keys


def single_query_estimates(
    name: str,
    model: str | Path | GraphSession,
    batch: Batch,
    draws: int,
    seed: int = 0,
    mu: float = 1e-3,
    config: Mapping | None = None,
    *,
    calib_batches: Sequence[Batch] | None = None,
    objective: Objective = lm_objective,
    threads: int | None = None,
    step_seconds: list[float] | None = None,
) -> Iterator[list[np.ndarray]]:
    """``draws`` single-query estimates ĝ of method ``name`` at the model's weights on ``batch``.

    Yields, per draw t (the method's step index, so draws use independent random streams of ``seed``), the list
    of per-linear estimates [d_out, d_in] float32 in manifest order; the arrays are overwritten by the next draw.
    ``model``: an export folder, or an open fp32 ``GraphSession`` (left exactly as it was found, also for the
    dense methods). ``config`` overrides keys of ``CONFIGS[name]``. ZO-Act calibrates on ``calib_batches``
    (default ``[batch]``). ``step_seconds``, if given, receives the wall time of each draw's ``method.step``.
    """
    session = model if isinstance(model, GraphSession) else GraphSession(model, threads=threads)
    linears = session.manifest.linears
    layouts = {p.name: p.layout for p in session.manifest.params}
    method = make_method(name, mu, config)
    dense = _dense(name)
    oracle = Oracle(session, fold=dense)
    method.init(oracle, seed)
    if method.needs_calibration:
        method.calibrate(oracle, list(calib_batches) if calib_batches is not None else [batch])
    start = {k: oracle.params[k].copy() for k in _written_params(name, method, oracle)} if dense else {}
    out = [np.empty((s.d_out, s.d_in), np.float32) for s in linears]
    try:
        for t in range(draws):
            t0 = time.perf_counter()
            report = method.step(oracle, batch, objective, t)
            if step_seconds is not None:
                step_seconds.append(time.perf_counter() - t0)
            if report.skipped:
                raise RuntimeError(f"{name}: draw {t} skipped (non-finite loss)")
            if dense:
                for s, buf in zip(linears, out, strict=True):
                    before, after = start[s.weight], oracle.params[s.weight]
                    if layouts[s.weight] == "in_out":  # stored [d_in, d_out]
                        before, after = before.T, after.T
                    np.subtract(before, after, out=buf)  # lr = 1: the change is −ĝ
                for k, w in start.items():
                    oracle.params[k][...] = w  # in place: the buffers stay bound
            elif isinstance(method, ZOAct):  # FZOO too: C is its trained coordinate
                for s, buf in zip(linears, out, strict=True):
                    a = oracle.trained.adapters[s.name]
                    np.matmul(-a.q, a.p.T, out=buf)
                    a.q[...] = 0.0  # C, stepped in place: the next draw starts at the base again
            else:
                if not oracle.trained.adapters:  # a readback that reads nothing would yield zeros, silently
                    raise RuntimeError(f"{name}: draw {t} wrote no adapter; is it a dense method (see _dense)?")
                for s, buf in zip(linears, out, strict=True):
                    a = oracle.trained.adapters.get(s.name)
                    if a is None or not a.rank:
                        buf.fill(0.0)
                    else:
                        np.matmul(-a.q, a.p.T, out=buf)
                oracle.trained.adapters.clear()
            yield out
    finally:
        for k, w in start.items():  # also when the consumer stops early or a draw fails
            oracle.params[k][...] = w
        oracle.trained.adapters.clear()


# --- cosines, streamed ----------------------------------------------------------------------------------------------
def dot64(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩ with float64 accumulation (one layer at a time keeps the float64 copies small)."""
    return float(np.dot(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()))


def cosine(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Cosine of two vectors given as matching lists of blocks (per-layer arrays, or one flat array each)."""
    ab = aa = bb = 0.0
    for x, y in zip(a, b, strict=True):
        ab += dot64(x, y)
        aa += dot64(x, x)
        bb += dot64(y, y)
    return ab / np.sqrt(aa * bb) if aa > 0 and bb > 0 else 0.0


class CosineMeter:
    """Cosines of streamed estimates with one reference gradient (given per layer, e.g. memory-mapped views), and
    of the running mean of all estimates added (a float32 running sum: one model-sized buffer)."""

    def __init__(self, grad: Sequence[np.ndarray], *, keep_mean: bool = True) -> None:
        self.grad = list(grad)
        self.grad_norm = float(np.sqrt(sum(dot64(g, g) for g in self.grad)))
        if not self.grad_norm > 0:
            raise ValueError("the reference gradient is zero")
        self.cosines: list[float] = []
        self.norm_ratios: list[float] = []  # ‖ĝ‖ / ‖∇L‖
        self._sum = [np.zeros(g.shape, np.float32) for g in self.grad] if keep_mean else None

    def add(self, est: Sequence[np.ndarray]) -> float:
        dot = nn = 0.0
        for e, g in zip(est, self.grad, strict=True):
            e64 = np.asarray(e, np.float64).ravel()
            dot += float(np.dot(e64, np.asarray(g, np.float64).ravel()))
            nn += float(np.dot(e64, e64))
        if self._sum is not None:
            for s, e in zip(self._sum, est, strict=True):
                s += e
        norm = float(np.sqrt(nn))
        c = dot / (norm * self.grad_norm) if norm > 0 else 0.0
        self.cosines.append(c)
        self.norm_ratios.append(norm / self.grad_norm)
        return c

    def mean_cosine(self) -> float:
        """Cosine of the mean of every estimate added so far (the sum's direction: the same)."""
        if self._sum is None or not self.cosines:
            raise ValueError("no running mean: construct with keep_mean=True and add estimates first")
        return cosine(self._sum, self.grad)


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, std (population), min, quartiles, max."""
    v = np.asarray(values, np.float64)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "q25": float(q25),
        "median": float(q50),
        "q75": float(q75),
        "max": float(v.max()),
    }
