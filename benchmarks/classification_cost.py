"""Classification in one row per example vs one row per (example, label word), measured side by side in one run.

    .venv/bin/python benchmarks/classification_cost.py --model artifacts/smollm2-fp32-cand --threads 2

Issue #14 item 1. With single-token label words (every built-in task), each candidate's log-likelihood is one
log-probability at the prompt's last position, so the graph's candidate scoring (``row_candidate_logp``) scores an
example in ONE row; before, an example was C rows (RT 2, TREC 6), each recomputing the prompt. Per task:

* **training**: one ZO-Act step (the method's defaults, as ``zo-edge train`` builds it, but calibrated on one batch
  in one round: the bases' quality does not change a step's cost) on the classification objective, batch 16, on
  the same 16 examples in both layouts, steps interleaved (one-row, many-row, one-row, ...) so that machine load
  hits both alike; reported per training example (step time / 16) with the ratio many-row / one-row. The layouts'
  classification losses at the same weights are checked equal first;
* **evaluation**: ``zo_edge.evaluate.evaluate`` over the same held-out examples both ways (16 examples per pass),
  examples/s and the ratio, with identical predictions checked (and the max |Δ class log-likelihood| printed).

Needs an export with the candidate-scoring feature (``zo-edge export smollm2-135m --out artifacts/smollm2-fp32-cand``);
the machine load (``uptime``) is printed beside the numbers. Nothing here imports torch. 2026-12-01, load average
9-12 on 2 cores (20 min wall): per training example RT 1.88x, TREC 4.53x; eval RT 2.0x, TREC 5.92x, identical
predictions (``benchmarks/results/classification_cost.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from runtime import contract
from runtime.oracle import Oracle
from runtime.session import GraphSession
from zo_edge.config import TrainConfig
from zo_edge.data import TaskBatches, load_tokenizer
from zo_edge.evaluate import evaluate
from zo_edge.tasks import get_task
from zo_edge.train import build_method

TASKS = ("rotten-tomatoes", "trec")
BATCH = 16


def _uptime() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"


def _training(oracle: Oracle, model: str, task_name: str, max_len: int, reps: int) -> dict:
    task = get_task(task_name)
    data = task.load(seed=0, k=16)
    tok = load_tokenizer(model)

    def batches(one_row: bool) -> TaskBatches:
        tb = TaskBatches(task, data.train, tok, BATCH, max_len, 0, "classification", balance="off")
        tb.candidate_scoring = one_row
        return tb

    (b1, obj1), (bm, objm) = batches(True).next(), batches(False).next()
    assert b1.candidate_ids is not None and bm.candidate_ids is None, "the layouts were not what this compares"
    loss_diff = float(np.abs(oracle.sample_losses(b1, obj1) - oracle.sample_losses(bm, objm)).max())
    # one calibration batch and round: the bases' quality does not change a step's cost, and the default
    # calibration (8 batches x 3 passes) would be most of this benchmark's time
    flat = dict(model=model, method="zo-act", objective="classification", steps=10_000)
    cfg = TrainConfig.from_flat({**flat, "calib_batches": 1, "calib_rounds": 1})
    method = build_method(cfg)
    method.init(oracle, seed=0)
    method.calibrate(oracle, batches(True).calibration(method.config.calib_batches))
    method.step(oracle, b1, obj1, 0)  # warm-up, both shapes
    method.step(oracle, bm, objm, 1)
    times: dict[str, list[float]] = {"one": [], "many": []}
    for t in range(reps):
        for name, (b, obj) in (("one", (b1, obj1)), ("many", (bm, objm))):
            t0 = time.perf_counter()
            method.step(oracle, b, obj, 2 + 2 * t + (name == "many"))
            times[name].append(time.perf_counter() - t0)
    one, many = statistics.median(times["one"]), statistics.median(times["many"])
    return {
        "rows_one": b1.size,
        "rows_many": bm.size,
        "seq": int(b1.input_ids.shape[1]),
        "step_one_s": round(one, 3),
        "step_many_s": round(many, 3),
        "per_example_one_ms": round(1000 * one / BATCH, 1),
        "per_example_many_ms": round(1000 * many / BATCH, 1),
        "train_ratio": round(many / one, 2),
        "max_abs_dloss": loss_diff,
    }


def _evaluation(oracle: Oracle, model: str, task_name: str, max_len: int, n: int) -> dict:
    task = get_task(task_name)
    examples = task.load(seed=0, k=16).test[:n]
    tok = load_tokenizer(model)
    evaluate(oracle, tok, task, examples[:BATCH], max_len=max_len)  # warm-up
    evaluate(oracle, tok, task, examples[:BATCH], max_len=max_len, one_row=False)
    t0 = time.perf_counter()
    one = evaluate(oracle, tok, task, examples, max_len=max_len, batch_examples=BATCH)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = evaluate(oracle, tok, task, examples, max_len=max_len, batch_examples=BATCH, one_row=False)
    t_many = time.perf_counter() - t0
    same = bool(np.array_equal(one.predictions, many.predictions))
    assert same, f"{task_name}: one-row and per-candidate predictions differ"
    return {
        "eval_n": len(examples),
        "eval_one_ex_s": round(len(examples) / t_one, 1),
        "eval_many_ex_s": round(len(examples) / t_many, 1),
        "eval_ratio": round(t_many / t_one, 2),
        "same_predictions": same,
        "max_abs_dloglik": float(np.abs(one.loglik - many.loglik).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32-cand", help="export with candidate scoring")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--max-len", type=int, default=64, help="token budget per row (default 64)")
    ap.add_argument("--reps", type=int, default=2, help="timed steps per layout (default 2, median)")
    ap.add_argument("--eval-examples", type=int, default=48, help="held-out examples per task (default 48)")
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    args = ap.parse_args()
    session = GraphSession(args.model, threads=args.threads)
    if not session.manifest.has(contract.FEATURE_CANDIDATE_SCORING):
        raise SystemExit(f"{args.model} has no candidate scoring: export a new folder with `zo-edge export`")
    oracle = Oracle(session)
    print(f"{args.model}, {args.threads} threads; before: {_uptime()}", flush=True)
    rows = {}
    for name in TASKS:
        r = _training(oracle, args.model, name, args.max_len, args.reps)
        r.update(_evaluation(oracle, args.model, name, args.max_len, args.eval_examples))
        r["load_after"] = _uptime()
        rows[name] = r
        print(json.dumps({name: r}), flush=True)
    print()
    print(
        "| task | rows/pass one / many | ZO-Act step, ms per example: one / many | train ratio "
        "| eval ex/s: one / many | eval ratio | same predictions | max Δ loglik |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['rows_one']} / {r['rows_many']} | {r['per_example_one_ms']} / {r['per_example_many_ms']} "
            f"| **{r['train_ratio']}x** | {r['eval_one_ex_s']} / {r['eval_many_ex_s']} | **{r['eval_ratio']}x** "
            f"| {r['same_predictions']} | {r['max_abs_dloglik']:.1e} |"
        )
    print(f"after: {_uptime()}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
