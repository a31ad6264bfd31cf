"""Export options side by side (issue #14 items 2, 3, 5): fused vs eager attention, INT4 with a quantized embedding,
MatMulNBits accuracy_level. Every cell is a fresh process (``step_cost.py``), so each peak RSS is its own.

    python benchmarks/attention.py attention  # eager vs --attention fused: forward time, peak RSS, 16 x 64/128/512
    python benchmarks/attention.py int4       # fp32 / INT4 / + --int4-embedding / + --accuracy-level 4, [16, 57]
    python benchmarks/attention.py int4 --forward-only   # the inference-forward cells alone (quicker)
    python benchmarks/attention.py ... --report-only

The exports are made beforehand (``zo-edge export smollm2-135m --out DIR`` with the options in each table's header);
pass them with ``--models label=DIR,...``. Cells of one shape run back to back, the models interleaved, so that the
ratios are measured under the same load (the machine is shared: the load average is recorded with every table).
Results go to ``benchmarks/results/attention.jsonl`` (resumable unless ``--force``). Outside CI, like every benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    cell_main,
    fmt,
    load_batches,
    load_results,
    machine_info,
    make_batches,
    median,
    reset_peak,
    run_cell,
)

SHAPES = {"attention": ((16, 64), (16, 128), (16, 512)), "int4": ((16, 57),)}
DEFAULT_MODELS = {
    "attention": "eager=artifacts/shared-smollm2,fused=artifacts/perf-fused",
    "int4": "fp32=artifacts/shared-smollm2,int4=artifacts/perf-int4,int4-emb=artifacts/perf-int4-emb,"
    "int4-emb-acc4=artifacts/perf-int4-emb-acc4",
}
#: the training step measured on the INT4 table (RESULTS.md §2's INT4/fp32 peak ratio was taken with ZO-Act)
TRAIN_METHOD = "zo-act"


def run(args) -> None:
    path = args.results / "attention.jsonl"
    models = dict(kv.split("=", 1) for kv in args.models.split(","))
    for bsz, seq in SHAPES[args.what]:
        if args.report_only:
            break
        npz = make_batches("packed", args.results / f"packed_b{bsz}_l{seq}.npz", next(iter(models.values())), bsz, seq)
        for label, model in models.items():
            common = {"batches": str(npz), "threads": args.threads, "model": model, "reps": args.reps}
            tag = f"{args.what}/{label}/b{bsz}/t{seq}"
            run_cell("attention.py", {"key": f"{tag}/forward", **common}, path, force=args.force)
            if args.what == "int4" and not args.forward_only:
                spec = {"key": f"{tag}/{args.method}", "kind": "method", "method": args.method, **common}
                run_cell("step_cost.py", spec, path, force=args.force)
    print(table(load_results(path), args.what, models, args.method))


def forward_cell(spec: dict) -> dict:
    """One model in this process: load, a warm-up forward, ``reps`` timed forwards; the row losses are kept so that
    the table can show what an option changes numerically (accuracy_level, the quantized embedding)."""
    import time

    from runtime.batch import Batch
    from runtime.session import GraphSession

    batch = Batch.from_dict(load_batches(spec["batches"])[0])
    t0 = time.perf_counter()
    session = GraphSession(spec["model"], threads=spec["threads"])
    load_s = time.perf_counter() - t0
    load_peak = reset_peak()
    losses = session.losses(batch)  # warm-up: onnxruntime sizes its arena on the first run
    times = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        session.forward(batch)
        times.append(time.perf_counter() - t0)
    return {
        "shape": list(batch.input_ids.shape),
        "threads": spec["threads"],
        "load_s": round(load_s, 2),
        "load_peak_mb": round(load_peak, 1),
        "forward_s": round(median(times), 4) if times else None,
        "row_nll": [round(float(x), 5) for x in losses],
    }


def table(results: dict[str, dict], what: str, models: dict[str, str], method: str = TRAIN_METHOD) -> str:
    """Forward time, peak RSS (lifetime / after load) per model and shape, and each model's ratio to the first."""
    first = next(iter(models))
    lines = [
        f"| model | B x T | forward (s) | x {first} | peak RSS (MiB) | run peak (MiB) | x {first} |"
        + (f" {method} step (s) | step peak RSS (MiB) | x {first} |" if what == "int4" else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|---|" if what == "int4" else ""),
    ]
    for bsz, seq in SHAPES[what]:
        base = results.get(f"{what}/{first}/b{bsz}/t{seq}/forward", {})
        base_step = results.get(f"{what}/{first}/b{bsz}/t{seq}/{method}", {})
        for label in models:
            f = results.get(f"{what}/{label}/b{bsz}/t{seq}/forward", {})
            row = (
                f"| {label} | {bsz} x {seq} | {fmt(f.get('forward_s'))} | {_ratio(f, base, 'forward_s')} | "
                f"{fmt(f.get('peak_rss_mb'), '{:.0f}')} | {fmt(f.get('peak_run_mb'), '{:.0f}')} | "
                f"{_ratio(f, base, 'peak_rss_mb')} |"
            )
            if what == "int4":
                m = results.get(f"{what}/{label}/b{bsz}/t{seq}/{method}", {})
                row += (
                    f" {fmt(m.get('step_s'))} | {fmt(m.get('peak_rss_mb'), '{:.0f}')} | "
                    f"{_ratio(m, base_step, 'peak_rss_mb')} |"
                )
            lines.append(row)
    for bsz, seq in SHAPES[what]:
        ref = results.get(f"{what}/{first}/b{bsz}/t{seq}/forward", {}).get("row_nll")
        labels = list(models)
        for prev, label in zip(labels, labels[1:], strict=False):
            prev_nll = results.get(f"{what}/{prev}/b{bsz}/t{seq}/forward", {}).get("row_nll")
            nll = results.get(f"{what}/{label}/b{bsz}/t{seq}/forward", {}).get("row_nll")
            if ref and nll and prev_nll:
                d_ref = max(abs(a - b) for a, b in zip(nll, ref, strict=True))
                d_prev = max(abs(a - b) for a, b in zip(nll, prev_nll, strict=True))
                lines.append(f"- {label}: max |Δ row NLL| {d_ref:.4f} nats vs {first}, {d_prev:.4f} vs {prev}")
    if what == "attention":
        for label in models:
            lo = results.get(f"attention/{label}/b16/t128/forward", {}).get("peak_rss_mb")
            hi = results.get(f"attention/{label}/b16/t512/forward", {}).get("peak_rss_mb")
            if lo and hi:
                lines.append(f"\n{label}: peak RSS 16 x 512 / 16 x 128 = {hi / lo:.2f}x")
    return "\n".join(lines)


def _ratio(x: dict, base: dict, key: str) -> str:
    return fmt(x[key] / base[key], "{:.2f}x") if x.get(key) and base.get(key) else "-"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=sorted(SHAPES), help="which comparison")
    ap.add_argument("--models", default=None, help="label=export_dir,... (first = the reference of the ratios)")
    ap.add_argument("--reps", type=int, default=3, help="timed forwards / steps per cell")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ap.add_argument("--forward-only", action="store_true", help="int4: skip the training-step cells")
    ap.add_argument(
        "--method", default=TRAIN_METHOD, help=f"int4: the training step's method (default {TRAIN_METHOD}; lozo on a"
        " --ports lowrank export)",
    )  # fmt: skip
    ap.add_argument("--force", action="store_true", help="rerun cells whose results are already stored")
    ap.add_argument("--report-only", action="store_true", help="print the table from stored results, run nothing")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of attention.jsonl and the batches")
    args = ap.parse_args(argv)
    args.models = args.models or DEFAULT_MODELS[args.what]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.chdir(ROOT)
    args.threads = args.threads or os.cpu_count()
    args.results = args.results.resolve()
    print("machine:", json.dumps(machine_info()))
    run(args)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a cell, started by run_cell in a fresh process
        cell_main(forward_cell)
    else:
        main()
