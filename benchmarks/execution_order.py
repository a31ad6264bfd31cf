"""onnxruntime's node order, before and after (RESULTS.md §11): DEFAULT (a reverse depth-first walk from the outputs,
what every session used until now) against PRIORITY_BASED (the traced order, ``runtime.session.EXECUTION_ORDER``).

    python benchmarks/execution_order.py                       # forwards at 16 x 64/128/512, steps at 16 x 64
    python benchmarks/execution_order.py --refs noports=artifacts/smollm2-noports,fused=artifacts/smollm2-fused
        # + other exports' forwards (PRIORITY_BASED) as reference rows: --ports none, --attention fused
    python benchmarks/execution_order.py --report-only

Every cell is a fresh process (``attention.py``'s forward cell, ``step_cost.py``'s method cell), so each peak RSS is
its own; the two orders of one shape run back to back, so their time ratio is taken under the same load. The row
NLLs and the steps' losses of both orders are kept, so the table shows that the order changes no value. Results go
to ``benchmarks/results/execution_order.jsonl`` (resumable unless ``--force``). Outside CI, like every benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, fmt, load_results, machine_info, make_batches, run_cell  # noqa: E402

ORDERS = ("DEFAULT", "PRIORITY_BASED")
FORWARD_SHAPES = ((16, 64), (16, 128), (16, 512))
STEP_SHAPE = (16, 64)
#: one method per port family: ZO-Act reads the probes, LOZO the low-rank ports, MeZO none
METHODS = ("zo-act", "lozo", "mezo")


def run(args) -> None:
    path = args.results / "execution_order.jsonl"
    models = {"full": args.model} | args.refs
    for bsz, seq in FORWARD_SHAPES:
        npz = make_batches("packed", args.results / f"packed_b{bsz}_l{seq}.npz", args.model, bsz, seq)
        common = {"batches": str(npz), "threads": args.threads, "reps": args.reps}
        for label, model in models.items():
            for order in ORDERS if label == "full" else ORDERS[1:]:
                spec = {"key": f"{label}/{order}/b{bsz}/t{seq}/forward", "model": model, "execution_order": order}
                run_cell("attention.py", {**spec, **common}, path, force=args.force)
        if (bsz, seq) == STEP_SHAPE:
            for method in METHODS:
                for order in ORDERS:
                    spec = {"key": f"full/{order}/b{bsz}/t{seq}/{method}", "kind": "method", "method": method}
                    spec |= {"model": args.model, "execution_order": order, **common}
                    run_cell("step_cost.py", spec, path, force=args.force)
    print(table(load_results(path), list(args.refs)))


def table(results: dict[str, dict], refs: list[str]) -> str:
    """Per shape: time and peak of each order, after / before, and the largest difference in a row NLL."""
    lines = [
        "| cell | DEFAULT: s / run peak MiB | PRIORITY_BASED: s / run peak MiB | time after/before "
        "| peak after/before | max abs Δ (NLL or loss) |",
        "|---|---|---|---|---|---|",
    ]
    cells = [(f"b{b}/t{t}", "forward") for b, t in FORWARD_SHAPES]
    cells += [(f"b{STEP_SHAPE[0]}/t{STEP_SHAPE[1]}", m) for m in METHODS]
    for shape, what in cells:
        before = results.get(f"full/DEFAULT/{shape}/{what}", {})
        after = results.get(f"full/PRIORITY_BASED/{shape}/{what}", {})
        tkey = "forward_s" if what == "forward" else "step_s"
        vkey = "row_nll" if what == "forward" else "losses"
        diff = "-"
        if before.get(vkey) and after.get(vkey):
            diff = f"{max(abs(a - b) for a, b in zip(before[vkey], after[vkey], strict=True)):.5f}"
        lines.append(
            f"| {shape.replace('/', ' ')} {what} | {_cell(before, tkey)} | {_cell(after, tkey)} | "
            f"{_ratio(after, before, tkey)} | {_ratio(after, before, 'peak_run_mb')} | {diff} |"
        )
    for tag in ["DEFAULT", "PRIORITY_BASED", *refs]:
        key = f"full/{tag}" if tag in ORDERS else f"{tag}/PRIORITY_BASED"
        lo = results.get(f"{key}/b16/t128/forward", {}).get("peak_rss_mb")
        hi = results.get(f"{key}/b16/t512/forward", {}).get("peak_rss_mb")
        peaks = " / ".join(
            fmt(results.get(f"{key}/b{b}/t{t}/forward", {}).get("peak_rss_mb"), "{:.0f}") for b, t in FORWARD_SHAPES
        )
        if lo and hi:
            label = f"all ports, {tag}" if tag in ORDERS else f"{tag} (reference export), PRIORITY_BASED"
            lines.append(f"- {label}: forward peak RSS {peaks} MiB at 16 x 64/128/512; 512 / 128 = {hi / lo:.2f}x")
    return "\n".join(lines)


def _cell(r: dict, tkey: str) -> str:
    return f"{fmt(r.get(tkey))} / {fmt(r.get('peak_run_mb'), '{:.0f}')}" if r else "-"


def _ratio(x: dict, base: dict, key: str) -> str:
    return fmt(x[key] / base[key], "{:.2f}x") if x.get(key) and base.get(key) else "-"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32", help="an export with every port family (default)")
    ap.add_argument(
        "--refs", default="", help="label=export_dir,...: other exports of the same model, forward rows for reference"
    )
    ap.add_argument("--reps", type=int, default=2, help="timed forwards / steps per cell")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: pin the run to one core)")
    ap.add_argument("--force", action="store_true", help="rerun cells whose results are already stored")
    ap.add_argument("--report-only", action="store_true", help="print the table from stored results, run nothing")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of execution_order.jsonl")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.chdir(ROOT)
    args.results = args.results.resolve()
    args.refs = dict(kv.split("=", 1) for kv in args.refs.split(",") if kv)
    print("machine:", json.dumps(machine_info()))
    if args.report_only:
        print(table(load_results(args.results / "execution_order.jsonl"), list(args.refs)))
        return
    run(args)


if __name__ == "__main__":
    main()
