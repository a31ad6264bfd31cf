"""What the ZO ports cost when a method does not use them: the full export against a ``--ports none`` one, one run.

    taskset -c 0 .venv/bin/python benchmarks/ports_cost.py \
        --full artifacts/smollm2-fp32 --bare artifacts/hp-smollm2-noports --reps 7

Issue #14 item 4. Every targeted linear of a full export adds its low-rank side path ``(x P) Qᵀ`` (two rank-0
MatMuls when off) and its output noise (an Add), and every activation group's leader its probes; MeZO, FZOO's and
the ``--layers head`` recipe's passes feed none of them. Measured side by side on the same model (SmolLM2-135M
fp32, the same splits), one intra-op thread:

* the inference forward (``row_nll`` over a [16, 64] batch of packed Rotten Tomatoes text, loss on the last token)
  and one MeZO step on that batch (Rademacher z, 1 query, SGD: 2 forwards plus z's three regenerations), both
  exports' reps interleaved A B B A ... in ONE process so that machine load drifts over both alike; the median
  of ``--reps`` each and the ratio full / bare. The first pass of each session is warm-up, not timed. The row NLLs
  of the two exports are checked equal (bit for bit) before timing;
* peak RSS per export, each in a fresh subprocess run before the parent loads anything (a spawned child inherits
  no floor then): load + 2 forwards + 1 MeZO step;
* whether the ``--layers head`` recipe's graphs (the prefixes, the head's suffix and the candidates' head) differ
  at all between the two exports: they never had ports (frozen prefixes; no block above the head's split).

One JSON line per run goes to ``benchmarks/results/ports_cost.jsonl`` with the machine's load average before and
after. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, load_batches, machine_info, make_batches, median  # noqa: E402

RESULTS = RESULTS_DIR / "ports_cost.jsonl"
BATCH, SEQ = 16, 64


def _span(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _mezo(oracle):
    from zo_edge import optim
    from zo_edge.methods import get_method

    cls = get_method("mezo")
    schedule = optim.constant(1e-6)
    method = cls(cls.Config(mu=1e-3, dist="rademacher"), optim.sgd(schedule), schedule)
    method.init(oracle, 0)
    return method


# --- the RSS cell (a fresh process per export) -------------------------------------------------------------------
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cell(spec: dict) -> dict:
    """One export in a fresh process: RSS once loaded, then the peak after 2 forwards and after 1 MeZO step."""
    from runtime.batch import Batch
    from runtime.oracle import Oracle, lm_objective
    from runtime.session import GraphSession

    batch = Batch.from_dict(load_batches(spec["batch"])[0])
    oracle = Oracle(GraphSession(spec["model"], threads=1))
    loaded, load_peak = _rss_mb(), _peak_mb()
    for _ in range(2):
        oracle.session.forward(batch)
    forward_peak = _peak_mb()
    _mezo(oracle).step(oracle, batch, lm_objective, 0)
    return {
        "model": spec["model"],
        "rss_loaded_mb": round(loaded, 1),
        "peak_load_mb": round(load_peak, 1),
        "peak_forward_mb": round(forward_peak, 1),
        "peak_rss_mb": round(_peak_mb(), 1),
    }


def _spawn_cell(model: str, batch_path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    spec = json.dumps({"model": model, "batch": str(batch_path)})
    out = subprocess.run(
        [sys.executable, __file__, "--cell", spec], check=True, capture_output=True, text=True, env=env, cwd=ROOT
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- the head recipe's graphs ----------------------------------------------------------------------------------
def _same_graph(a: Path, b: Path) -> bool:
    """Same nodes (op, inputs, outputs, attributes) and graph inputs/outputs, ignoring producer metadata."""
    import onnx

    ga, gb = (onnx.load(str(p), load_external_data=False).graph for p in (a, b))

    def sig(g):
        return (
            [(n.op_type, list(n.input), list(n.output), [x.SerializeToString() for x in n.attribute]) for n in g.node],
            [i.name for i in g.input],
            [o.name for o in g.output],
        )

    return sig(ga) == sig(gb)


def head_graphs_identical(full: Path, bare: Path) -> dict[str, bool]:
    from runtime import contract

    m = contract.Manifest.load(full)
    n = max(m.splits) if m.splits else None
    files = [contract.prefix_graph_file(s) for s in m.splits]
    if n is not None:
        files += [contract.suffix_graph_file(n), contract.candidate_head_file(n)]
    return {f: _same_graph(full / f, bare / f) for f in files if (full / f).is_file() and (bare / f).is_file()}


def _n_nodes(model: Path) -> int:
    import onnx

    return len(onnx.load(str(model / "model.onnx"), load_external_data=False).graph.node)


# --- the interleaved timing (one process) -----------------------------------------------------------------------
def timing(full: str, bare: str, batch_path: Path, reps: int) -> dict:
    from runtime import contract
    from runtime.batch import Batch
    from runtime.oracle import Oracle, lm_objective
    from runtime.session import GraphSession

    batch = Batch.from_dict(load_batches(batch_path)[0])
    oracles = {"full": Oracle(GraphSession(full, threads=1)), "bare": Oracle(GraphSession(bare, threads=1))}
    assert oracles["bare"].session.manifest.ports == [], f"{bare} is not a --ports none export"
    nll = {k: o.session.forward(batch)[contract.OUTPUT_ROW_NLL] for k, o in oracles.items()}  # warm-up
    same = bool(np.array_equal(nll["full"], nll["bare"]))
    max_diff = float(np.abs(nll["full"] - nll["bare"]).max())
    # wall time, and the process's CPU time: another process sharing the core stretches the wall time of whatever
    # runs beside it, but not our CPU time (one intra-op thread: onnxruntime computes on the calling thread)
    wall: dict[str, dict[str, list[float]]] = {m: {"full": [], "bare": []} for m in ("forward", "mezo_step")}
    cpu: dict[str, dict[str, list[float]]] = {m: {"full": [], "bare": []} for m in ("forward", "mezo_step")}
    methods = {k: _mezo(o) for k, o in oracles.items()}
    for k, o in oracles.items():  # warm-up step (allocations of z's chunks)
        methods[k].step(o, batch, lm_objective, 0)

    def timed(what: str, k: str, fn) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall[what][k].append(time.perf_counter() - w0)
        cpu[what][k].append(time.process_time() - c0)

    for r in range(reps):
        order = ("full", "bare") if r % 2 == 0 else ("bare", "full")
        for k in order:
            timed("forward", k, lambda k=k: oracles[k].session.forward(batch))
        for k in order:
            timed("mezo_step", k, lambda k=k, r=r: methods[k].step(oracles[k], batch, lm_objective, 1 + r))
        print(
            f"  rep {r + 1}/{reps}: forward cpu full {cpu['forward']['full'][-1]:.3f} s bare "
            f"{cpu['forward']['bare'][-1]:.3f} s (wall {wall['forward']['full'][-1]:.2f} / "
            f"{wall['forward']['bare'][-1]:.2f}); mezo step cpu full {cpu['mezo_step']['full'][-1]:.3f} s bare "
            f"{cpu['mezo_step']['bare'][-1]:.3f} s; load {_load()}",
            flush=True,
        )
    out = {"row_nll_equal": same, "row_nll_max_abs_diff": max_diff}
    for name in ("forward", "mezo_step"):
        entry = {}
        for clock, xs in (("cpu", cpu[name]), ("wall", wall[name])):
            f, b = median(xs["full"]), median(xs["bare"])
            pairs = [x / y for x, y in zip(xs["full"], xs["bare"], strict=True)]
            entry[clock] = {
                "full_median_s": round(f, 4),
                "bare_median_s": round(b, 4),
                "ratio_full_over_bare": round(f / b, 4),
                # the ratio of each adjacent full/bare pair (same moment, same load): median and range
                "pair_ratio_median": round(median(pairs), 4),
                "pair_ratio_min_max": [round(min(pairs), 4), round(max(pairs), 4)],
                "full_s": [round(x, 4) for x in xs["full"]],
                "bare_s": [round(x, 4) for x in xs["bare"]],
            }
        out[name] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", default="artifacts/smollm2-fp32", help="an export with every port (--ports all)")
    ap.add_argument("--bare", default="artifacts/hp-smollm2-noports", help="the same model exported --ports none")
    ap.add_argument("--reps", type=int, default=7, help="timed reps per export and measurement (>= 5)")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        print(json.dumps(cell(json.loads(a.cell))))
        return
    for path in (a.full, a.bare):
        if not (ROOT / path / "manifest.json").is_file():
            sys.exit(f"{path} is not an export; see this file's docstring for the commands that make both")
    if a.reps < 5:
        sys.exit("--reps must be >= 5 (a median of fewer is noise on this machine)")
    load_before = _load()
    # tokenized in a subprocess: the parent stays small, so the RSS cells spawned from it inherit no floor
    batch_path = make_batches("packed", RESULTS_DIR / ".ports_cost_batch.npz", a.full, BATCH, SEQ)
    print(f"peak RSS, a fresh process per export (load average {load_before}) ...", flush=True)
    rss = {k: _spawn_cell(p, batch_path) for k, p in (("full", a.full), ("bare", a.bare))}
    for k, c in rss.items():
        print(
            f"  {k}: loaded {c['rss_loaded_mb']:.0f} MiB, peak after 2 forwards {c['peak_forward_mb']:.0f} MiB, "
            f"after a MeZO step {c['peak_rss_mb']:.0f} MiB",
            flush=True,
        )
    print(f"forward [{BATCH}, {SEQ}] and one MeZO step, interleaved, {a.reps} reps each ...", flush=True)
    t = timing(a.full, a.bare, batch_path, a.reps)
    batch_path.unlink()
    result = {
        "key": f"ports_cost-{BATCH}x{SEQ}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "full": a.full,
        "bare": a.bare,
        "batch": [BATCH, SEQ],
        "reps": a.reps,
        "threads": 1,
        "nodes": {"full": _n_nodes(ROOT / a.full), "bare": _n_nodes(ROOT / a.bare)},
        **t,
        "rss": {
            **rss,
            "peak_ratio_full_over_bare": round(rss["full"]["peak_rss_mb"] / rss["bare"]["peak_rss_mb"], 4),
        },
        "head_recipe_graphs_identical": head_graphs_identical(ROOT / a.full, ROOT / a.bare),
        "loadavg_before": load_before,
        "loadavg_after": _load(),
        "machine": machine_info(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    lines = [
        f"row NLL equal: {t['row_nll_equal']} (max |diff| {t['row_nll_max_abs_diff']:.1e}); graph nodes "
        f"{result['nodes']['full']} -> {result['nodes']['bare']}"
    ]
    for name, label in (("forward", f"forward [{BATCH}, {SEQ}]"), ("mezo_step", "MeZO step")):
        for clock in ("cpu", "wall"):
            x = t[name][clock]
            lines.append(
                f"{label} ({clock}): full {x['full_median_s']:.3f} s, bare {x['bare_median_s']:.3f} s, full/bare "
                f"{x['ratio_full_over_bare']:.3f}x (median of pairs {x['pair_ratio_median']:.3f}, "
                f"{_span(x['pair_ratio_min_max'])})"
            )
    lines += [
        f"peak RSS: full {rss['full']['peak_rss_mb']:.0f} MiB, bare {rss['bare']['peak_rss_mb']:.0f} MiB, "
        f"{result['rss']['peak_ratio_full_over_bare']:.3f}x",
        f"head recipe graphs identical: {result['head_recipe_graphs_identical']}",
        f"load average {load_before} -> {result['loadavg_after']}; appended to {RESULTS.relative_to(ROOT)}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
