"""Gradient alignment on SmolLM2-135M: the cosine between each method's single-query estimate and the true gradient.

    python benchmarks/alignment.py                          # 6 methods, 50 draws on 5 batches of 16 each
    python benchmarks/alignment.py --methods agzo --force   # rerun one method (its new line supersedes the old)
    python benchmarks/alignment.py --report-only            # the table from the stored results
    python benchmarks/alignment.py --draws 2 --batches 1 --methods lozo --out /tmp/a.jsonl --work /tmp/a  # smoke

The AGZO paper's diagnostic (arXiv 2601.17261), on the real model and real Rotten Tomatoes batches. Per method
and batch, ``ceil(draws / batches)`` single-query estimates ĝ (``alignment_lib.single_query_estimates``: lr = 1
SGD readback, every method over the same 106M linear-weight coordinates, lazy periods of 1, Zoop unnormalised
over every layer; see its docstring), each compared with ∇L by its cosine (float64 accumulation, layer by layer:
a draw is never stacked). Also the cosine of the mean of the batch's draws, the norm ratio ‖ĝ‖ / ‖∇L‖, and the
wall time of each draw's ``method.step``.

* **Batches**: ``--batches`` disjoint batches of ``--batch-size`` Rotten Tomatoes training examples as training
  draws them (``zo_edge.data.TaskBatches`` with the run seed: shuffled, so batches mix the two classes; ``lm_batch``
  with max_len 64: prompt + gold label word, loss on the label token), k-shot train set large enough for one epoch
  to hold them all. ZO-Act calibrates on 8 batches of the same training set, as ``zo-edge train`` does
  (``TaskBatches.calibration``), once per alignment batch (24 extra forwards each).
* **True gradient**: torch autograd (``export.source.resolve_source(--source).load()``: the float32 model the
  export was made from) of the objective every method minimises, ``runtime.oracle.lm_objective`` averaged over rows
  (mean over rows of each row's token-mean NLL, log-softmax in float64 at the target positions). It runs in its own
  subprocess before any ORT process, is stored as one flat float32 ``.npy`` per batch (HF orientation, manifest
  linear order, 425 MB) under ``--work``, named by a hash of the weights and the batch, and reused. Each method
  cell first checks that its ORT loss matches the torch loss of every batch (relative difference < 1e-3).
* **Configs**: ``alignment_lib.CONFIGS`` with ZO-Act at its training default rank 8 (the tiny test uses 4);
  LOZO and SubZero rank 2, AGZO rank 1 (the export's basis rank) are their training defaults; μ = 1e-3.

Each method is one cell in a fresh subprocess (``common.run_cell``; nothing in it imports torch) that appends one
JSON line to ``--out`` (default ``benchmarks/results/alignment.jsonl``), keyed by method, draws, batches, batch size
and seed; a stored cell is skipped unless ``--force``, so an interrupted run resumes and one method can be rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    cell_main,
    load_batches,
    load_results,
    machine_info,
    method_registry,
    reset_peak,
    run_cell,
    save_batches,
    spawn_cell,
)

#: merged over alignment_lib.CONFIGS: ZO-Act at its training default rank
OVERRIDES: dict[str, dict] = {"zo-act": {"rank": 8}}
CALIB_BATCHES = 8  # ZO-Act's training default (ZOActConfig.calib_batches)
PARITY_RTOL = 1e-3
MU = 1e-3


# --- batches (child) ----------------------------------------------------------------------------------------------
def _batches_cell(spec: dict) -> dict:
    from zo_edge.data import TaskBatches, load_tokenizer
    from zo_edge.tasks import get_task

    n, bs = spec["n"], spec["batch_size"]
    task = get_task("rotten-tomatoes")
    data = task.load(seed=spec["seed"], k=max(16, -(-bs * n // 2)))  # one epoch holds the n batches: all distinct
    assert len(data.train) >= bs * n, f"need {bs * n} training examples, got {len(data.train)}"
    tb = TaskBatches(task, data.train, load_tokenizer(spec["model"]), bs, spec["max_len"], spec["seed"], "lm")

    def as_dict(b) -> dict[str, np.ndarray]:
        return {"input_ids": b.input_ids, "attention_mask": b.attention_mask, "loss_mask": b.loss_mask}

    batches = [as_dict(tb.next()[0]) for _ in range(n)]
    save_batches(Path(spec["out"]), batches)
    save_batches(Path(spec["calib_out"]), [as_dict(b) for b in tb.calibration(spec["calib"])])
    return {"shapes": [list(b["input_ids"].shape) for b in batches], "train_examples": len(data.train)}


def batch_hash(weights_sha: str, batch: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(weights_sha.encode())
    for k in ("input_ids", "attention_mask", "loss_mask"):
        a = np.ascontiguousarray(batch[k], np.int64)
        h.update(f"{k}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def grad_paths(work: Path, weights_sha: str, batch: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """(the flat float32 gradient .npy, its .json: torch loss and norm) of one batch."""
    stem = work / f"grad-{batch_hash(weights_sha, batch)}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


# --- the true gradient (child, torch) -----------------------------------------------------------------------------
def torch_objective(model, batch: dict[str, np.ndarray]):
    """mean over rows of (row's summed target NLL / its target count): ``lm_objective`` as the graph computes it
    (positions clamp(cumsum(mask) − 1, 0) for left padding; target u counts when loss_mask[u], attention_mask[u] and
    attention_mask[u − 1] are set), log-softmax in float64 at the target positions only."""
    import torch

    ids, attn, lm = (torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask", "loss_mask"))
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    eff = (lm[:, 1:] * attn[:, 1:] * attn[:, :-1]).bool()
    rows, cols = eff.nonzero(as_tuple=True)  # predictor position cols, target cols + 1
    logp = torch.log_softmax(logits[rows, cols].to(torch.float64), dim=-1)
    nll = -logp.gather(-1, ids[rows, cols + 1].unsqueeze(-1)).squeeze(-1)
    row_nll = torch.zeros(ids.shape[0], dtype=torch.float64).index_add(0, rows, nll)
    count = eff.to(torch.float64).sum(dim=1)
    return (row_nll / count.clamp(min=1.0)).mean()


def _grad_cell(spec: dict) -> dict:
    import torch

    from export.source import resolve_source
    from runtime.contract import Manifest

    torch.set_num_threads(spec["threads"])
    manifest = Manifest.load(spec["model"])
    linears = manifest.linears
    work = Path(spec["work"])
    todo = []
    for i, b in enumerate(load_batches(spec["batches"])):
        npy, meta = grad_paths(work, manifest.weights_sha256, b)
        if not (npy.is_file() and meta.is_file()):
            todo.append((i, b, npy, meta))
    out: dict = {"computed": [i for i, *_ in todo]}
    if not todo:
        return out
    t0 = time.perf_counter()
    model, _ = resolve_source(spec["source"]).load()
    out["load_s"] = round(time.perf_counter() - t0, 2)
    params = dict(model.named_parameters())
    wanted = {s.weight for s in linears}
    for name, p in params.items():
        p.requires_grad_(name in wanted)  # only the linear weights' gradients are needed
    size = sum(s.d_in * s.d_out for s in linears)
    reset_peak()
    for i, b, npy, meta in todo:
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = torch_objective(model, b)
        loss.backward()
        tmp = npy.with_suffix(".tmp.npy")
        flat = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(size,))
        off, sq = 0, 0.0
        for s in linears:
            w = params[s.weight]
            assert tuple(w.shape) == (s.d_out, s.d_in), f"{s.weight}: torch {tuple(w.shape)} vs manifest"
            g = w.grad.detach().numpy().ravel()
            flat[off : off + g.size] = g
            sq += float(np.dot(g.astype(np.float64), g.astype(np.float64)))
            off += g.size
            w.grad = None
        flat.flush()
        del flat
        os.replace(tmp, npy)
        info = {"torch_loss": float(loss.detach()), "grad_norm": math.sqrt(sq), "batch": i}
        meta.write_text(json.dumps(info) + "\n")
        took = time.perf_counter() - t0
        msg = f"grad batch {i}: loss {info['torch_loss']:.5f}, |g| {info['grad_norm']:.4g}, {took:.1f} s"
        print(msg, file=sys.stderr, flush=True)
    return out


# --- one method's alignment (child, ORT only) ---------------------------------------------------------------------
def _method_cell(spec: dict) -> dict:
    from alignment_lib import CONFIGS, CosineMeter, single_query_estimates, summary

    from runtime.batch import Batch
    from runtime.oracle import Oracle
    from runtime.session import GraphSession

    name, per = spec["method"], spec["draws_per_batch"]
    t0 = time.perf_counter()
    session = GraphSession(spec["model"], threads=spec["threads"])
    linears = session.manifest.linears
    batches = [Batch.from_dict(b) for b in load_batches(spec["batches"])]
    calib = [Batch.from_dict(b) for b in load_batches(spec["calib"])]
    out: dict = {"load_s": round(time.perf_counter() - t0, 2)}
    reset_peak()
    per_batch, cos_all, ratios, step_s, draw_s = [], [], [], [], []
    for i, (batch, (npy, meta)) in enumerate(zip(batches, spec["grads"], strict=True)):
        info = json.loads(Path(meta).read_text())
        ort_loss = float(np.mean(Oracle(session).sample_losses(batch)))
        rel = abs(ort_loss - info["torch_loss"]) / abs(info["torch_loss"])
        assert rel < PARITY_RTOL, f"batch {i}: ORT loss {ort_loss:.6f} vs torch {info['torch_loss']:.6f} ({rel:.2e})"
        flat = np.load(npy, mmap_mode="r")
        views, off = [], 0
        for s in linears:
            views.append(flat[off : off + s.d_out * s.d_in].reshape(s.d_out, s.d_in))
            off += s.d_out * s.d_in
        assert off == flat.size, f"{npy}: {flat.size} values, the manifest's linears have {off}"
        meter = CosineMeter(views)
        draws = single_query_estimates(
            name,
            session,
            batch,
            per,
            seed=1000 * spec["seed"] + i,
            mu=spec["mu"],
            config=spec["config"],
            calib_batches=calib,
            step_seconds=step_s,
        )
        t_start = time.perf_counter()
        t_prev = None
        for est in draws:
            meter.add(est)
            now = time.perf_counter()
            if t_prev is not None:  # the first draw's interval includes ZO-Act's calibration and the snapshot
                draw_s.append(now - t_prev)
            t_prev = now
        per_batch.append(
            {
                "cos": [round(c, 8) for c in meter.cosines],
                "cos_mean_of_draws": meter.mean_cosine(),
                "norm_ratio_mean": float(np.mean(meter.norm_ratios)),
                "grad_norm": meter.grad_norm,
                "torch_loss": info["torch_loss"],
                "ort_loss": ort_loss,
                "wall_s": round(time.perf_counter() - t_start, 2),
            }
        )
        cos_all += meter.cosines
        ratios += meter.norm_ratios
        del meter, views, flat
        last = per_batch[-1]
        msg = f"{name} batch {i}: mean cos {np.mean(last['cos']):+.3e}, cos of mean {last['cos_mean_of_draws']:+.3e}"
        print(msg, file=sys.stderr, flush=True)
    out.update(
        {
            "config": {**CONFIGS[name], **spec["config"]},
            "n_draws": len(cos_all),
            "cos_stats": summary(cos_all),
            "norm_ratio_stats": summary(ratios),
            "cos_mean_of_draws": [b["cos_mean_of_draws"] for b in per_batch],
            "s_per_draw": float(np.mean(step_s)),
            "s_per_draw_with_readback": float(np.mean(draw_s)) if draw_s else None,
            "per_batch": per_batch,
            "machine": machine_info(),
        }
    )
    return out


def _cell(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "batches":
        return _batches_cell(spec)
    if kind == "grad":
        return _grad_cell(spec)
    if kind == "method":
        return _method_cell(spec)
    raise ValueError(f"unknown alignment cell kind {kind!r}")


# --- parent -------------------------------------------------------------------------------------------------------
def _child(spec: dict, timeout: float) -> dict:
    """Run a helper cell (batches, gradients) in its own process; its progress lines go to our stderr."""
    proc, result = spawn_cell("alignment.py", spec, timeout, capture_stderr=False)
    if result is None:
        raise SystemExit(f"alignment {spec['kind']} cell failed (rc {proc.returncode}); see the traceback above")
    return result


def cell_key(method: str, args) -> str:
    return f"{method}/d{args.draws}-b{args.batches}-bs{args.batch_size}-l{args.max_len}-s{args.seed}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2e}"


def print_table(results: dict[str, dict], args) -> None:
    rows = [(m, results.get(cell_key(m, args))) for m in args.methods]
    per = -(-args.draws // args.batches)
    print(
        f"\ncosine(single-query estimate, autograd gradient), SmolLM2-135M fp32 linear weights (106M values), "
        f"{args.batches} Rotten Tomatoes batch(es) of {args.batch_size}, {per} draws each; "
        "cos of mean-of-draws: the mean of one batch's draws, averaged over the batches"
    )
    cols = ["method", "draws", "mean cos", "std", "min", "q25", "median", "q75", "max", "cos of mean-of-draws"]
    print("| " + " | ".join([*cols, "‖ĝ‖/‖∇L‖", "s/draw"]) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for m, r in rows:
        if r is None or "cos_stats" not in r:
            print(f"| {m} | " + ("FAILED" if r else "not run") + " |" + " |" * (len(cols) + 1))
            continue
        c = r["cos_stats"]
        stats = [c[k] for k in ("mean", "std", "min", "q25", "median", "q75", "max")]
        cells = [m, str(r["n_draws"]), *map(_fmt, stats), _fmt(float(np.mean(r["cos_mean_of_draws"])))]
        cells[3] = f"{c['std']:.2e}"  # a spread: no sign
        cells += [f"{r['norm_ratio_stats']['mean']:.3g}", f"{r['s_per_draw']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    loads = {m: r.get("loadavg_after") for m, r in rows if r and "loadavg_after" in r}
    if loads:
        print("load average after each cell: " + ", ".join(f"{m} {v}" for m, v in loads.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--draws", type=int, default=50, help="single-query draws per method, in total (default 50)")
    ap.add_argument("--batches", type=int, default=5, help="distinct batches the draws are spread over (default 5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    methods = list(method_registry())
    ap.add_argument("--methods", nargs="+", default=methods, choices=methods)
    ap.add_argument("--seed", type=int, default=0, help="data seed (batches) and method seed base")
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "smollm2-fp32"), help="the fp32 export")
    ap.add_argument("--source", default="smollm2-135m", help="what the export was made from (the torch reference)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "alignment.jsonl")
    ap.add_argument("--work", type=Path, default=RESULTS_DIR / "alignment", help="batches, gradients (425 MB each)")
    ap.add_argument("--force", action="store_true", help="rerun the methods already stored")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.draws < 1 or args.batches < 1 or args.batches > args.draws:
        ap.error("need 1 <= --batches <= --draws")
    done = load_results(args.out)
    todo = [m for m in args.methods if args.force or cell_key(m, args) not in done]
    if todo and not args.report_only:
        weights_sha = json.loads((Path(args.model) / "manifest.json").read_text())["weights_sha256"]
        args.work.mkdir(parents=True, exist_ok=True)
        (args.work / ".gitignore").write_text("*\n")  # gradients are 425 MB each: never committed
        tag = f"b{args.batch_size}-l{args.max_len}-n{args.batches}-s{args.seed}"
        batches_path, calib_path = args.work / f"batches-{tag}.npz", args.work / f"calib-{tag}-c{CALIB_BATCHES}.npz"
        common = {"model": str(args.model), "threads": args.threads}
        if not (batches_path.is_file() and calib_path.is_file()):
            print("building batches ...", flush=True)
            spec = {"kind": "batches", "n": args.batches, "batch_size": args.batch_size, "max_len": args.max_len}
            spec.update(seed=args.seed, calib=CALIB_BATCHES, out=str(batches_path), calib_out=str(calib_path))
            _child({**spec, **common}, timeout=1800)
        batches = load_batches(batches_path)
        grads = [grad_paths(args.work, weights_sha, b) for b in batches]
        if not all(p.is_file() and q.is_file() for p, q in grads):
            print("torch autograd gradients ...", flush=True)
            spec = {"kind": "grad", "batches": str(batches_path), "source": args.source, "work": str(args.work)}
            _child({**spec, **common}, timeout=3600)
        print(f"methods: {', '.join(todo)} ({machine_info()})", flush=True)
        for m in todo:
            spec = {
                "key": cell_key(m, args),
                "kind": "method",
                "method": m,
                "draws": args.draws,
                "batches_n": args.batches,
                "batch_size": args.batch_size,
                "draws_per_batch": -(-args.draws // args.batches),
                "seed": args.seed,
                "mu": MU,
                "config": OVERRIDES.get(m, {}),
                "batches": str(batches_path),
                "calib": str(calib_path),
                "grads": [[str(p), str(q)] for p, q in grads],
                **common,
            }
            run_cell("alignment.py", spec, args.out, force=True, timeout=7200)
    print_table(load_results(args.out), args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].lstrip().startswith("{"):
        cell_main(_cell)
    else:
        main()
