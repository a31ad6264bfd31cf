"""Memory and time of saving / loading a full-weight checkpoint (what MeZO and Zoop write), old way vs ours.

    python benchmarks/checkpoint_cost.py            # SmolLM2-135M fp32 params (513 MiB), ~1 min

Each cell runs in its own subprocess (``common.run_cell``) that binds the exported params (``GraphSession``), resets
the peak-RSS mark, then saves them once into a temp run folder, and loads that checkpoint back:

* ``reference``: ``safetensors.numpy.save`` (builds the whole file as one ``bytes``) and ``load_file`` + a copy to
  make the arrays writable: what ``runtime.checkpoint`` did before session 2;
* ``streamed``: ``runtime.checkpoint.save_checkpoint`` / ``load_checkpoint`` (``runtime.safetensors_io``: the file is
  written from the arrays' own buffers, and read into one writable buffer).

Printed: the peak RSS above the loaded session during the save and during the load, and their wall times.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, cell_main, load_results, peak_rss_mb, reset_peak, run_cell  # noqa: E402


def main(spec: dict) -> dict:
    import numpy as np
    import psutil

    from runtime import checkpoint
    from runtime.session import GraphSession

    session = GraphSession(spec["model"])
    arrays = {f"param/{k}": v for k, v in session.params.items()}
    reset_peak()
    base = psutil.Process().memory_info().rss / 2**20  # the loaded session: what training holds anyway
    out: dict = {"weights_mb": round(sum(v.nbytes for v in arrays.values()) / 2**20, 1), "base_mb": round(base, 1)}
    with tempfile.TemporaryDirectory(dir=spec.get("tmp")) as tmp:
        t0 = time.perf_counter()
        if spec["kind"] == "reference":
            from safetensors.numpy import load_file, save

            path = Path(tmp) / "arrays.safetensors"
            path.write_bytes(save(arrays))
            out["save_s"] = round(time.perf_counter() - t0, 2)
            out["save_peak_over_base_mb"] = round(peak_rss_mb() - base, 1)
            reset_peak()
            t0 = time.perf_counter()
            loaded = {k: v if v.flags.writeable else v.copy() for k, v in load_file(path).items()}
        else:
            checkpoint.save_checkpoint(tmp, 1, arrays, {"tag": "bench"})
            out["save_s"] = round(time.perf_counter() - t0, 2)
            out["save_peak_over_base_mb"] = round(peak_rss_mb() - base, 1)
            reset_peak()
            t0 = time.perf_counter()
            loaded, _ = checkpoint.load_checkpoint(tmp)
        out["load_s"] = round(time.perf_counter() - t0, 2)
        out["load_peak_over_base_mb"] = round(peak_rss_mb() - base, 1)
        assert all(np.array_equal(loaded[k], v) for k, v in arrays.items()), "round trip changed the weights"
    return out


def driver(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="artifacts/smollm2-fp32")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    path = RESULTS_DIR / "checkpoint.jsonl"
    for kind in ("reference", "streamed"):
        run_cell(
            "checkpoint_cost.py",
            {"key": f"checkpoint/{kind}", "kind": kind, "model": args.model},
            path,
            force=args.force,
        )
    res = load_results(path)
    print("| how | weights (MiB) | save: peak over base (MiB) | save (s) | load: peak over base (MiB) | load (s) |")
    print("|---|---|---|---|---|---|")
    for kind in ("reference", "streamed"):
        r = res.get(f"checkpoint/{kind}")
        if r and "error" not in r:
            print(
                f"| {kind} | {r['weights_mb']:.0f} | {r['save_peak_over_base_mb']:.0f} | {r['save_s']:.2f} | "
                f"{r['load_peak_over_base_mb']:.0f} | {r['load_s']:.2f} |"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):
        cell_main(main)
    else:
        driver()
