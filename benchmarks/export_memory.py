"""The exporter's own memory, before and after tracing without weights (RESULTS.md §11.2, issue #14 item 6).

    python benchmarks/export_memory.py --hf artifacts/scale/smollm2-360m/hf --ref aa34375
    python benchmarks/export_memory.py --report-only

Exports one Hugging Face folder (``model_scaling.py`` builds the random ones) with ``zo-edge export --splits none``,
fp32 and ``--int4``, once with the tree at git revision ``--ref`` (checked out into a temporary worktree, run with
this venv) and once with this tree, alternating. Each export is a fresh process whose peak RSS (``ru_maxrss`` of
that one child) and wall time are recorded, with the size of the fp32 weights, so the table shows the peak as a
multiple of the weights. The exported folders are removed after each cell. Results:
``benchmarks/results/export_memory.jsonl`` (resumable unless ``--force``). Outside CI, like every benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, load_results, machine_info  # noqa: E402

#: runs ``zo-edge export`` from the tree on PYTHONPATH in a child and prints that child's peak RSS (KiB)
MEASURE_EXPORT = (
    "import resource, subprocess, sys\n"
    "cli = 'import sys; from zo_edge.cli import main; sys.exit(main(sys.argv[1:]))'\n"
    "p = subprocess.run([sys.executable, '-c', cli, *sys.argv[1:]])\n"
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)\n"
    "sys.exit(p.returncode)\n"
)


def weights_bytes(hf: Path) -> int:
    return sum(f.stat().st_size for f in hf.glob("*.safetensors"))


def measured_export(hf: Path, out: Path, int4: bool, tree: Path = ROOT) -> dict:
    """``zo-edge export HF --out OUT --splits none --force [--int4]`` from ``tree`` in a fresh process: its return
    code, peak RSS (MiB, that process alone) and wall time. ``model_scaling.py`` builds its exports with it too."""
    cmd = [sys.executable, "-c", MEASURE_EXPORT, "export", str(hf), "--out", str(out), "--splits", "none", "--force"]
    cmd += ["--int4"] if int4 else []
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    peak = next((int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_KIB")), 0)
    return {"rc": proc.returncode, "peak_mb": round(peak / 1024, 1), "wall_s": round(wall, 1)}


def export_cell(tree: Path, hf: Path, int4: bool, out: Path) -> dict:
    r = measured_export(hf, out, int4, tree)
    shutil.rmtree(out, ignore_errors=True)
    return r


def run(args) -> None:
    path = args.results / "export_memory.jsonl"
    done = load_results(path)
    wb = weights_bytes(args.hf)
    with tempfile.TemporaryDirectory(prefix="export-ref-") as tmp:
        ref_tree = Path(tmp) / "tree"
        if args.ref != "none":
            subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), args.ref], cwd=ROOT, check=True)
        try:
            trees = {f"ref-{args.ref}": ref_tree, "this": ROOT} if args.ref != "none" else {"this": ROOT}
            for kind in ("fp32", "int4"):
                for label, tree in trees.items():
                    key = f"{args.hf.parent.name}/{kind}/{label}"
                    if key in done and not args.force:
                        print(f"  [skip] {key}")
                        continue
                    print(f"  [run ] {key} ...", end="", flush=True)
                    r = export_cell(tree, args.hf, kind == "int4", Path(tmp) / "out")
                    r |= {"key": key, "size": args.hf.parent.name, "kind": kind, "tree": label}
                    r["weights_mb"] = wb / 2**20
                    r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                    with path.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f" rc {r['rc']}, peak {r['peak_mb']:.0f} MiB, {r['wall_s']:.0f} s", flush=True)
        finally:
            if args.ref != "none":
                subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, check=False)
    report(load_results(path))


def report(results: dict) -> None:
    print("| size | kind | tree | export peak RSS | x fp32 weights | wall (s) | rc |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        print(
            f"| {r['size']} | {r['kind']} | {r['tree']} | {r['peak_mb'] / 1024:.2f} GB | "
            f"{r['peak_mb'] / r['weights_mb']:.2f}x | {r['wall_s']:.0f} | {r['rc']} |"
        )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, default=ROOT / "artifacts" / "scale" / "smollm2-360m" / "hf", help="HF folder")
    ap.add_argument(
        "--ref",
        default="aa34375",
        help="git revision of the 'before' exporter (default: session 6's; none: this tree only)",
    )
    ap.add_argument("--force", action="store_true", help="rerun cells whose results are already stored")
    ap.add_argument("--report-only", action="store_true", help="print the table from stored results, run nothing")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of export_memory.jsonl")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    args.hf, args.results = args.hf.resolve(), args.results.resolve()
    print("machine:", json.dumps(machine_info()))
    if args.report_only:
        report(load_results(args.results / "export_memory.jsonl"))
        return
    run(args)


if __name__ == "__main__":
    main()
