"""How far the ``head`` recipe gets per query and step: many recipes over one prepared oracle (RESULTS.md §8).

    python benchmarks/head_sweep.py --model artifacts/smollm2-fp32 \\
        'q4:queries=4,steps=300' 'q32:queries=32,steps=2000,eval_every=500,save_every=500'
    python benchmarks/head_sweep.py --seed 1 ...   # another k-shot/dev draw, prompt choice and perturbation seed

The recipe is ``zo_edge.recipes.RECIPES["head"]`` (MeZO + Adam on the final norm's gain behind the head's split).
``prepare`` runs once (prompt choice on dev, the oracle), the held-out test sentences and the training reviews go
through the prefix once (timed: that pass is the recipe's fixed cost), then each recipe starts from the base
weights and trains through ``run_training`` (the loop of ``zo-edge train``), so the rows differ only in their
flags. Each row prints and appends to ``benchmarks/results/head_sweep.jsonl``: the steps' seconds, held-out
accuracy and macro-F1 of the last state and of the best-dev checkpoint, the machine's load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info  # noqa: E402

from zo_edge.config import TrainConfig  # noqa: E402
from zo_edge.recipes import RECIPES  # noqa: E402
from zo_edge.train import evaluate_on, load_run, prepare, run_training  # noqa: E402


def parse_row(text: str) -> tuple[str, dict[str, str]]:
    name, _, kv = text.partition(":")
    pairs = dict(item.partition("=")[::2] for item in kv.split(",") if item)
    if not name or any(not v for v in pairs.values()):
        raise SystemExit(f"{text!r}: give NAME:key=value[,key=value...]")
    return name, pairs


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32")
    ap.add_argument("--task", default="rotten-tomatoes")
    ap.add_argument("--k", type=int, default=RECIPES["head"]["k"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test", type=int, default=500, help="held-out test sentences")
    ap.add_argument("--runs", default="runs/head_sweep")
    ap.add_argument("rows", nargs="+", help="NAME:key=value,... (flags of zo-edge train over the head recipe)")
    a = ap.parse_args(argv)
    rows = [parse_row(r) for r in a.rows]
    base = {"task": a.task, "recipe": "head", "model": a.model, "k": a.k, "seed": a.seed, "out": f"{a.runs}/prep"}
    t0 = time.time()
    p = prepare(TrainConfig.from_flat(base))
    resolved = {"template": p.cfg.template, "labels": p.cfg.labels, "max_len": p.cfg.max_len}
    print(f"prompt {p.cfg.template!r} ({time.time() - t0:.0f} s with the choice on dev)", flush=True)
    test = p.data.test[: a.test]
    t0 = time.time()
    before = evaluate_on(p, test, 0).summary()
    print(f"before: accuracy {before['accuracy']:.3f} macro-F1 {before['macro_f1']:.3f} (n={len(test)})", flush=True)
    t0 = time.time()
    evaluate_on(p, p.data.train, 0)  # every training review's prefix, once: the recipe's fixed cost
    prefix_s = time.time() - t0
    print(f"prefix pass over {len(p.data.train)} training reviews: {prefix_s:.0f} s", flush=True)
    weights = {k: v.copy() for k, v in p.oracle.params.items()}
    for name, pairs in rows:
        flags = {**base, **resolved, "out": f"{a.runs}/{name}", **{k: _value(v) for k, v in pairs.items()}}
        shutil.rmtree(flags["out"], ignore_errors=True)
        for key, value in weights.items():
            np.copyto(p.oracle.params[key], value)
        p.cfg = TrainConfig.from_flat(flags)
        t0 = time.time()
        run_training(p)
        steps_s = time.time() - t0
        last = evaluate_on(p, test, 0).summary()
        load_run(p.oracle, p.cfg.out, "best")
        best = evaluate_on(p, test, 0).summary()
        row = {
            "key": f"{a.task}/k{a.k}/s{a.seed}/{name}",
            "flags": pairs,
            "prompt": p.cfg.template,
            "train_reviews": len(p.data.train),
            "n_test": len(test),
            "before": before["accuracy"],
            "before_f1": before["macro_f1"],
            "prefix_s": round(prefix_s, 1),
            "steps_s": round(steps_s, 1),
            "last": last["accuracy"],
            "last_f1": last["macro_f1"],
            "best": best["accuracy"],
            "best_f1": best["macro_f1"],
            "machine": machine_info(),
        }
        print(json.dumps(row), flush=True)
        with open(RESULTS_DIR / "head_sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
