"""One zo-edge benchmark cell, run in its own process: a plain forward of the training graph, or one method's step.

    python benchmarks/step_cost.py '{"key": "fwd", "kind": "forward", "model": "artifacts/smollm2-fp32",
                                     "batches": "benchmarks/results/batches_b16_l64.npz", "reps": 5}'
    python benchmarks/step_cost.py '{"key": "lozo", "kind": "method", "method": "lozo", ...}'

Normally started by ``benchmarks/run.py``, which gives every cell a fresh process so that the peak RSS printed here
(``ru_maxrss``) belongs to this configuration alone. Two peaks are reported: ``peak_rss_mb``, the process's
lifetime peak, and ``peak_run_mb``, the peak after loading (forwards/steps only; see ``common.reset_peak``).

``kind = "forward"`` is the floor: a GraphSession and its forwards, nothing else (what an inference-only process of
the same graph costs). ``kind = "method"`` builds the method exactly as ``zo-edge train`` does
(``zo_edge.train.build_method``, the method's default hyperparameters), calibrates it if it needs calibration (timed
separately), runs one warm-up step and then ``reps`` timed steps on batch 0, each followed by one timed plain forward
(``forward_inproc_s``: the step / forward ratio from interleaved measurements); the step's split comes from its
``StepReport`` (t_forward / t_update / t_sample). Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cell_main, load_batches, median, reset_peak  # noqa: E402


def _rss_now_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _session(spec: dict):
    from runtime.session import GraphSession

    threads = spec.get("threads") or os.cpu_count()
    t0 = time.perf_counter()
    session = GraphSession(spec["model"], spec.get("provider", "cpu"), threads=threads)
    return session, time.perf_counter() - t0, threads


def forward_cell(spec: dict) -> dict:
    from runtime.batch import Batch

    batches = [Batch.from_dict(b) for b in load_batches(spec["batches"])]
    batch = batches[spec.get("batch_index", 0)]
    session, t_load, threads = _session(spec)
    rss_loaded = _rss_now_mb()
    reset_peak()
    session.forward(batch)  # warm-up: onnxruntime allocates its arenas on the first run
    times = []
    for _ in range(spec.get("reps", 5)):
        t0 = time.perf_counter()
        session.forward(batch)
        times.append(time.perf_counter() - t0)
    return {
        "threads": threads,
        "shape": list(batch.input_ids.shape),
        "load_s": round(t_load, 2),
        "rss_loaded_mb": round(rss_loaded, 1),
        "forward_s": round(median(times), 4),
        "forward_all_s": [round(t, 4) for t in times],
    }


def method_cell(spec: dict) -> dict:
    from runtime.batch import Batch
    from runtime.oracle import Oracle, lm_objective
    from zo_edge.config import TrainConfig
    from zo_edge.train import build_method

    batches = [Batch.from_dict(b) for b in load_batches(spec["batches"])]
    batch = batches[spec.get("batch_index", 0)]
    session, t_load, threads = _session(spec)
    oracle = Oracle(session, micro_batch=spec.get("micro_batch", 0))
    rss_loaded = _rss_now_mb()
    reset_peak()
    cfg = TrainConfig.from_flat(
        dict(model=spec["model"], method=spec["method"], steps=10_000, **spec.get("overrides", {}))
    )
    if "mezo_slab_chunks" in spec:  # A/B of MeZO's z slab size (RESULTS.md §14.1); a huge value = whole tensors
        import zo_edge.methods.mezo

        zo_edge.methods.mezo.SLAB_CHUNKS = int(spec["mezo_slab_chunks"])
    method = build_method(cfg)
    method.init(oracle, seed=0)
    out: dict = {"threads": threads, "shape": list(batch.input_ids.shape), "load_s": round(t_load, 2)}
    out["rss_loaded_mb"] = round(rss_loaded, 1)
    if method.needs_calibration:
        n = method.config.calib_batches
        calib = [batches[1 + i % (len(batches) - 1)] for i in range(n)] if len(batches) > 1 else [batch] * n
        t0 = time.perf_counter()
        method.calibrate(oracle, calib)
        out["calibration_s"] = round(time.perf_counter() - t0, 2)
        out["calibration_forwards"] = oracle.forwards
        out["calib_batches"] = n
    method.step(oracle, batch, lm_objective, 0)  # warm-up
    rows, plain = [], []
    for t in range(1, spec.get("reps", 3) + 1):
        t0 = time.perf_counter()
        r = method.step(oracle, batch, lm_objective, t)
        total = time.perf_counter() - t0
        rows.append((total, r.t_forward, r.t_update, r.t_sample, r.forwards, r.loss))
        # a plain forward (no ports, no adapter) right after each step, in this process: step / forward ratios
        # from interleaved measurements survive a machine whose load drifts between cells
        t0 = time.perf_counter()
        oracle.run(batch)  # = session.forward(batch), micro-batched like the steps when micro_batch is set
        plain.append(time.perf_counter() - t0)
    cols = list(zip(*rows, strict=True))
    out.update(
        step_s=round(median(cols[0]), 4),
        t_forward=round(median(cols[1]), 4),
        t_update=round(median(cols[2]), 4),
        t_sample=round(median(cols[3]), 4),
        t_other=round(median([a - b - c - d for a, b, c, d, *_ in rows]), 4),
        forward_inproc_s=round(median(plain), 4),
        forwards=int(cols[4][-1]),
        step_all_s=[round(x, 4) for x in cols[0]],
        losses=[round(float(x), 4) for x in cols[5]],
        state_mb=round(sum(v.nbytes for v in method.state.values()) / 2**20, 2),
        hyper={k: getattr(method.config, k) for k in ("mu", "rank", "queries") if hasattr(method.config, k)},
    )
    return out


def main(spec: dict) -> dict:
    return {"forward": forward_cell, "method": method_cell}[spec["kind"]](spec)


if __name__ == "__main__":
    cell_main(main)
