"""Cost per training example on the classification objective: zo-edge vs PyTorch MeZO, side by side in one process.

    .venv/bin/python benchmarks/per_example.py --model artifacts/smollm2-fp32 --threads 1

Issue #14, item 7 (first bullet) and its targets: per training example, RT batch 16, every low-rank method >= 5x
faster than PyTorch MeZO, zo-edge MeZO >= 3x; TREC >= 10x. The reference does the classification work the way
MeZO's code does (princeton-nlp/MeZO: one row per (example, candidate), the prompt recomputed per candidate, Gaussian
z drawn by torch for 134.5M weights, ``benchmarks/torch_reference.mezo_step``); zo-edge scores an example in one row
(the graph's candidate scoring) and each method is built as ``zo-edge train`` builds it (its default
hyperparameters; ZO-Act and AGZO calibrated on one batch, one round: a basis's quality does not change a step's
cost). The ``head`` row is the recipe ``zo-edge train`` runs by default (``--recipe head``: MeZO + Adam on the final
norm's gain through the candidates' head, 32 queries a step) on its prefix-cached oracle; its one-time cost, one
pass of each training example through the frozen stack, is reported apart (``prefix_ms_per_example``).

Timing: every step of every row is timed in turn (row order rotated per rep) with ``time.process_time()``: CPU
seconds of this process, so other jobs on the cores (this benchmark ran beside others) do not count, as they would
in wall time; wall time is recorded too. ``--threads`` (1 by default) is both engines' intra-op threads. Results:
``benchmarks/results/per_example.json``; the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info  # noqa: E402

TASKS = ("rotten-tomatoes", "trec")
METHODS = ("mezo", "lozo", "subzero", "agzo", "zo-act")
BATCH = 16


def _timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def task_rows(args, task_name: str, torch_model, torch_params) -> dict:
    import torch

    from runtime.oracle import Oracle
    from runtime.session import GraphSession
    from zo_edge.config import TrainConfig
    from zo_edge.data import TaskBatches, load_tokenizer
    from zo_edge.tasks import get_task
    from zo_edge.train import build_method, prepare

    task = get_task(task_name)
    data = task.load(seed=0, k=16)
    tok = load_tokenizer(args.model)

    def batch(one_row: bool):
        tb = TaskBatches(task, data.train, tok, BATCH, args.max_len, 0, "classification", balance="off")
        tb.candidate_scoring = one_row
        return tb

    (b1, obj1), (bm, _) = batch(True).next(), batch(False).next()
    assert b1.candidate_ids is not None and bm.candidate_ids is None, "the layouts were not what this compares"
    tb = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in (bm.input_ids, bm.attention_mask, bm.loss_mask))

    from torch_reference import mezo_step

    steps: dict[str, object] = {"torch-mezo": lambda t: mezo_step(torch_model, torch_params, tb, seed=1000 + t)}
    oracle = Oracle(GraphSession(args.model, threads=args.threads))
    for name in METHODS:
        flat = dict(model=args.model, method=name, objective="classification", steps=10_000)
        if name == "mezo":
            flat["dist"] = "rademacher"  # what the recipes use: a Gaussian draw of 134.5M values costs two forwards
        if name == "zo-act":
            flat.update(calib_batches=1, calib_rounds=1)
        method = build_method(TrainConfig.from_flat(flat))
        method.init(oracle, seed=0)
        if method.needs_calibration:
            method.calibrate(oracle, batch(True).calibration(method.config.calib_batches))
        steps[name] = lambda t, m=method: m.step(oracle, b1, obj1, t)
    # the default recipe, on its own prefix-cached oracle (the head's split), the same 16 examples in one row each
    cfg = TrainConfig.from_flat(
        dict(model=args.model, recipe="head", task=task_name, template="", k=16, dev_k=0, batch_size=BATCH,
             max_len=args.max_len, threads=args.threads, out="/tmp/per-example-unused")
    )  # fmt: skip
    p = prepare(cfg)
    hb, hobj = TaskBatches(
        p.task, data.train, p.tokenizer, BATCH, args.max_len, 0, "classification", candidate_scoring=True
    ).next()
    prefix_cpu, prefix_wall = _timed(lambda: p.oracle.prefix.hidden(hb))  # the one-time pass, these 16 examples
    head = build_method(cfg)
    head.init(p.oracle, seed=0)
    steps["head"] = lambda t: head.step(p.oracle, hb, hobj, t)

    for f in steps.values():  # warm-up: arenas, first-call allocations
        f(0)
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            c, w = _timed(lambda n=name, r=rep: steps[n](1 + r))
            cpu[name].append(c)
            wall[name].append(w)
    ref = statistics.median(cpu["torch-mezo"])
    rows = {}
    for name in names:
        c = statistics.median(cpu[name])
        rows[name] = {
            "cpu_s_per_step": round(c, 4),
            "wall_s_per_step": round(statistics.median(wall[name]), 4),
            "ms_per_example": round(1000 * c / BATCH, 3),
            "x_faster_than_torch_mezo": round(ref / c, 2),
            "rows": int(bm.size if name == "torch-mezo" else b1.size),
        }
    rows["head"]["prefix_ms_per_example"] = round(1000 * prefix_cpu / BATCH, 2)
    rows["head"]["prefix_wall_ms_per_example"] = round(1000 * prefix_wall / BATCH, 2)
    return {"seq_one_row": int(b1.input_ids.shape[1]), "seq_many_rows": int(bm.input_ids.shape[1]), "rows": rows}


def main() -> None:
    import torch

    from export.source import resolve_source

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32", help="fp32 export with the candidates' head")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of onnxruntime and torch (default 1)")
    ap.add_argument("--max-len", type=int, default=64, help="token budget per row (default 64)")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per row (median; default 3)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "per_example.json", help="results JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    model, _ = resolve_source("smollm2-135m").load()
    params = [q for q in model.parameters() if q.requires_grad]
    result = {"machine_before": machine_info(), "threads": args.threads, "batch": BATCH, "tasks": {}}
    for name in TASKS:
        result["tasks"][name] = task_rows(args, name, model, params)
        print(json.dumps({name: result["tasks"][name]}), flush=True)
    result["machine_after"] = machine_info()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n| task | row | rows per pass | CPU s per step | ms per example | x faster than PyTorch MeZO |")
    print("|---|---|---|---|---|---|")
    for task_name, t in result["tasks"].items():
        for name, r in t["rows"].items():
            print(
                f"| {task_name} | {name} | {r['rows']} | {r['cpu_s_per_step']:.3f} | {r['ms_per_example']:.2f} | "
                f"**{r['x_faster_than_torch_mezo']}x** |"
            )
        h = t["rows"]["head"]
        print(f"| {task_name} | head: one-time prefix pass | {BATCH} | | {h['prefix_ms_per_example']:.2f} | |")
    print(f"load average before {result['machine_before']['loadavg']}, after {result['machine_after']['loadavg']}")


if __name__ == "__main__":
    main()
