"""The time-to-accuracy study: held-out test accuracy against wall-clock minutes of training, on 2 threads.

    python benchmarks/time_to_accuracy.py                      # the full study, in priority order (hours)
    python benchmarks/time_to_accuracy.py --quick              # smoke run: 0.3 min cells, 50 test examples, 1 thread
    python benchmarks/time_to_accuracy.py --tasks rt --rows zo-act,torch-fo --seeds 0 --budget 10
    python benchmarks/time_to_accuracy.py --recipe 'zo-act-top6:method=zo-act,layers=top:6' --rows zo-act-top6
    python benchmarks/time_to_accuracy.py --report-only        # the table and the plots from the stored cells
    python benchmarks/time_to_accuracy.py --list               # the cells, and which are stored

The user's question: *how good does my model get per minute on my machine, at inference memory?* A cell is one
(task, row, seed, budget); its key reads ``rt/zo-act/s0/10m``. Each runs in a fresh subprocess (``tta_cell.py``)
and appends one JSON line to ``results/time_to_accuracy.jsonl``; a stored cell is skipped (``--force`` reruns it),
and an interrupted one resumes from its run folder ``runs/tta/<key>`` (``tta_cell.py`` says how).

Rows (``ROWS``; ``--recipe`` adds more, e.g. a layer set or an estimator once they exist):

* ``zero-shot``: the best prompt, chosen on the dev split among ``task.prompt_candidates()`` with forwards only
  (``zo_edge.prompts.select_prompt``). Its cell runs first for a task and fixes the prompt and ``max_len`` that every
  other row of that task trains and is scored with.
* one row per ZO recipe, through ``zo_edge.train.run_training`` (the loop of ``zo-edge train``): a recipe is the flat
  keys of ``TrainConfig.from_flat`` (method, lr, mu, rank, queries, ...); the rows below take each method's defaults
  with the classification objective (MeZO with Rademacher z: a Gaussian draw of 134.5M values per step costs more
  than its two forwards on this CPU, ``RESULTS.md``).
* ``torch-fo``: PyTorch full fine-tuning, backprop + AdamW (lr 1e-5), ``torch-lora``: PyTorch + ``peft`` LoRA
  (r = 8 on q, k, v, o, gate, up, down; AdamW lr 3e-4), what a laptop user would run instead. Same prompt, same
  candidate cross-entropy, same batches in the same order.

Decisions:

* **Clock**: training wall time only; scoring the test split pauses it (a mark is scored at the first step
  boundary past it). Marks (``--marks``, minutes): 0, 1, 2, 5, 10 and the budget. Minute 0 of a ZO row is the
  zero-shot cell's score (the same graph and weights, so not scored again: an RT test pass costs ~3 min); the torch
  rows score it themselves, which checks their torch-side scoring against the onnxruntime one.
* **Test split**: fixed (``split_seed`` 0, the same for every seed): Rotten Tomatoes its 1000 held-out reviews,
  TREC all 500 of its test split. Standard error of one accuracy: sqrt(p (1 - p) / n); over S seeds the plot and
  table use sqrt(p (1 - p) / n + s² / S), the fixed test set's sampling error plus the seeds' spread s.
* **Data**: Rotten Tomatoes k = 512 per class (1024 training reviews: 10 minutes of ZO-Act at batch 8 sees each a few
  times), batch 8; TREC k = 32 per class (its ABBR class has ~80 questions), batch 4 (24 candidate rows). The run
  seed picks the k-shot set and the order. The dev split (16 / 8 per class, seed 0) only chooses the prompt.
* **Threads**: ``--threads`` (2) for onnxruntime's intra-op pool, torch's ``set_num_threads`` and the BLAS pools
  (``OMP/OPENBLAS/MKL_NUM_THREADS`` of the cells).
* **Memory**: per cell, the training peak RSS (kernel ``VmHWM`` over the training intervals, evaluation and load
  excluded), the same engine's inference-forward peak on the first training batch, and the ratio; and the ratio to
  the onnxruntime inference forward (the zero-shot cell's), the target's "peak <= 1.2x inference".

Queue order: each task's zero-shot cell, then seed 0 of every row (Rotten Tomatoes first), then seeds 1 and 2 of the
headline rows (``HEADLINE``) on Rotten Tomatoes; ``--seeds`` gives every selected row those seeds instead.

Cost (estimate, quiet 2-core machine): 22 training cells x 10 min of training, plus scoring the test split at the
marks (about 3 min per Rotten Tomatoes pass with per-candidate rows, ~1.5 min with an export that has candidate
scoring; TREC similar / about 6x less), plus loads: about 9-10 hours in all (6-7 with candidate scoring). The
queue order makes a stopped study useful early: zero-shot and seed 0 of every row first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, RESULTS_DIR, ROOT, load_results, machine_info, run_cell  # noqa: E402

from zo_edge.recipes import RECIPES  # noqa: E402

TASKS = {
    "rt": dict(task="rotten-tomatoes", k=512, dev_k=16, batch_size=8, n_test=0),
    "trec": dict(task="trec", k=32, dev_k=8, batch_size=4, n_test=0),
}
TASK_TITLES = {"rt": "Rotten Tomatoes", "trec": "TREC"}
ROWS: dict[str, dict] = {
    "zero-shot": {"kind": "zero-shot"},
    "zo-act": {"kind": "zo", "flat": {"method": "zo-act"}},
    "fzoo": {"kind": "zo", "flat": {"method": "fzoo"}},
    "mezo": {"kind": "zo", "flat": {"method": "mezo", "dist": "rademacher"}},
    "lozo": {"kind": "zo", "flat": {"method": "lozo"}},
    "agzo": {"kind": "zo", "flat": {"method": "agzo"}},
    # layer-selective at the extreme: only the final norm's gain (d values), every block a cached prefix, so a step
    # costs the candidates' head alone once each example's prefix has run (runtime/prefix_cache.py, the head's
    # split): the ``head`` recipe of zo_edge/recipes.py, the demo's
    "mezo-head": {
        "kind": "zo",
        "flat": {
            k: RECIPES["head"][k]
            for k in ("method", "layers", "kinds", "optimizer", "lr", "mu", "dist", "queries", "batch_size")
        },
    },
    "torch-fo": {"kind": "torch", "lr": 1e-5},
    "torch-lora": {"kind": "torch", "lr": 3e-4, "lora": {"r": 8, "alpha": 16}},
}
HEADLINE = ("zero-shot", "mezo-head", "zo-act", "fzoo", "torch-fo", "torch-lora")
HEADLINE_SEEDS = (0, 1, 2)
MARKS = (0.0, 1.0, 2.0, 5.0, 10.0)
TABLE_MARKS = (1.0, 5.0, 10.0)
BUDGET = 10.0
QUICK = dict(budget=0.3, marks=(0.0, 0.1, 0.2), n_test=50, threads=1, dev_k=4)


# --- cells --------------------------------------------------------------------------------------------------------
def cell_key(tag: str, row: str, seed: int, budget: float) -> str:
    return f"{tag}/{row}/s0" if row == "zero-shot" else f"{tag}/{row}/s{seed}/{budget:g}m"


def cell_spec(tag: str, row: str, seed: int, args, zs: dict | None) -> dict:
    """A cell's spec; ``zs`` is the task's stored zero-shot cell (its prompt and max_len), None for that cell."""
    key = cell_key(tag, row, seed, args.budget)
    spec = {"key": key, "row": row, "tag": tag, **TASKS[tag], **ROWS[row], "seed": seed, "model": args.model}
    spec.update(threads=args.threads, objective="classification", budget_min=args.budget)
    spec["run_dir"] = str(args.runs / key.replace("/", "_"))
    if args.quick:
        spec.update(n_test=QUICK["n_test"], dev_k=QUICK["dev_k"])
    if row == "zero-shot":
        spec["seed"] = 0
        return spec
    spec["dev_k"] = 0  # training cells do not evaluate on dev (no best checkpoint): the test marks are the record
    marks = {m for m in args.marks if m <= args.budget} | {args.budget}
    if spec["kind"] == "zo":  # minute 0 of a ZO row is the zero-shot cell's score exactly (same graph, same weights)
        marks.discard(0.0)
    spec["marks"] = sorted(marks)
    spec["prompt"], spec["max_len"] = zs["prompt"], zs["max_len"]
    return spec


def grid(args) -> list[tuple[str, str, int]]:
    """(task, row, seed) in queue order: zero-shot, seed 0 of every row, then the headline rows' other seeds."""
    cells = []
    for tag in args.tasks:
        cells.append((0, tag, "zero-shot", 0))
        for row in args.rows:
            if row == "zero-shot":
                continue
            if args.seeds is not None:
                seeds = args.seeds
            else:
                seeds = HEADLINE_SEEDS if (tag == "rt" and row in HEADLINE) else (0,)
            cells += [(1 if s == 0 else 2, tag, row, s) for s in seeds]
    cells.sort(key=lambda c: c[0])  # stable: task order, then row order within a tier
    return [c[1:] for c in cells]


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME:key=value,key=value`` -> (NAME, a ZO row of those flat TrainConfig keys; values JSON where they parse,
    else strings). ``method`` is required."""
    name, _, body = text.partition(":")
    flat = {}
    for part in filter(None, body.split(",")):
        k, eq, v = part.partition("=")
        if not eq:
            raise SystemExit(f"--recipe {text!r}: {part!r} is not key=value")
        try:
            flat[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            flat[k.strip()] = v.strip()
    if not name or "method" not in flat:
        raise SystemExit(f"--recipe {text!r}: give NAME:method=M[,key=value...]")
    return name.strip(), {"kind": "zo", "flat": flat}


def _cleanup(spec: dict) -> None:
    """A stored cell's run folder is no longer needed (MeZO checkpoints hold the whole model, twice)."""
    shutil.rmtree(spec["run_dir"], ignore_errors=True)


def run(args) -> None:
    os.environ.update({v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    zs_by_task: dict[str, dict] = {}
    timeout = args.budget * 60 * 2 + 3600  # load, the test evaluations, a loaded machine
    for tag, row, seed in grid(args):  # each task's zero-shot cell comes first: its prompt is every row's
        if row == "zero-shot":
            spec = cell_spec(tag, row, 0, args, None)
            zs_by_task[tag] = run_cell("tta_cell.py", spec, args.results, force=args.force, timeout=timeout)
            if "error" in zs_by_task[tag]:
                print(
                    f"  {tag}: the zero-shot cell failed, so the task's rows cannot run (they train from its prompt)"
                )
            continue
        if "error" in zs_by_task[tag]:
            continue
        spec = cell_spec(tag, row, seed, args, zs_by_task[tag])
        stored = spec["key"] in load_results(args.results)
        result = run_cell("tta_cell.py", spec, args.results, force=args.force, timeout=timeout)
        if "error" not in result and (args.force or not stored):
            _cleanup(spec)


# --- report -------------------------------------------------------------------------------------------------------
def _threads(n) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _combined(values: list[float], ns: list[int]) -> tuple[float, float]:
    """(mean accuracy over seeds, its standard error: the fixed test set's binomial term plus the seeds' spread)."""
    p = statistics.mean(values)
    n = min(ns)
    var = p * (1 - p) / n if n else 0.0
    if len(values) > 1:
        var += statistics.variance(values) / len(values)
    return p, var**0.5


def curves(results: dict[str, dict], tag: str, budget: float) -> dict[str, list[dict]]:
    """row -> [{mark, minutes, acc, se, f1, seeds}] over the stored seeds of that row (at ``budget``)."""
    by_row: dict[str, list[dict]] = {}
    for r in results.values():
        if "error" in r or r.get("tag") != tag or r.get("row") == "zero-shot" or r.get("budget_min") != budget:
            continue
        by_row.setdefault(r["row"], []).append(r)
    out = {}
    for row, runs in by_row.items():
        points = []
        for m in sorted({e["mark"] for r in runs for e in r["evals"]}):
            es = [e for r in runs for e in r["evals"] if e["mark"] == m]
            acc, se = _combined([e["accuracy"] for e in es], [e["n"] for e in es])
            points.append(
                dict(
                    mark=m,
                    minutes=statistics.mean(e["minutes"] for e in es),
                    acc=acc,
                    se=se,
                    f1=statistics.mean(e["macro_f1"] for e in es),
                    steps=statistics.mean(e["step"] for e in es),
                    seeds=len(es),
                )
            )
        zs = results.get(cell_key(tag, "zero-shot", 0, budget))
        if zs and "error" not in zs and (not points or points[0]["mark"] > 0):
            t = zs["test"]
            points.insert(0, dict(mark=0.0, minutes=0.0, acc=t["accuracy"], se=t["se"], f1=t["macro_f1"], steps=0,
                                  seeds=len(runs), from_zero_shot=True))  # fmt: skip
        out[row] = {"points": points, "runs": runs}
    return out


def baseline(zs: dict) -> tuple[dict, str]:
    """(test result, prompt name) of the study's zero-shot baseline: the better on test of the training prompt
    (best dev AUC) and the zero-shot rule's prompt (best dev accuracy), when the two differ; a baseline chosen on
    test favours the baseline, never the training rows."""
    alt = zs.get("zero_shot_best")
    if alt and alt["test"]["accuracy"] > zs["test"]["accuracy"]:
        return alt["test"], alt["prompt"]["name"]
    return zs["test"], zs["prompt"]["name"]


def report(results: dict[str, dict], tasks, budget: float, table_marks=TABLE_MARKS) -> str:
    marks = [m for m in table_marks if m <= budget] or [budget]
    lines = []
    for tag in tasks:
        zs = results.get(cell_key(tag, "zero-shot", 0, budget))
        if not zs or "error" in zs:
            continue
        zo_cells = [r for r in results.values() if r.get("tag") == tag and r.get("kind") == "zo" and "error" not in r]
        ort = [r["infer_peak_mb"] for r in zo_cells if r.get("budget_min") == budget]
        ort_infer = statistics.median(ort) if ort else float("nan")
        t, t_prompt = baseline(zs)
        alt = zs.get("zero_shot_best")
        other = (
            f" The zero-shot rule (best dev accuracy) picks `{alt['prompt']['name']}`: test "
            f"{alt['test']['accuracy']:.3f}; the training prompt scores {zs['test']['accuracy']:.3f} untrained "
            f"(every row's minute 0); the baseline is the better, `{t_prompt}`."
            if alt
            else ""
        )
        lines += [
            f"### {TASK_TITLES.get(tag, tag)}: held-out test accuracy ± s.e. (n {zs['test']['n']}) after N minutes "
            f"of training ({budget:g} min budget, {_threads(zs.get('threads'))})",
            "",
            f"Training prompt (best dev AUC): `{zs['prompt']['name']}` {zs['prompt']['template']!r} -> "
            f"{' / '.join('|'.join(w) for w in zs['prompt']['verbalizer'].values())}; max_len {zs['max_len']}; "
            f"onnxruntime inference forward peak {ort_infer:.0f} MiB (median of the ZO cells, on the largest training "
            "batch: batch_size x candidates rows, max_len tokens)." + other,
            "",
            "| row | seeds | " + " | ".join(f"acc @ {m:g} min" for m in marks)
            + f" | macro-F1 @ {budget:g} | steps @ {budget:g} | train peak RSS (MiB) | / own inference "
            "| / ORT inference |",
            "|---|---|" + "---|" * len(marks) + "---|---|---|---|---|",
            f"| zero-shot (best prompt: {t_prompt}) | - | {t['accuracy']:.3f} ± {t['se']:.3f} (n {t['n']})"
            + " |" * len(marks) + f" {t['macro_f1']:.3f} | 0 | - | - | - |",
        ]  # fmt: skip
        for row, c in curves(results, tag, budget).items():
            pts = {p["mark"]: p for p in c["points"]}
            runs = c["runs"]
            cells = [f"{pts[m]['acc']:.3f} ± {pts[m]['se']:.3f}" if m in pts else "-" for m in marks]
            last = pts.get(budget)
            peak = max(r["train_peak_mb"] for r in runs)
            infer = max(r["infer_peak_mb"] for r in runs)
            lines.append(
                f"| {row} | {','.join(str(r['seed']) for r in sorted(runs, key=lambda r: r['seed']))} | "
                + " | ".join(cells)
                + f" | {last['f1']:.3f} | {last['steps']:.0f} | {peak:.0f} | {peak / infer:.2f}x | "
                f"{peak / ort_infer:.2f}x |"
                if last
                else f"| {row} | ... | " + " | ".join(cells) + " | - | - | - | - | - |"
            )
            other = {r.get("prompt", {}).get("name") for r in runs} - {zs["prompt"]["name"]}
            if other:
                lines.append(f"|  ↳ trained with prompt(s) {sorted(other)}: stale, rerun with --force | |")
        lines.append("")
    return "\n".join(lines)


def _export_label(model: str | None) -> str:
    """ " INT4" / " INT4, quantized embedding" for a plot title (fp32, or a folder no longer here: "")."""
    from runtime.contract import FEATURE_INT4_EMBEDDING, Manifest
    from runtime.errors import ZoEdgeError

    if not model:
        return ""
    try:
        m = Manifest.load(ROOT / model)
    except ZoEdgeError:
        return ""
    if m.dtype != "int4":
        return ""
    return " INT4, quantized embedding" if m.has(FEATURE_INT4_EMBEDDING) else " INT4"


def plot(results: dict[str, dict], tag: str, budget: float, out: Path) -> Path | None:
    """Accuracy vs training minutes, one line per row (mean over seeds, error bars = standard error), the best
    zero-shot prompt as a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = curves(results, tag, budget)
    zs = results.get(cell_key(tag, "zero-shot", 0, budget))
    if not c and not zs:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    if zs and "error" not in zs:
        t, t_prompt = baseline(zs)
        p, se = t["accuracy"], t["se"]
        ax.axhline(p, color="grey", ls="--", lw=1.2, label=f"zero-shot, best prompt ({t_prompt})")
        ax.axhspan(p - se, p + se, color="grey", alpha=0.15)
    torch_rows = [r for r in c if r.startswith("torch")]
    for i, (row, cv) in enumerate(sorted(c.items(), key=lambda kv: (kv[0] in torch_rows, kv[0]))):
        pts = cv["points"]
        seeds = max(p["seeds"] for p in pts)
        style = dict(ls="-.", marker="s") if row in torch_rows else dict(ls="-", marker="o")
        ax.errorbar(
            [p["minutes"] for p in pts],
            [p["acc"] for p in pts],
            yerr=[p["se"] for p in pts],
            capsize=3,
            ms=4,
            color=f"C{i}",
            label=f"{row} ({seeds} seed{'s' if seeds > 1 else ''})",
            **style,
        )
    ax.set_xlabel("training wall-clock minutes (evaluation excluded)")
    ax.set_ylabel("held-out test accuracy")
    n = zs["test"]["n"] if zs and "error" not in zs else "?"
    threads = zs.get("threads") if zs else "?"
    base = _export_label(zs.get("model") if zs else None)
    ax.set_title(f"{TASK_TITLES.get(tag, tag)}: SmolLM2-135M{base}, held-out n = {n}, {_threads(threads)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --- CLI ----------------------------------------------------------------------------------------------------------
def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="artifacts/smollm2-fp32", help="an export (INT4 too; give it its own --results file)"
    )
    ap.add_argument("--tasks", default="rt,trec", help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--rows", default="", help=f"comma list of rows (default: all of {', '.join(ROWS)})")
    ap.add_argument(
        "--seeds", default="", help="comma list of seeds for every row (default: 0, and 0,1,2 for RT headline rows)"
    )
    ap.add_argument("--budget", type=float, default=None, help=f"training minutes per cell (default {BUDGET:g})")
    ap.add_argument("--marks", default="", help=f"minutes to score the test split at (default {MARKS})")
    ap.add_argument("--threads", type=int, default=None, help="threads (onnxruntime, torch, BLAS; default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.3 min cells, n_test 50, 1 thread, own files")
    ap.add_argument("--recipe", action="append", default=[], help="extra ZO row NAME:method=M,key=value (repeatable)")
    ap.add_argument("--force", action="store_true", help="rerun cells already stored")
    ap.add_argument("--report-only", action="store_true", help="print the table and plot, run nothing")
    ap.add_argument("--list", action="store_true", help="list the cells and whether each is stored")
    ap.add_argument("--results", type=Path, default=None, help="JSONL results file")
    args = ap.parse_args(argv)
    for text in args.recipe:
        name, row = parse_recipe(text)
        ROWS[name] = row
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.rows = [r for r in args.rows.split(",") if r] or list(ROWS)
    for what, given, known in (("--tasks", args.tasks, TASKS), ("--rows", args.rows, ROWS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise SystemExit(f"{what}: unknown {unknown}; known: {', '.join(known)}")
    q = args.quick
    args.seeds = [int(s) for s in args.seeds.split(",") if s] or ([0] if q else None)
    args.budget = args.budget if args.budget is not None else (QUICK["budget"] if q else BUDGET)
    args.marks = _floats(args.marks) if args.marks else list(QUICK["marks"] if q else MARKS)
    args.threads = args.threads if args.threads is not None else (QUICK["threads"] if q else 2)
    args.runs = ROOT / "runs" / ("tta_quick" if q else "tta")
    args.results = args.results or (args.runs / "results.jsonl" if q else RESULTS_DIR / "time_to_accuracy.jsonl")
    args.plot_dir = args.runs if q else BENCH_DIR
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if not (ROOT / args.model / "manifest.json").is_file():
        sys.exit(f"{args.model} is not an export; run `zo-edge export smollm2-135m --out {args.model}`")
    if args.list:
        done = load_results(args.results)
        for tag, row, seed in grid(args):
            key = cell_key(tag, row, seed, args.budget)
            print(("stored  " if key in done and "error" not in done[key] else "pending ") + key)
        return
    if not args.report_only:
        print(f"machine: {json.dumps(machine_info())}", flush=True)
        run(args)
    results = load_results(args.results)
    print(report(results, args.tasks, args.budget))
    for tag in args.tasks:
        # named after the results file: a study kept in its own file (--results) does not overwrite the default's plot
        out = plot(results, tag, args.budget, args.plot_dir / f"{args.results.stem}_{tag}.png")
        if out:
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
