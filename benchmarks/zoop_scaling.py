"""Zoop's step time and peak RSS against AGZO and MeZO at batch 8, 16 and 32, on an exported fp32 model.

    python benchmarks/zoop_scaling.py [MODEL_DIR] [--batches 8,16,32] [--seq 64] [--steps 3] [--methods ...]

MODEL_DIR defaults to ``artifacts/smollm2-fp32``. Every (method, batch) cell runs in a fresh subprocess (this
script with ``--cell JSON``), so its peak RSS (``ru_maxrss``) is its own; the table shows the peak after loading the
session and initialising the method (``base``), the peak after the timed steps (``peak``) and their difference
(``extra``: what the steps themselves allocate). Rows are ``--seq`` tokens (64) of real text when the model folder
has a ``tokenizer.json`` (Rotten Tomatoes reviews packed end to end, every token scored); otherwise they are
*random token ids* (the script says which). ``zoop`` is the default one-block-per-step cycle, ``zoop-all`` perturbs
every targeted layer per step. For the Zoop cells the script also times the third (clean) pass alone: a plain
forward vs. the same forward returning the selected groups' input rows (``probe_act_rows``), and reports the bytes
of those rows.

Measured on SmolLM2-135M fp32 (``artifacts/smollm2-fp32``, real text, T = 64, median of 2 steps after a warm-up)
on a shared 2-core VM with a load average of 7-9 from other jobs, so absolute times are several times what an idle
machine gives and only the ratios within a row mean much (step s / peak RSS MiB over a 1191 MiB loaded session):

    B    zoop (cycle)     zoop-all         agzo             mezo
    8    15.4 s / +290    31.9 s / +965    10.4 s / +291    30.1 s / +287
    16   25.2 s / +877    52.0 s / +2378   12.5 s / +893    29.5 s / +980
    32   12.3 s / +2201   54.9 s / +5255   17.0 s / +2147   40.8 s / +2212

(the load fell during the B = 32 cells.) Zoop's clean pass costs what a plain forward costs (4.4 vs 4.7 s at
B = 8, 8.0 vs 8.2 s at B = 16, 3.5 vs 3.5 s at B = 32): a Zoop step is three forwards to AGZO's two. The peak RSS
above the session is mostly onnxruntime's forward arena, which grows with B (every token is scored here, so the
[B·T, 49152] logits dominate) and is the same for every method at a given B; Zoop's own arrays (input rows + noise
feeds) add 16 / 32 / 65 MB at B = 8 / 16 / 32 with one block per step ("cycle"), and 0.5 / 1.0 / 1.9 GB for
"all", whose 210 per-layer sgemms and dense updates also cost about as much time as its forwards (t_upd 15-22 s).
MeZO's time is its three regenerations of 135M normals and the dense axpys (t_samp + t_upd 16-22 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("zoop", "zoop-all", "agzo", "mezo")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- batches ---------------------------------------------------------------------------------------------------
def make_batch(model_dir: Path, batch_size: int, seq: int, seed: int = 0):
    """[batch_size, seq] rows of packed real text if the model has a tokenizer, else random ids; all tokens scored."""
    from runtime.batch import Batch
    from runtime.contract import Manifest

    manifest = Manifest.load(model_dir)
    rng = np.random.default_rng(seed)
    source = "random token ids"
    ids = rng.integers(0, manifest.vocab_size, size=(batch_size, seq), dtype=np.int64)
    if (model_dir / "tokenizer.json").is_file():
        try:
            from runtime.tokenizer import Tokenizer
            from zo_edge.tasks import get_task

            tok = Tokenizer(model_dir, pad_token_id=manifest.pad_token_id)
            texts = [e.fields["text"] for e in get_task("rotten-tomatoes").load_examples()]
            for b in range(batch_size):
                row: list[int] = []
                while len(row) < seq:
                    row.extend(tok.encode(" " + texts[int(rng.integers(len(texts)))]))
                ids[b] = row[:seq]
            source = "Rotten Tomatoes text"
        except Exception as e:  # no text data installed: fall back to random ids, and say so
            source = f"random token ids ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    ones = np.ones_like(ids)
    return Batch(ids, ones, ones.copy()), source


# --- one cell, in its own process ---------------------------------------------------------------------------------
def cell(spec: dict) -> dict:
    from runtime.oracle import Oracle, lm_objective
    from runtime.session import GraphSession
    from zo_edge import optim
    from zo_edge.methods import get_method

    model_dir = Path(spec["model_dir"])
    batch, source = make_batch(model_dir, spec["batch"], spec["seq"])
    oracle = Oracle(GraphSession(model_dir))
    name = spec["method"]
    cls = get_method("zoop" if name.startswith("zoop") else name)
    kw: dict = {}
    if name == "zoop-all":
        kw["select"] = "all"
    if name == "agzo":
        kw["rank"] = oracle.manifest.basis_rank
    lr = 1e-6 if name == "mezo" else 1e-5
    method = cls(cls.Config(**kw), optim.sgd(lr), optim.constant(lr))
    method.init(oracle, 0)
    base = peak_rss_mb()
    times, reports = [], []
    for t in range(spec["steps"] + 1):  # step 0 warms up onnxruntime's arenas
        t0 = time.perf_counter()
        reports.append(method.step(oracle, batch, lm_objective, t))
        if t:
            times.append(time.perf_counter() - t0)
    out = {
        "text": source,
        "step_s": round(statistics.median(times), 4),
        "forwards": reports[-1].forwards,
        "t_forward_s": round(reports[-1].t_forward, 4),
        "t_sample_s": round(reports[-1].t_sample, 4),
        "t_update_s": round(reports[-1].t_update, 4),
        "base_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if name.startswith("zoop"):
        from zo_edge.methods.zoop import live_positions

        groups = sorted({s.group for s in method.selected(0)})
        rows = live_positions(batch)

        def median_time(fn) -> float:
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        plain = median_time(lambda: oracle.sample_losses(batch))
        clean = median_time(lambda: oracle.activations(batch, {g: rows for g in groups}))
        d_in = {g.name: g.d_in for g in oracle.manifest.groups}
        out.update(
            forward_s=round(plain, 4),
            clean_pass_s=round(clean, 4),
            act_rows_mb=round(rows.size * sum(d_in[g] for g in groups) * 4 / 2**20, 2),
            noise_mb=round(rows.size * sum(s.d_out for s in method.selected(0)) * 4 / 2**20, 2),
        )
    return out


# --- the sweep ------------------------------------------------------------------------------------------------------
def run_cell(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, __file__, "--cell", json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**spec, "error": tail[0][:200]}
    return {**spec, **json.loads(lines[-1][len("RESULT ") :])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", default="artifacts/smollm2-fp32", help="an exported fp32 model folder")
    ap.add_argument("--batches", default="8,16,32", help="comma list of batch sizes")
    ap.add_argument("--seq", type=int, default=64, help="tokens per row (<= 64 as the issue asks)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per cell (after one warm-up step)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list from {', '.join(METHODS)}")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        spec = json.loads(args.cell)
        print("RESULT " + json.dumps(cell(spec)), flush=True)
        return
    model_dir = Path(args.model_dir).resolve()
    if not (model_dir / "manifest.json").is_file():
        sys.exit(f"{args.model_dir} is not an exported model folder; create it with `zo-edge export ... --out DIR`")
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        sys.exit(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    print(f"model {model_dir}, seq {args.seq}, {args.steps} timed steps per cell, one fresh process per cell")
    head = f"{'method':<9} {'B':>3} {'step s':>8} {'fwd':>4} {'t_fwd':>7} {'t_samp':>7} {'t_upd':>7}"
    head += f" {'base MiB':>9} {'peak MiB':>9} {'extra':>7}   zoop: forward s / clean pass s, act rows MB, noise MB"
    print(head)
    text = None
    for b in (int(x) for x in args.batches.split(",")):
        for m in methods:
            spec = {"model_dir": str(model_dir), "method": m, "batch": b, "seq": args.seq, "steps": args.steps}
            r = run_cell(spec)
            if "error" in r:
                print(f"{m:<9} {b:>3} FAILED: {r['error']}", flush=True)
                continue
            text = r["text"]
            line = f"{m:<9} {b:>3} {r['step_s']:>8.3f} {r['forwards']:>4} {r['t_forward_s']:>7.3f}"
            line += (
                f" {r['t_sample_s']:>7.3f} {r['t_update_s']:>7.3f} {r['base_rss_mb']:>9.0f} {r['peak_rss_mb']:>9.0f}"
            )
            line += f" {r['peak_rss_mb'] - r['base_rss_mb']:>7.0f}"
            if "clean_pass_s" in r:
                line += f"   {r['forward_s']:.3f} / {r['clean_pass_s']:.3f}, {r['act_rows_mb']}, {r['noise_mb']}"
            print(line, flush=True)
    print(f"rows: {text}")


if __name__ == "__main__":
    main()
