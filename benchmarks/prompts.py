"""Zero-shot accuracy of every candidate prompt of the built-in tasks, on dev and on held-out test.

    python benchmarks/prompts.py                        # RT and TREC, SmolLM2-135M fp32, 2 threads (~30 min)
    python benchmarks/prompts.py --report-only          # the table from benchmarks/results/prompts.jsonl
    python benchmarks/prompts.py --tasks trec --force   # rerun one task's cells

What ``zo_edge.prompts.select_prompt`` sees and what it should have picked: for each task and each prompt of
``task.prompt_candidates()``, accuracy and macro-F1 on the dev split a run selects on (``task.load(seed=0, k=16)``:
16 per class) and on the fixed held-out test split (Rotten Tomatoes: its first ``--n-test`` = 500; TREC: all 500),
each ± its binomial standard error. ``max_len`` per prompt: ``choose_max_len`` on the train + dev examples (98th
percentile, cap 256). The prompt a run would choose (on dev) is marked *; the best on test is marked in bold.

One cell per (task, prompt, split), appended to ``--out`` as a JSON line; stored cells are skipped unless
``--force``, so an interrupted run resumes. Runs in this process (no torch); ``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, load_results, machine_info  # noqa: E402

from zo_edge.metrics import standard_error  # noqa: E402
from zo_edge.prompts import choose  # noqa: E402
from zo_edge.tasks import get_task  # noqa: E402

TEST_N = {"rotten-tomatoes": 500, "trec": 500}


def cell_key(task: str, prompt: str, split: str) -> str:
    return f"{task}/{prompt}/{split}"


def run(args) -> None:
    from runtime.oracle import Oracle
    from runtime.session import GraphSession
    from zo_edge.batching import choose_max_len, prompt_lengths
    from zo_edge.data import load_tokenizer
    from zo_edge.evaluate import evaluate

    done = load_results(args.out)
    session = GraphSession(args.model, threads=args.threads)
    oracle = Oracle(session)
    tok = load_tokenizer(args.model)
    plans = []  # (task name, prompt, variant, max_len, {split: examples})
    for name in args.tasks:
        task = get_task(name)
        data = task.load(seed=0, k=16)
        splits = {"dev": data.dev, "test": data.test[: TEST_N.get(name, len(data.test))]}
        for prompt in task.prompt_candidates():
            variant = task.with_prompt(prompt)
            plans.append((name, prompt, variant, choose_max_len(tok, variant, data.train + data.dev), splits))
    for split in ("dev", "test"):  # every dev cell first: the selection is known early, the test cells follow
        for name, prompt, variant, max_len, splits in plans:
            examples = splits[split]
            key = cell_key(name, prompt.name, split)
            if key in done and not args.force:
                continue
            t0 = time.perf_counter()
            # shortest first: a batch pads to its longest row, so length-sorted batches waste little (the
            # accuracy does not depend on the order)
            lengths = prompt_lengths(tok, variant, examples)
            ordered = [examples[i] for i in np.argsort(lengths, kind="stable")]
            r = evaluate(oracle, tok, variant, ordered, max_len=max_len)
            row = {
                "key": key,
                "task": name,
                "prompt": prompt.name,
                "describe": prompt.describe(),
                "split": split,
                "accuracy": r.accuracy,
                "macro_f1": r.macro_f1,
                "n": r.n,
                "truncated": r.truncated,
                "max_len": max_len,
                "seconds": round(time.perf_counter() - t0, 1),
                "threads": args.threads,
                "model": str(args.model),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"  {key}: {r.accuracy:.3f} (n={r.n}, max_len {max_len}, {row['seconds']} s)", flush=True)


def report(results: dict[str, dict], tasks: list[str]) -> str:
    """Per task: one row per prompt, dev and test accuracy ± s.e. and macro-F1; * = what dev selection picks."""
    out = []
    for name in tasks:
        rows = [r for r in results.values() if r["task"] == name]
        prompts = list(dict.fromkeys(r["prompt"] for r in rows))
        if not prompts:
            continue
        cell = {(r["prompt"], r["split"]): r for r in rows}
        describe = {p.name: p.describe() for p in get_task(name).prompt_candidates()}
        pick = None
        if all((p, "dev") in cell for p in prompts):  # select_prompt's training choice, on a balanced dev split
            dev = [SimpleNamespace(**{"auc": math.nan, **cell[(p, "dev")]}) for p in prompts]  # older cells: no AUC
            pick = prompts[choose(dev, by_f1=False)[0]]
        tests = {p: cell[(p, "test")]["accuracy"] for p in prompts if (p, "test") in cell}
        best_test = max(tests, key=tests.get) if tests else None
        out += [f"### {name}", ""]
        out += [
            "| | prompt | template -> label words | max_len | dev acc | dev macro-F1 | test acc | test macro-F1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in prompts:
            d, t = cell.get((p, "dev")), cell.get((p, "test"))
            any_row = d or t

            def acc(r):
                return f"{r['accuracy']:.3f} ± {standard_error(r['accuracy'], r['n']):.3f} (n={r['n']})" if r else "-"

            def f1(r):
                return f"{r['macro_f1']:.3f}" if r else "-"

            test_acc = acc(t)
            if p == best_test:
                test_acc = f"**{test_acc}**"
            shown = describe.get(p, any_row["describe"]).replace("|", "&#124;")
            out.append(
                f"| {'*' if p == pick else ''} | {p} | {shown} | "
                f"{any_row['max_len']} | {acc(d)} | {f1(d)} | {test_acc} | {f1(t)} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "smollm2-fp32"), help="fp32 or INT4 export")
    ap.add_argument("--tasks", default="rotten-tomatoes,trec", help="comma list of built-in tasks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "prompts.jsonl")
    ap.add_argument("--force", action="store_true", help="rerun cells already stored")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    if not args.report_only:
        if not (Path(args.model) / "manifest.json").is_file():
            sys.exit(f"{args.model} is not an export; run `zo-edge export smollm2-135m --out {args.model}`")
        print("machine:", json.dumps(machine_info()), flush=True)
        run(args)
    print(report(load_results(args.out), args.tasks))


if __name__ == "__main__":
    main()
