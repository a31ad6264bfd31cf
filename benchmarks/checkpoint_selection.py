"""Which checkpoint should a run call "the trained model"? The head recipe's selection rules against held-out test.

    python benchmarks/checkpoint_selection.py --seeds 0,1,2 --threads 1      # one cell per seed, resumable
    python benchmarks/checkpoint_selection.py --report-only

Why: ``zo-edge train`` keeps as ``best`` the checkpoint with the highest dev accuracy, on the recipe's 128 dev
examples (s.e. ≈ 0.037), among 5 evaluations; RESULTS.md §13.4 found that wherever that pick and the last step
differed, the last step scored higher on test (4 of 4 runs). This measures the rules on the same trajectories.

A cell (one seed) runs the head recipe (``zo_edge.recipes.HEAD``, fp32 SmolLM2, RT) through the real path
(``zo_edge.train.prepare`` + ``run_training``: prompt selection on dev, the prefix cache, the loop) with an
``on_step`` hook that, every ``--every`` steps and at step 0, scores the run's dev split and the first ``--n-test``
test examples: accuracy, macro-F1, AUC and the candidates' cross-entropy (mean -log softmax over the class scores,
the classification objective itself on held-out data). The report applies each rule to the dev numbers at the
recipe's own evaluation steps (every ``eval_every`` = 500, step 0 included) and prints the test accuracy of the
checkpoint it picks, with the oracle (best on test) beside it:

* ``dev accuracy`` (``--pick best``: the first of tied maxima), ``last step``, ``dev CE`` (lowest), ``dev AUC``;
* ``one-se`` (``--pick one-se``): the latest checkpoint whose dev accuracy is within one binomial s.e. of the
  highest so far. Both ``--pick`` rules are replayed through ``zo_edge.metrics.pick_rule``, the loop's own.

Results: ``benchmarks/results/checkpoint_selection.jsonl`` (one line per seed; ``--force`` reruns). The run folders
are scratch under ``runs/checkpoint_selection/`` (replaced when a cell reruns).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, cell_main, load_results, machine_info, run_cell  # noqa: E402

from zo_edge.metrics import pick_rule, standard_error  # noqa: E402

SCRIPT = Path(__file__).name
RUNS = ROOT / "runs" / "checkpoint_selection"


def measure(p, examples) -> dict:
    """Dev or test metrics of the oracle as it is; ``ce``: the classification objective on those examples
    (``zo_edge.objectives.cross_entropy`` of the class scores, which holds up to a per-row constant)."""
    from zo_edge.objectives import cross_entropy
    from zo_edge.train import evaluate_on

    r = evaluate_on(p, examples, 0)
    gold = [p.task.class_index(e.label) for e in examples]
    ce = float(cross_entropy(r.loglik, gold).mean())
    return {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "auc": r.auc, "ce": ce, "n": r.n}


def cell(spec: dict) -> dict:
    from zo_edge.config import TrainConfig
    from zo_edge.prompts import chosen
    from zo_edge.recipes import HEAD
    from zo_edge.train import prepare, run_training

    run_dir = Path(spec["run_dir"])
    if run_dir.exists():  # this benchmark's own scratch: a cell that reruns starts afresh
        shutil.rmtree(run_dir)
    flat = {**HEAD, "model": spec["model"], "task": spec["task"], "seed": spec["seed"], "out": str(run_dir)}
    flat.update(threads=spec["threads"], steps=spec.get("steps") or HEAD["steps"], k=spec.get("k") or HEAD["k"])
    cfg = TrainConfig.from_flat(flat)
    t0 = time.perf_counter()
    p = prepare(cfg)
    test = list(p.data.test[: spec["n_test"]])
    rows = []

    def record(step: int) -> None:
        rows.append({"step": step, "dev": measure(p, p.data.dev), "test": measure(p, test)})
        d, t = rows[-1]["dev"], rows[-1]["test"]
        print(
            f"  step {step:5d}  dev acc {d['accuracy']:.3f} auc {d['auc']:.3f} ce {d['ce']:.4f}"
            f"  test acc {t['accuracy']:.3f} ce {t['ce']:.4f}",
            file=sys.stderr,
            flush=True,
        )

    record(0)

    clock = {"start": time.perf_counter()}

    def on_step(step: int, report) -> None:
        if step == 1:  # the prefix pass over the training reviews (and the method's init) came before step 1
            clock["prefix_s"] = time.perf_counter() - clock["start"]
        if step % spec["every"] == 0:
            record(step)

    result = run_training(p, on_step=on_step)
    return {
        "prompt": chosen(p.prompt_scores).prompt.name if p.prompt_scores else p.task.prompt.describe(),
        "dev_n": len(p.data.dev),
        "eval_every": cfg.eval_every,
        "steps": cfg.steps,
        "rows": rows,
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "train_examples": len(p.data.train),
        "prefix_s": round(clock.get("prefix_s", float("nan")), 1),
        "cell_s": round(time.perf_counter() - t0, 1),
    }


# --- rules --------------------------------------------------------------------------------------------------------
def replay(select: str, rows: list[dict]) -> dict:
    """The row ``zo-edge train --pick <select>`` keeps: the product's rule (``zo_edge.metrics.pick_rule``)
    applied to the dev accuracies in step order, as the training loop applies it."""
    rule, best, kept = pick_rule(select), -np.inf, rows[0]
    for r in rows:
        value = r["dev"]["accuracy"]
        if rule(value, best, r["dev"]["n"]):
            kept = r
        best = max(best, value)
    return kept


def pick(rule: str, rows: list[dict]) -> dict:
    """The row ``rule`` selects from ``rows`` (the evaluations a run made, in step order), from dev numbers only."""
    dev = [r["dev"] for r in rows]
    if rule == "dev accuracy":
        return replay("best", rows)
    if rule == "last step":
        return rows[-1]
    if rule == "dev CE":
        return rows[int(np.argmin([d["ce"] for d in dev]))]
    if rule == "dev AUC":
        return rows[int(np.argmax([d["auc"] for d in dev]))]
    if rule == "one-se":
        return replay("one-se", rows)
    raise ValueError(rule)


RULES = ("dev accuracy", "last step", "dev CE", "dev AUC", "one-se")


def report(results: dict) -> None:
    groups: dict[int, list[dict]] = {}
    for r in results.values():
        if r.get("rows"):
            groups.setdefault(r.get("k") or 0, []).append(r)
    if not groups:
        print("no stored cells")
    for k, cells in sorted(groups.items()):
        print(f"\n## k = {k or 'the recipe'}'s training reviews per class")
        report_group(sorted(cells, key=lambda r: r["seed"]))


def report_group(cells: list[dict]) -> None:
    for r in cells:
        print(f"\nseed {r['seed']} (prompt {r['prompt']}, dev n {r['dev_n']}, test n {r['rows'][0]['test']['n']}):")
        print("| step | dev acc | dev AUC | dev CE | test acc | test CE |\n|---|---|---|---|---|---|")
        for row in r["rows"]:
            d, t = row["dev"], row["test"]
            print(
                f"| {row['step']} | {d['accuracy']:.3f} | {d['auc']:.3f} | {d['ce']:.4f} | {t['accuracy']:.3f} |"
                f" {t['ce']:.4f} |"
            )
    print("\ntest accuracy of the checkpoint each rule picks (the recipe's evaluation steps, every eval_every):")
    print("| rule | " + " | ".join(f"seed {r['seed']}" for r in cells) + " | mean | mean regret vs oracle |")
    print("|---|" + "---|" * (len(cells) + 2))
    oracle = []
    table: dict[str, list[tuple[int, float]]] = {}
    for r in cells:
        at = [row for row in r["rows"] if row["step"] % r["eval_every"] == 0 or row["step"] == r["steps"]]
        oracle.append(max(row["test"]["accuracy"] for row in at))
        for rule in RULES:
            chosen = pick(rule, at)
            table.setdefault(rule, []).append((chosen["step"], chosen["test"]["accuracy"]))
    for rule, picks in table.items():
        accs = [a for _, a in picks]
        regret = np.mean(np.array(oracle) - np.array(accs))
        cells_txt = " | ".join(f"{a:.3f} (step {s})" for s, a in picks)
        print(f"| {rule} | {cells_txt} | {np.mean(accs):.3f} | {100 * regret:.1f} points |")
    print(f"| oracle (best on test) | {' | '.join(f'{a:.3f}' for a in oracle)} | {np.mean(oracle):.3f} | 0 |")
    n = cells[0]["rows"][0]["test"]["n"]
    print(f"(test n = {n}: s.e. of one accuracy ≈ {standard_error(0.8, n):.3f}; the rules share the trajectories)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "smollm2-fp32"))
    ap.add_argument("--task", default="rotten-tomatoes")
    ap.add_argument("--n-test", type=int, default=1000, help="test examples scored at every evaluation")
    ap.add_argument("--every", type=int, default=250, help="steps between the hook's dev + test scorings")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="training steps (0: the recipe's; a smoke run: 20)")
    ap.add_argument("--k", type=int, default=0, help="training reviews per class (0: the recipe's)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "checkpoint_selection.jsonl")
    ap.add_argument("--force", action="store_true", help="rerun stored cells")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not args.report_only:
        print(f"machine: {machine_info()}", flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            spec = {
                "key": f"{args.task}/head/s{seed}" + (f"/k{args.k}" if args.k else ""),
                "model": args.model,
                "task": args.task,
                "seed": seed,
                "n_test": args.n_test,
                "every": args.every,
                "threads": args.threads,
                "steps": args.steps,
                "k": args.k,
                "run_dir": str(RUNS / (f"{args.task}-s{seed}" + (f"-k{args.k}" if args.k else ""))),
            }
            run_cell(SCRIPT, spec, args.results, force=args.force, timeout=3 * 3600)
    report(load_results(args.results))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        cell_main(cell)
    else:
        main()
