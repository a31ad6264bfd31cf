"""Train on one provider, evaluate on another (as the AGZO paper trains on GPU and evaluates on NPU): CPU -> OpenVINO.

    make bench-cross-provider                                   # or, in the torch-free OpenVINO venv:
    .venv-ov/bin/python benchmarks/cross_provider.py --model artifacts/smollm2-fp32-ov [--steps 60] [--force] \
        [--merged artifacts/smollm2-fp32-ov-merged]

1. fine-tune SmolLM2-135M on CPU (the demo's recipe, shorter: ZO-Act, classification objective, batch 8, k = 64);
2. evaluate the base and the trained run on >= 200 held-out Rotten Tomatoes sentences on CPU, on OpenVINO at FP32
   and on OpenVINO at its default precision, with the cross-provider report (agreement, |Δ log-likelihood|,
   flips, per-layer drift) and the fraction of CPU's accuracy gain that OpenVINO keeps (target >= 90%);
3. train *through* OpenVINO for a few steps (same recipe and seed) and report that run's gain, on OpenVINO and CPU;
4. with ``--merged DIR`` (``zo-edge merge`` of the CPU-trained run, made by the main venv: merge needs torch), the
   deployable graphs (``onnx/``, ``onnx-int4/``) on CPU and OpenVINO: last-token accuracy, agreement, |Δ loglik| and
   greedy tokens through the KV cache (``zo_edge.cross_provider.merged_report``).

Resumable: each stage appends one JSON line to ``benchmarks/results/cross_provider.jsonl`` and is skipped when its
key is there (``--force`` reruns); the run folders are reused when they hold a ``best`` checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from runtime.batch import Batch  # noqa: E402
from runtime.oracle import Oracle  # noqa: E402
from runtime.session import GraphSession  # noqa: E402
from zo_edge.batching import candidate_batch  # noqa: E402
from zo_edge.cli import main as zo_edge_main  # noqa: E402
from zo_edge.cross_provider import compare, format_report, layer_divergence, merged_graphs, merged_report  # noqa: E402
from zo_edge.data import load_tokenizer  # noqa: E402
from zo_edge.evaluate import evaluate  # noqa: E402
from zo_edge.tasks import get_task  # noqa: E402
from zo_edge.train import load_run  # noqa: E402

RESULTS = BENCH_DIR / "results" / "cross_provider.jsonl"
RECIPE = ["--task", "rotten-tomatoes", "--method", "zo-act", "--objective", "classification", "--batch-size", "8"]
RECIPE += ["--max-len", "48", "--k", "64", "--dev-k", "16", "--seed", "0", "--eval-examples", "8"]
#: (label, provider, options): what each trained state is evaluated on
TARGETS = [
    ("cpu", "cpu", {}),
    ("openvino-fp32", "openvino", {"precision": "FP32"}),
    ("openvino-default", "openvino", {}),
]


def _done() -> dict[str, dict]:
    if not RESULTS.is_file():
        return {}
    rows = [json.loads(x) for x in RESULTS.read_text().splitlines() if x.strip()]
    return {r["key"]: r for r in rows}


def _record(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _train(model: str, out: Path, steps: int, provider: str, options: list[str], calib: int = 8) -> float:
    if (out / "best").is_dir():
        return 0.0
    t = time.perf_counter()
    args = ["train", "--model", model, *RECIPE, "--steps", str(steps), "--save-every", str(steps)]
    args += ["--calib-batches", str(calib)]
    args += ["--eval-every", str(steps), "--provider", provider, "--out", str(out)]
    for o in options:
        args += ["--provider-option", o]
    if zo_edge_main(args) != 0:
        raise SystemExit(f"training into {out} failed")
    return time.perf_counter() - t


def _evaluate_all(
    model: str,
    run: Path | None,
    task,
    examples,
    tok,
    max_len: int,
    targets: list[tuple[str, str, dict]],
    checkpoint: str = "best",
) -> tuple[dict, dict]:
    """Every target's EvalResult (and the report) for one trained state (``run``'s ``checkpoint``) or the base."""
    oracles, results = {}, {}
    for label, provider, options in targets:
        oracles[label] = Oracle(GraphSession(model, provider, provider_options=options or None))
        if run is not None:
            load_run(oracles[label], run, checkpoint)
        t = time.perf_counter()
        results[label] = evaluate(oracles[label], tok, task, examples, max_len=max_len)
        print(
            f"  [{'base' if run is None else run.name}] {label}: accuracy {results[label].accuracy:.4f} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    feeds = candidate_batch(tok, examples[:4], task, max_len)[0]
    layers = layer_divergence(oracles, Batch.from_dict(feeds))
    report = compare(
        results,
        precisions={k: o.session.precision for k, o in oracles.items()},
        options={k: o.session.provider_options[o.session.providers[0]] for k, o in oracles.items()},
        layers=layers,
        label="base" if run is None else str(run),
    )
    return results, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="exported fp32 model folder (exported after the issue-17 fix)")
    ap.add_argument("--steps", type=int, default=60, help="CPU fine-tuning steps")
    ap.add_argument("--ov-steps", type=int, default=10, help="steps of the run trained through OpenVINO (0: skip)")
    ap.add_argument("--ov-calib-batches", type=int, default=8, help="ZO-Act calibration batches of that run")
    ap.add_argument(
        "--ov-checkpoint",
        default="latest",
        choices=("best", "latest"),
        help="which checkpoint of the OpenVINO-trained run is evaluated (default latest: a run of a few steps "
        "with one dev evaluation keeps step 0 as its best unless dev moved, which says nothing about the provider)",
    )
    ap.add_argument("--eval-examples", type=int, default=200, help="held-out test sentences (>= 200 for the target)")
    ap.add_argument("--runs", default="runs/bench-cross-provider", help="folder for the two run folders")
    ap.add_argument("--force", action="store_true", help="rerun stages already in the results file")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of stages to run now (cpu-trained, base, openvino-trained, merged; default: all); the "
        "others are read from the results file when there, else left out of the summary",
    )
    ap.add_argument(
        "--same-weights-as",
        default="",
        help="another export folder name of the same base weights (equal weights_sha256) whose recorded rows stand "
        "in for stages not run on --model (e.g. smollm2-fp32-fixed: the base and CPU-run rows of session 3)",
    )
    ap.add_argument("--merged", help="a `zo-edge merge` output of the CPU-trained run: its graphs on both providers")
    ap.add_argument(
        "--default-on",
        default="base,cpu-trained,openvino-trained",
        help="states also evaluated at OpenVINO's default precision (comma list; each costs one more evaluation)",
    )
    a = ap.parse_args()
    done = {} if a.force else _done()
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    runs = Path(a.runs)
    task = get_task("rotten-tomatoes")
    examples = task.load(seed=0, k=64).test[: a.eval_examples]
    tok = load_tokenizer(a.model)
    cpu_run, ov_run = runs / f"cpu-{a.steps}", runs / f"openvino-{a.ov_steps}"
    tag = f"{Path(a.model).name}/n{len(examples)}"

    key = f"train-cpu/{a.steps}"
    if key not in done:
        seconds = _train(a.model, cpu_run, a.steps, "cpu", [])
        _record({"key": key, "run": str(cpu_run), "seconds": round(seconds, 1)})

    reports = {}
    # the CPU-trained run first (the headline), then the base, then the run trained through OpenVINO
    for name, run in (("cpu-trained", cpu_run), ("base", None), ("openvino-trained", ov_run)):
        ov_ckpt = "" if a.ov_checkpoint == "best" else f"-{a.ov_checkpoint}"
        steps = {"cpu-trained": f"/{a.steps}", "openvino-trained": f"/{a.ov_steps}{ov_ckpt}"}.get(name, "")
        key = f"eval/{tag}/{name}{steps}"
        if key in done:
            reports[name] = done[key]
            continue
        if only and name not in only:
            other = key.replace(f"eval/{tag}/", f"eval/{a.same_weights_as}/n{len(examples)}/", 1)
            if a.same_weights_as and other in done:
                reports[name] = done[other]
                print(f"  [{name}] from {other} (same weights)")
            continue
        if name == "openvino-trained":
            if not a.ov_steps:
                continue
            train_key = f"train-openvino/{a.ov_steps}"
            if train_key not in done:
                extra = ["precision=FP32"]
                seconds = _train(a.model, ov_run, a.ov_steps, "openvino", extra, a.ov_calib_batches)
                _record({"key": train_key, "run": str(ov_run), "seconds": round(seconds, 1)})
        targets = [t for t in TARGETS if t[0] != "openvino-default" or name in a.default_on.split(",")]
        ckpt = a.ov_checkpoint if name == "openvino-trained" else "best"
        _, rep = _evaluate_all(a.model, run, task, examples, tok, 48, targets, ckpt)
        print(format_report(rep), flush=True)
        row = {"key": key, "report": rep.to_dict(), "text": format_report(rep)}
        _record(row)
        reports[name] = row

    merged = {}
    for dtype, onnx_dir in (merged_graphs(a.merged) if a.merged and (not only or "merged" in only) else {}).items():
        key = f"eval/{tag}/merged-{dtype}/{Path(a.merged).name}"
        if key not in done:
            t = time.perf_counter()
            rep = merged_report(
                onnx_dir,
                ["cpu", "openvino"],
                task,
                examples,
                tok,
                provider_options={"openvino": {"precision": "FP32"}},
                max_len=48,
            )
            print(format_report(rep), flush=True)
            _record(
                {
                    "key": key,
                    "report": rep.to_dict(),
                    "text": format_report(rep),
                    "seconds": round(time.perf_counter() - t),
                }
            )
            done = _done()
        merged[dtype] = done[key]

    nan = float("nan")
    acc = {n: {lbl: nan for lbl, _, _ in TARGETS} for n in ("cpu-trained", "base", *reports)}
    for n, rep in reports.items():
        acc[n].update({r["provider"]: r["accuracy"] for r in rep["report"]["rows"]})
    print("\n=== cross-provider benchmark:", tag, "===")
    for rep in reports.values():
        print(rep["text"])
    acc.setdefault("openvino-trained", {lbl: nan for lbl, _, _ in TARGETS})
    gain = {lbl: acc["cpu-trained"][lbl] - acc["base"][lbl] for lbl, _, _ in TARGETS}
    ov_gain = {lbl: acc["openvino-trained"][lbl] - acc["base"][lbl] for lbl, _, _ in TARGETS}
    print(f"\naccuracy     {'base':>8} {'cpu-run':>8} {'gain':>7} {'kept':>6}   {'ov-run':>8} {'gain':>7}")
    for lbl, _, _ in TARGETS:
        kept = gain[lbl] / gain["cpu"] if gain["cpu"] else float("nan")
        print(
            f"{lbl:<16} {acc['base'][lbl]:.4f} {acc['cpu-trained'][lbl]:>8.4f} {gain[lbl]:>+7.4f} {kept:>6.1%}   "
            f"{acc['openvino-trained'][lbl]:>8.4f} {ov_gain[lbl]:>+7.4f}"
        )
    print(
        f"(cpu-run: {a.steps} ZO-Act steps on CPU; ov-run: {a.ov_steps} steps trained through OpenVINO at FP32, "
        f"its {a.ov_checkpoint} checkpoint;"
        " kept: that provider's gain over CPU's, target >= 90%)"
    )
    for row in merged.values():
        print(row["text"])


if __name__ == "__main__":
    main()
