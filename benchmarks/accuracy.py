"""The accuracy study: every ZO method at the same forward-pass budget, next to zero-shot and PyTorch first-order.

    python benchmarks/accuracy.py                         # every cell, in priority order (hours on 2 cores)
    python benchmarks/accuracy.py --only rt/zo-act        # the cells whose key contains a substring
    python benchmarks/accuracy.py --report-only           # the tables and the learning-curve plot, run nothing
    python benchmarks/accuracy.py --list                  # the cells, and which are stored
    python benchmarks/accuracy.py --threads 1 & python benchmarks/accuracy.py --threads 1
                                                          # two single-thread drivers (one core each)

A cell is one (task, method, base, seed); its key reads ``rt/lozo/int4/s1``. Each runs in a fresh subprocess
(``accuracy_cell.py``) and appends one JSON line to ``results/accuracy.jsonl``; a stored cell is skipped, and a cell
that was interrupted resumes from its run folder's last checkpoint (``runs/accuracy/<key>``, ``save_every``), so the
study can be stopped and restarted at will. The queue (``_priority``) runs seed 0 of every fp32 row first, then
ZO-Act on INT4, the other seeds of the headline rows, the INT4 adapter forms, then the rest: when time runs out,
what is stored is the most useful part. Several drivers can share the queue (each claims a
cell before running it), e.g. two single-thread drivers on a 2-core machine.

Decisions (the recipe below; no per-method tuning beyond the library defaults, which were tuned on Rotten Tomatoes):

* **Budget: 160 training forward passes per run**, the unit a ZO step is paid in. Steps = 160 / forwards per step:
  80 for MeZO, LOZO, SubZero, AGZO and ZO-Act (2 each), 53 for Zoop (3: the clean pass that records layer inputs,
  then ±). ZO-Act's calibration (8 forwards on training batches, once) is reported beside it. PyTorch first-order
  gets 53 steps: forward + backward costs about three forwards, so it gets about the same compute. The budget is
  small because the whole study (72 cells) has to fit a 2-core machine; it measures early learning, not the
  plateau (MeZO's paper runs 20k-100k steps).
* **Objective**: cross-entropy over the candidates' log-likelihoods (``--objective classification``, MeZO's
  prompt-based fine-tuning), because the LM loss on the gold word mostly teaches the model to say *a* label word
  (see ``zo_edge/demo.py``). Zoop needs a loss per row (its noise is per sample) and a row is one candidate there,
  so **Zoop trains the LM loss on the gold word**: its row is not the same objective, and the table says so.
* **Data**: k-shot training sets as in MeZO/LM-BFF (Rotten Tomatoes k = 64 per class, TREC k = 16 per class), the
  run seed picks them, and the fixed test split (``split_seed`` 0) is the same for every seed. Held-out test:
  the first 200 test examples of each task. Dev (seeded, disjoint from train; 32 RT / 24 TREC examples): the
  learning curves, every 20 steps. Prompts are cut from the left to 48 tokens (few RT reviews are longer).
* **Batch**: 8 examples for Rotten Tomatoes (16 candidate rows), 4 for TREC (24 rows, six classes).
* **MeZO draws Rademacher z** (``dist = "rademacher"``, Spall's original SPSA; same mean and covariance as the
  Gaussian): a Gaussian draw of 134.5M values three times per step costs more than the two forwards on this CPU
  (``RESULTS.md``, step cost), and the study has to fit the machine.
* **Scoring**: the final weights (no best-on-dev selection, which would spend the dev set twice).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_DIR, RESULTS_DIR, ROOT, load_results, method_registry, run_cell  # noqa: E402

BUDGET = 160  # training forward passes per run
FORWARDS_PER_STEP = {"zoop": 3, "torch-fo": 3}  # training forwards per step where not the usual 2 (the ± pair)


def zo_methods() -> list[str]:
    """Every registered ZO method (``runtime.method.METHODS`` is the one list), ZO-Act, the headline, first."""
    return sorted(method_registry(), key=lambda m: m != "zo-act")


def int4_methods() -> list[str]:
    """The methods with an adapter form, which train INT4 bases (the registry's ``bases``)."""
    return [m for m in zo_methods() if "int4" in method_registry()[m]["bases"]]


TASKS = {
    "rt": dict(task="rotten-tomatoes", k=64, dev_k=16, batch_size=8, max_len=48),
    "trec": dict(task="trec", k=16, dev_k=4, batch_size=4, max_len=48),
}
COMMON = dict(objective="classification", n_test=200, eval_every=20, save_every=40)
FO_LR = 1e-5  # AdamW, the usual full fine-tuning rate for a ~100M model
SEEDS = (0, 1, 2)


def cell_spec(task: str, method: str, base: str, seed: int, models: dict[str, str], threads: int) -> dict:
    key = f"{task}/{method}/{base}/s{seed}"
    spec = {"key": key, **TASKS[task], **COMMON, "seed": seed, "model": models[base], "threads": threads}
    spec["run_dir"] = str(ROOT / "runs" / "accuracy" / key.replace("/", "_"))
    if method == "zero-shot":
        return {**spec, "kind": "zero-shot", "method": method}
    spec["steps"] = BUDGET // FORWARDS_PER_STEP.get(method, 2)
    if method == "torch-fo":
        return {**spec, "kind": "torch-fo", "method": method, "lr": FO_LR}
    spec["overrides"] = {"save_every": COMMON["save_every"]}
    if method == "zoop":
        spec["objective"] = "lm"
    if method == "mezo":
        spec["overrides"]["dist"] = "rademacher"
    return {**spec, "kind": "zo", "method": method}


def _priority(task: str, method: str, base: str, seed: int) -> tuple:
    """Queue order, so that an interrupted study holds the most useful part: zero-shot; seed 0 of every fp32 row;
    ZO-Act on INT4; seeds 1-2 of the headline rows on Rotten Tomatoes (ZO-Act, MeZO, first-order), which give the
    first spreads; the INT4 adapter forms; then every remaining seed."""
    if method == "zero-shot":
        return (0,)
    if seed == 0 and base == "fp32":
        return (1,)
    if seed == 0 and method == "zo-act":
        return (2,)
    if task == "rt" and base == "fp32" and method in ("zo-act", "mezo", "torch-fo"):
        return (3, seed)
    if seed == 0:
        return (4,)
    return (5, seed)


def all_cells(models: dict[str, str], threads: int) -> list[dict]:
    """Every cell of the study, in ``_priority`` order (stable within a tier: task, then method)."""
    grid = [(task, "zero-shot", base, 0) for task in TASKS for base in models]
    for seed in SEEDS:
        for task in TASKS:
            grid += [(task, m, "fp32", seed) for m in (*zo_methods(), "torch-fo")]
            if "int4" in models:
                grid += [(task, m, "int4", seed) for m in int4_methods()]
    grid.sort(key=lambda c: _priority(*c))
    return [cell_spec(task, m, base, seed, models, threads) for task, m, base, seed in grid]


# --- parallel drivers ---------------------------------------------------------------------------------------------
CLAIMS = ROOT / "runs" / "accuracy" / "claims"


def claim(key: str) -> bool:
    """Take a cell for this driver (an O_EXCL file holding our pid), so that several drivers can work through the
    same queue; a claim whose process is gone is taken over. False: another live driver has it."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    path = CLAIMS / key.replace("/", "_")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # a live driver holds it
            except (ProcessLookupError, ValueError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale: its driver died
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def release(key: str) -> None:
    (CLAIMS / key.replace("/", "_")).unlink(missing_ok=True)


# --- report -------------------------------------------------------------------------------------------------------
def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f} (1 seed)"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def report(results: dict[str, dict]) -> str:
    rows = [r for r in results.values() if "error" not in r and "test" in r]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        task, method, base, _ = r["key"].split("/")
        groups.setdefault((task, method, base), []).append(r)
    order = ["zero-shot", *zo_methods(), "torch-fo"]
    lines = [
        f"Held-out test accuracy / macro-F1 (first {COMMON['n_test']} test examples), mean ± std over seeds; "
        f"budget {BUDGET} training forwards.",
        "",
        "| task | method | base | seeds | steps | test accuracy | macro-F1 | train (s) | of which forwards (s) | "
        "eval (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        for base in ("fp32", "int4"):
            for m in order:
                g = sorted(groups.get((task, m, base), []), key=lambda r: r["seed"])
                if not g:
                    continue
                acc = [r["test"]["accuracy"] for r in g]
                f1 = [r["test"]["macro_f1"] for r in g]
                train = statistics.mean(r.get("train_s", 0.0) for r in g)
                fwd = statistics.mean(r.get("t_forward", 0.0) for r in g)
                ev = statistics.mean(r.get("eval_s", 0.0) for r in g)
                rss = max(r["peak_rss_mb"] for r in g)
                steps = g[0].get("steps", 0)
                lines.append(
                    f"| {task} | {m}{' (LM loss)' if m == 'zoop' else ''} | {base} | "
                    f"{','.join(str(r['seed']) for r in g)} | {steps} | {_mean_std(acc)} | {_mean_std(f1)} | "
                    f"{train:.0f} | {fwd:.0f} | {ev:.0f} | {rss:.0f} |"
                )
    return "\n".join(lines)


def _smooth(xs: list[float], w: int = 10) -> list[float]:
    return [statistics.mean(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]


def plot(results: dict[str, dict], out: Path) -> Path | None:
    """Learning curves, one column per task: dev accuracy (top) and the training loss, moving mean of 10 steps
    (bottom), against training forward passes, mean over the seeds stored. Dev sets are small (32 RT / 24 TREC
    examples), so the top row is coarse; the bottom row is the objective itself (Zoop, which trains the LM loss on
    another scale, is left out of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(TASKS), figsize=(6.5 * len(TASKS), 8.4), squeeze=False)
    drew = False
    for col, task in enumerate(TASKS):
        ax, ax_loss = axes[0][col], axes[1][col]
        for i, m in enumerate([*zo_methods(), "torch-fo"]):
            for base, style in (("fp32", "-"), ("int4", "--")):
                runs = [r for r in results.values() if r.get("key", "").startswith(f"{task}/{m}/{base}/")]
                runs = [r for r in runs if r.get("dev_curve") and "error" not in r]
                if not runs:
                    continue
                label = f"{m} ({base}, {len(runs)} seed{'s' if len(runs) > 1 else ''})"
                steps = sorted({s for r in runs for s, _ in r["dev_curve"]})
                ys = [statistics.mean(a for r in runs for s2, a in r["dev_curve"] if s2 == s) for s in steps]
                xs = [s * FORWARDS_PER_STEP.get(m, 2) for s in steps]
                ax.plot(xs, ys, style, marker="o", ms=3, color=f"C{i}", label=label)
                n = min(len(r.get("losses") or []) for r in runs)
                if n and m != "zoop":  # Zoop trains the LM loss (~8 nats): another objective, another scale
                    mean = [statistics.mean(r["losses"][t] for r in runs) for t in range(n)]
                    fx = [(t + 1) * FORWARDS_PER_STEP.get(m, 2) for t in range(n)]
                    ax_loss.plot(fx, _smooth(mean), style, color=f"C{i}", lw=1.5, label=label)
                drew = True
        zs = [r for r in results.values() if r.get("key", "").startswith(f"{task}/zero-shot/fp32/")]
        if zs:
            ax.axhline(zs[0]["dev_curve"][0][1], color="grey", lw=0.8, ls=":", label="zero-shot (fp32)")
        ax.set_title(f"{TASKS[task]['task']}: dev accuracy")
        ax.set_ylabel("dev accuracy")
        ax_loss.set_title(f"{TASKS[task]['task']}: training loss (moving mean of 10 steps; zoop not shown)")
        ax_loss.set_ylabel("loss")
        for a in (ax, ax_loss):
            a.set_xlabel("training forward passes (first-order: forward + backward ≈ 3)")
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    if not drew:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fp32", default="artifacts/smollm2-fp32", help="fp32 export (zo-edge export smollm2-135m)")
    ap.add_argument("--int4", default="artifacts/smollm2-int4", help="INT4 export ('' to skip its cells)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only cells whose key contains one")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ap.add_argument("--force", action="store_true", help="rerun cells already stored")
    ap.add_argument("--report-only", action="store_true", help="print the tables and plot, run nothing")
    ap.add_argument("--list", action="store_true", help="list the cells and whether each is stored")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "accuracy.jsonl")
    args = ap.parse_args(argv)
    models = {"fp32": args.fp32}
    if args.int4 and (ROOT / args.int4 / "manifest.json").is_file():
        models["int4"] = args.int4
    if not (ROOT / args.fp32 / "manifest.json").is_file():
        sys.exit(f"{args.fp32} is not an export; run `zo-edge export smollm2-135m --out {args.fp32}`")
    cells = all_cells(models, args.threads)
    only = [s for s in args.only.split(",") if s]
    cells = [c for c in cells if not only or any(s in c["key"] for s in only)]
    if args.list:
        done = load_results(args.results)
        for c in cells:
            print(("stored  " if c["key"] in done else "pending ") + c["key"])
        return
    if not args.report_only:
        for c in cells:
            if claim(c["key"]):
                try:
                    run_cell("accuracy_cell.py", c, args.results, force=args.force, timeout=3600)
                finally:
                    release(c["key"])
    results = load_results(args.results)
    print(report(results))
    out = plot(results, BENCH_DIR / "accuracy_curves.png")
    if out:
        print(f"wrote {out}")
    print(json.dumps({"stored": len(results), "listed": len(cells)}))


if __name__ == "__main__":
    main()
