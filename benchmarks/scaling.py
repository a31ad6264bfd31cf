"""zo-edge benchmarks: step time and peak RSS against sequence length and batch size, fp32 and INT4.

    python benchmarks/scaling.py              # `make bench-scaling` (~20 min on 2 cores)
    python benchmarks/scaling.py --force      # rerun cells already stored
    python benchmarks/scaling.py --report-only

One method (``SCALING_METHOD``, LOZO: a low-rank step whose cost is two forwards) against the plain forward, on a
[batch, seq] grid of real Rotten Tomatoes text packed end to end (``common.packed_batch``: no padding, loss on the
last token of each row). Where a batch holds >= 4096 tokens the method also runs micro-batched
(``Oracle(micro_batch=MICRO_BATCH)``). Each cell runs in a fresh subprocess (``step_cost.py``) so its peak RSS is
its own; results go to ``benchmarks/results/scaling.jsonl`` (resumable: stored cells are skipped unless
``--force``), the table to stdout and the plots to ``benchmarks/scaling_{seq,batch}.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    ROOT,
    check_exports,
    fmt,
    load_results,
    machine_info,
    make_batches,
    run_cell,
    step_ratio,
)

SCALING_METHOD = "lozo"
SEQ_LENS = (32, 64, 128, 256, 512)
MICRO_BATCH = 4  # rows per pass in the micro-batched cells (Oracle micro_batch), run where a batch has >= 4096 tokens
BATCH_SIZES = (1, 4, 16, 64)


def scaling(args) -> None:
    path = args.results / "scaling.jsonl"
    models = {"fp32": args.fp32, **({"int4": args.int4} if args.int4 else {})}
    grid = [(args.batch, t) for t in SEQ_LENS] + [(b, args.max_len) for b in BATCH_SIZES]
    for bsz, seq in dict.fromkeys(grid):  # (16, 64) is on both axes: once
        if args.report_only:
            break
        npz = make_batches("packed", args.results / f"packed_b{bsz}_l{seq}.npz", args.fp32, bsz, seq)
        for base, model in models.items():
            common = {"batches": str(npz), "threads": args.threads, "model": model, "b": bsz, "t": seq}
            run_cell(
                "step_cost.py",
                {"key": f"scaling/forward/{base}/b{bsz}/t{seq}", "kind": "forward", "reps": 2, **common},
                path,
                force=args.force,
            )
            run_cell(
                "step_cost.py",
                {
                    "key": f"scaling/{SCALING_METHOD}/{base}/b{bsz}/t{seq}",
                    "kind": "method",
                    "method": SCALING_METHOD,
                    "reps": 2,
                    **common,
                },
                path,
                force=args.force,
            )
            if bsz * seq >= 4096:
                run_cell(
                    "step_cost.py",
                    {
                        "key": f"scaling/{SCALING_METHOD}-mb{MICRO_BATCH}/{base}/b{bsz}/t{seq}",
                        "kind": "method",
                        "method": SCALING_METHOD,
                        "micro_batch": MICRO_BATCH,
                        "reps": 2,
                        **common,
                    },
                    path,
                    force=args.force,
                )
    results = load_results(path)
    print(scaling_table(results, grid))
    plot_scaling(results, args)


def scaling_table(results: dict[str, dict], grid: list[tuple[int, int]]) -> str:
    """One row per (batch, seq): plain forward and the method's step, their ratio and peak RSS, fp32 and INT4."""
    head = "| B x T | tokens |"
    for base in ("fp32", "int4"):
        head += f" fwd {base} (s) | {SCALING_METHOD} {base} (s) | x fwd | RSS fwd / step {base} (MiB) |"
    lines = [head, "|" + "---|" * (2 + 8)]
    for bsz, seq in sorted(dict.fromkeys(grid)):
        row = f"| {bsz} x {seq} | {bsz * seq} |"
        for base in ("fp32", "int4"):
            f = results.get(f"scaling/forward/{base}/b{bsz}/t{seq}", {})
            m = results.get(f"scaling/{SCALING_METHOD}/{base}/b{bsz}/t{seq}", {})
            fs, ms = f.get("forward_s"), m.get("step_s")
            ratio = step_ratio(m, fs) if m else None
            row += f" {fmt(fs)} | {fmt(ms)} | {fmt(ratio, '{:.2f}x')} |"
            row += f" {fmt(f.get('peak_rss_mb'), '{:.0f}')} / {fmt(m.get('peak_rss_mb'), '{:.0f}')} |"
        lines.append(row)
    lines += ["", f"Micro-batched ({MICRO_BATCH} rows per onnxruntime pass, `Oracle(micro_batch=...)`):", ""]
    lines += [
        f"| B x T | base | {SCALING_METHOD} step (s) | whole-batch step (s) | peak RSS (MiB) | whole-batch (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for bsz, seq in sorted(dict.fromkeys(grid)):
        for base in ("fp32", "int4"):
            mb = results.get(f"scaling/{SCALING_METHOD}-mb{MICRO_BATCH}/{base}/b{bsz}/t{seq}")
            m = results.get(f"scaling/{SCALING_METHOD}/{base}/b{bsz}/t{seq}", {})
            if mb and "error" not in mb:
                lines.append(
                    f"| {bsz} x {seq} | {base} | {fmt(mb.get('step_s'))} | {fmt(m.get('step_s'))} | "
                    f"{fmt(mb.get('peak_rss_mb'), '{:.0f}')} | {fmt(m.get('peak_rss_mb'), '{:.0f}')} |"
                )
    return "\n".join(lines)


def plot_scaling(results: dict[str, dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = BENCH_DIR if args.results == RESULTS_DIR.resolve() else args.results
    for axis, fixed, xs, out in (
        ("t", f"b{args.batch}", SEQ_LENS, out_dir / "scaling_seq.png"),
        ("b", f"t{args.max_len}", BATCH_SIZES, out_dir / "scaling_batch.png"),
    ):
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
        for base in ("fp32", "int4"):
            for what, style in (("forward", "--"), (SCALING_METHOD, "-")):
                pts = []
                for x in xs:
                    key = f"scaling/{what}/{base}/" + (f"{fixed}/t{x}" if axis == "t" else f"b{x}/{fixed}")
                    if key in results and "error" not in results[key]:
                        res = results[key]
                        pts.append((x, res.get("step_s", res.get("forward_s")), res["peak_rss_mb"]))
                if not pts:
                    continue
                label = f"{what} step ({base})" if what != "forward" else f"plain forward ({base})"
                color = "C0" if base == "fp32" else "C1"
                ax_t.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=color, label=label)
                ax_m.plot([p[0] for p in pts], [p[2] for p in pts], style, marker="o", color=color, label=label)
        xlabel = "sequence length (tokens)" if axis == "t" else "batch size"
        for ax in (ax_t, ax_m):
            ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        ax_t.set_yscale("log")
        ax_t.set_ylabel("seconds per step / per forward")
        ax_m.set_ylabel("peak RSS of the process (MiB)")
        ax_t.legend(fontsize=8)
        fixed_name = f"batch {fixed[1:]}" if fixed[0] == "b" else f"seq len {fixed[1:]}"
        fig.suptitle(f"SmolLM2-135M, {fixed_name}, {args.threads} threads: {SCALING_METHOD} step vs plain forward")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(f"wrote {out}")


# --- main ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rerun cells whose results are already stored")
    ap.add_argument("--report-only", action="store_true", help="print the table from stored results, run nothing")
    ap.add_argument("--fp32", default="artifacts/smollm2-fp32", help="fp32 export (zo-edge export smollm2-135m)")
    ap.add_argument("--int4", default="artifacts/smollm2-int4", help="INT4 export ('' to skip)")
    ap.add_argument("--batch", type=int, default=16, help="batch size of the sequence-length axis")
    ap.add_argument("--max-len", type=int, default=64, help="sequence length of the batch-size axis")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of scaling.jsonl and the batches")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.chdir(ROOT)
    args.threads = args.threads or os.cpu_count()
    args.results = args.results.resolve()
    check_exports(args)
    print("machine:", json.dumps(machine_info()))
    scaling(args)


if __name__ == "__main__":
    main()
