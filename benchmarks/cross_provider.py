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

Two more suites on the real model (``--suite``), each a CPU-trained run, a run trained *through* OpenVINO or a
merged graph, evaluated on CPU, OpenVINO at FP32 and OpenVINO at its default precision:

    .venv-ov/bin/python benchmarks/cross_provider.py --suite head --model artifacts/h5x-smollm2-fp32 --steps 300
    .venv-ov/bin/python benchmarks/cross_provider.py --suite int4 --model artifacts/h5x-smollm2-int4 --steps 60 \
        [--merged artifacts/h5x-smollm2-int4-merged]

* ``head``: the demo's recipe (``zo_edge.demo.DEMO``: the best prompt on dev, MeZO + Adam on the final norm behind
  the head split's prefix cache), trained on CPU and through OpenVINO (the prefix and suffix graphs run there);
  the export needs the head split (``zo-edge export --splits auto`` or ``--splits 30``);
* ``int4``: ``DEMO_INT4`` (ZO-Act on every block of a MatMulNBits export) on CPU, its merge (``zo-edge merge``, main
  venv) with ``--merged``: does OpenVINO compute MatMulNBits as CPU does?

Every row records the 1/5/15-min load average (``os.getloadavg``) at its end: times from a shared machine are not
speeds.

Resumable: each stage appends one JSON line to ``benchmarks/results/cross_provider.jsonl`` and is skipped when its
key is there (``--force`` reruns); the run folders are reused when they hold a ``best`` checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from runtime.batch import Batch  # noqa: E402
from runtime.generate import Generator  # noqa: E402
from runtime.oracle import Oracle  # noqa: E402
from runtime.providers import computed_precision  # noqa: E402
from runtime.session import GraphSession  # noqa: E402
from zo_edge.batching import candidate_batch  # noqa: E402
from zo_edge.cli import main as zo_edge_main  # noqa: E402
from zo_edge.config import read_run_config  # noqa: E402
from zo_edge.cross_provider import (  # noqa: E402
    compare,
    compare_greedy,
    evaluate_merged,
    format_report,
    greedy_tokens,
    layer_divergence,
    merged_graphs,
    merged_report,
)
from zo_edge.data import load_tokenizer  # noqa: E402
from zo_edge.demo import DEMO, DEMO_INT4  # noqa: E402
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
    row = {**row, "load": [round(x, 2) for x in os.getloadavg()], "at": time.strftime("%Y-%m-%d %H:%M:%S")}
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


# --- the demo's recipes (--suite head / int4) ----------------------------------------------------------------------
def _recipe_flags(recipe: dict, steps: int, eval_examples: int) -> list[str]:
    """A recipe of ``zo_edge.demo`` as ``zo-edge train`` flags (the demo's dict is the one place it is written),
    with fewer steps: checkpoints and dev evaluations keep the demo's spacing, capped at the run's length."""
    over = {**recipe, "steps": steps, "eval_examples": eval_examples}
    over["save_every"] = min(recipe["save_every"], steps)
    over["eval_every"] = min(recipe["eval_every"], steps)
    flags = []
    for key, value in over.items():
        if value is not None:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _train_recipe(model: str, out: Path, flags: list[str], provider: str, options: list[str]) -> float:
    if (out / "best").is_dir():
        return 0.0
    t = time.perf_counter()
    args = ["train", "--model", model, *flags, "--provider", provider, "--out", str(out)]
    for o in options:
        args += ["--provider-option", o]
    if zo_edge_main(args) != 0:
        raise SystemExit(f"training into {out} failed")
    return time.perf_counter() - t


def _run_task(run: Path):
    """(task, max_len) a run trained with: the prompt ``--template auto`` chose on dev and the ``--max-len 0`` it
    resolved are in its config.json, and the base is scored with the same prompt (the demo's honest "before")."""
    cfg = read_run_config(run)
    task = get_task(cfg["task"])
    if cfg.get("template") or cfg.get("labels"):
        task = task.with_prompt(cfg.get("template") or None, cfg.get("labels") or None)
    return task, int(cfg["max_len"])


def _fixed_prompt(flags: list[str], run: Path) -> list[str]:
    """``flags`` with ``--template auto`` / ``--max-len 0`` replaced by what ``run`` resolved them to."""
    cfg = read_run_config(run)
    out, i = [], 0
    while i < len(flags):
        if flags[i] in ("--template", "--max-len"):
            i += 2
            continue
        out.append(flags[i])
        i += 1
    return [*out, "--template", cfg["template"], "--labels", cfg["labels"], "--max-len", str(cfg["max_len"])]


def _with(flags: list[str], flag: str, value: str) -> list[str]:
    """``flags`` with ``flag``'s value set to ``value``."""
    out = list(flags)
    if flag in out:
        out[out.index(flag) + 1] = value
        return out
    return [*out, flag, value]


def _merged_all(onnx_dir: Path, dtype: str, targets, task, examples, tok, max_len: int):
    """``merged_report`` over the benchmark's targets (one provider may appear twice, at two precisions)."""
    gens = {lbl: Generator(onnx_dir, prov, provider_options=opts or None) for lbl, prov, opts in targets}
    results = {lbl: evaluate_merged(g, tok, task, examples, max_len=max_len) for lbl, g in gens.items()}
    probe = examples[:8]
    greedy = {lbl: greedy_tokens(g, tok, task, probe, max_len=max_len, new_tokens=16) for lbl, g in gens.items()}
    rep = compare(
        results,
        precisions={lbl: computed_precision(g.providers[0], g.provider_options[0], dtype) for lbl, g in gens.items()},
        options={lbl: g.provider_options[0] for lbl, g in gens.items()},
        label=f"merged {onnx_dir}",
    )
    rep.greedy = compare_greedy(greedy)
    return rep


def _eval_stage(done: dict, key: str, model: str, run: Path | None, task, examples, tok, max_len, targets) -> dict:
    if key in done:
        return done[key]
    t = time.perf_counter()
    _, rep = _evaluate_all(model, run, task, examples, tok, max_len, targets)
    print(format_report(rep), flush=True)
    row = {"key": key, "report": rep.to_dict(), "text": format_report(rep), "seconds": round(time.perf_counter() - t)}
    _record(row)
    return row


def _accuracy(row: dict) -> dict[str, float]:
    return {r["provider"]: r["accuracy"] for r in row["report"]["rows"]}


def _print_gains(title: str, base: dict, runs: dict[str, dict]) -> None:
    """Per target: the base's accuracy, each run's and its gain; ``kept`` = that target's gain over CPU's."""
    print(f"\n=== {title} ===")
    print(f"{'evaluated on':<17} {'base':>7}" + "".join(f" {name:>18} {'gain':>7} {'kept':>6}" for name in runs))
    base_acc = _accuracy(base)
    for lbl, _, _ in TARGETS:
        if lbl not in base_acc:
            continue
        line = f"{lbl:<17} {base_acc[lbl]:>7.4f}"
        for row in runs.values():
            acc = _accuracy(row)
            if lbl not in acc:
                line += f" {'-':>18} {'-':>7} {'-':>6}"
                continue
            gain, cpu_gain = acc[lbl] - base_acc[lbl], acc["cpu"] - base_acc["cpu"]
            kept = f"{gain / cpu_gain:.0%}" if cpu_gain else "-"
            line += f" {acc[lbl]:>18.4f} {gain:>+7.4f} {kept:>6}"
        print(line)


def _evaluate_head_states(model: str, states: dict, examples, tok, targets) -> dict:
    """Every state of a ``--layers head`` comparison (the base and runs that trained the final norm only) on every
    target, through the head split as the runs trained: per target one oracle whose prefix cache (the whole stack,
    computed by that provider) serves every state, since the states differ in the final norm alone. Returns
    ``{state: CrossProviderReport}`` (no per-layer part: the head's suffix has no block probes)."""
    from runtime.contract import Manifest
    from runtime.layers import n_blocks
    from runtime.prefix_cache import make_oracle

    n = n_blocks(Manifest.load(model))
    results: dict[str, dict] = {name: {} for name in states}
    precisions, options = {}, {}
    for label, provider, opts in targets:
        oracle, split = make_oracle(model, blocks=[n], provider=provider, provider_options=opts or None)
        assert split == n, f"{model}: the head's split {n} was not used (got {split})"
        precisions[label] = oracle.session.precision
        options[label] = oracle.session.provider_options[oracle.session.providers[0]]
        for name, (run, task, max_len) in states.items():  # the base first: nothing loaded yet
            if run is not None:
                load_run(oracle, run, "best")
            t = time.perf_counter()
            results[name][label] = evaluate(oracle, tok, task, examples, max_len=max_len)
            print(
                f"  [{name}] {label}: accuracy {results[name][label].accuracy:.4f} ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    return {
        name: compare(results[name], precisions=precisions, options=options, label=str(run or "base"))
        for name, (run, _, _) in states.items()
    }


def head_suite(a, done: dict) -> None:
    """The demo's fp32 recipe (``DEMO``: MeZO on the final norm behind the head split), trained on CPU and through
    OpenVINO at FP32, each evaluated on every target, beside the base with the same prompt."""
    from runtime.contract import Manifest
    from runtime.layers import n_blocks

    manifest = Manifest.load(a.model)
    if n_blocks(manifest) not in manifest.splits:
        raise SystemExit(f"{a.model} has no head split (splits {manifest.splits}); export with --splits auto")
    steps = a.steps or DEMO["steps"]
    recipe = {**DEMO, **{k: v for k, v in (("k", a.k), ("dev_k", a.dev_k)) if v}}
    flags = _recipe_flags(recipe, steps, a.train_eval_examples or a.eval_examples)
    runs = Path(a.runs) / "head"
    name = f"k{recipe['k']}-s{steps}"
    trained = {"cpu-trained": runs / f"cpu-{name}", "openvino-trained": runs / f"openvino-{name}"}
    for provider, options in (("cpu", []), ("openvino", ["precision=FP32"])):
        run = trained[f"{provider}-trained"]
        key = f"head/train-{provider}/{Path(a.model).name}/{name}"
        if key not in done:
            if provider != "cpu":
                # the CPU run's flags as recorded (the demo's recipe may have changed since) and the prompt it chose,
                # fixed: the two runs differ in the provider alone (choosing it again costs 5 x dev forwards)
                cpu_key = f"head/train-cpu/{Path(a.model).name}/{name}"
                flags = _fixed_prompt(done.get(cpu_key, {}).get("flags", flags), trained["cpu-trained"])
                flags = _with(flags, "--eval-examples", str(a.train_eval_examples or a.eval_examples))
            seconds = _train_recipe(a.model, run, flags, provider, options)
            test = json.loads((run / "test.json").read_text()) if (run / "test.json").is_file() else None
            _record({"key": key, "run": str(run), "seconds": round(seconds, 1), "flags": flags, "test": test})
    task, max_len = _run_task(trained["cpu-trained"])
    examples = task.load(seed=0, k=recipe["k"]).test[: a.eval_examples]
    tok = load_tokenizer(a.model)
    tag = f"head/eval/{Path(a.model).name}/n{len(examples)}/{name}"
    states = {"base": (None, task, max_len)}
    for state, run in trained.items():
        run_task, run_len = _run_task(run)
        if run_task.prompt != task.prompt:
            print(f"  [{state}] chose another prompt on dev than the CPU run: {run_task.prompt.describe()}")
        states[state] = (run, run_task, run_len)
    targets = [t for t in TARGETS if t[0] != "openvino-default" or "base" in a.default_on.split(",")]
    if f"{tag}/base" not in done:
        t = time.perf_counter()
        reports = _evaluate_head_states(a.model, states, examples, tok, targets)
        seconds = round(time.perf_counter() - t)
        for state, rep in reports.items():
            _record({"key": f"{tag}/{state}", "report": rep.to_dict(), "text": format_report(rep), "seconds": seconds})
        done = _done()
    rows = {state: done[f"{tag}/{state}"] for state in states}
    for row in rows.values():
        print(row["text"])
    _print_gains(f"{tag}: the demo's recipe", rows["base"], {k: rows[k] for k in trained})


def int4_suite(a, done: dict) -> None:
    """``DEMO_INT4`` (ZO-Act on a MatMulNBits export) trained on CPU; base, run and (``--merged``) its merged graphs
    on every target: CPU, OpenVINO at FP32, OpenVINO at its default precision."""
    from runtime.contract import Manifest

    manifest = Manifest.load(a.model)
    if manifest.dtype != "int4":
        raise SystemExit(f"{a.model} is a {manifest.dtype} export; --suite int4 needs `zo-edge export --int4`")
    steps = a.steps or 60
    recipe = {**DEMO_INT4, **{k: v for k, v in (("k", a.k), ("dev_k", a.dev_k)) if v}}
    flags = _recipe_flags(recipe, steps, a.train_eval_examples or a.eval_examples)
    run = Path(a.runs) / "int4" / f"cpu-{steps}"
    key = f"int4/train-cpu/{Path(a.model).name}/{steps}"
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    trains = not only or "cpu-trained" in only or "merged" in only
    if key not in done and trains:
        seconds = _train_recipe(a.model, run, flags, "cpu", [])
        test = json.loads((run / "test.json").read_text()) if (run / "test.json").is_file() else None
        _record({"key": key, "run": str(run), "seconds": round(seconds, 1), "flags": flags, "test": test})
    if trains:
        task, max_len = _run_task(run)
    else:  # the base alone (--only base): the prompt the fp32 demo chose on dev, at its length
        base_task = get_task(recipe["task"])
        chat = next(p for p in base_task.prompt_candidates() if p.name == "chat")
        task, max_len = base_task.with_prompt(chat), 96
    examples = task.load(seed=0, k=recipe["k"]).test[: a.eval_examples]
    tok = load_tokenizer(a.model)
    tag = f"int4/eval/{Path(a.model).name}/n{len(examples)}"
    rows = {}
    for name, state in (("base", None), ("cpu-trained", run)):
        key = f"{tag}/{name}" + ("" if state is None else f"/{steps}")
        if key in done or not only or name in only:
            rows[name] = _eval_stage(done, key, a.model, state, task, examples, tok, max_len, TARGETS)
    merged = {}
    if a.merged and (not only or "merged" in only):
        for dtype, onnx_dir in merged_graphs(a.merged).items():
            key = f"{tag}/merged-{dtype}/{Path(a.merged).name}"
            if key not in done:
                t = time.perf_counter()
                rep = _merged_all(onnx_dir, dtype, TARGETS, task, examples, tok, max_len)
                print(format_report(rep), flush=True)
                text = format_report(rep)
                _record({"key": key, "report": rep.to_dict(), "text": text, "seconds": round(time.perf_counter() - t)})
                done = _done()
            merged[dtype] = done[key]
    for row in [*rows.values(), *merged.values()]:
        print(row["text"])
    if "base" in rows:
        _print_gains(
            f"{tag}: DEMO_INT4, {steps} steps",
            rows["base"],
            {k: v for k, v in {**rows, **{f"merged-{d}": r for d, r in merged.items()}}.items() if k != "base"},
        )


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="exported model folder (exported after the issue-17 fix)")
    ap.add_argument(
        "--suite",
        default="zo-act",
        choices=("zo-act", "head", "int4"),
        help="zo-act: the short ZO-Act recipe (session 3's rows); head: the demo's fp32 recipe trained on CPU and "
        "through OpenVINO; int4: DEMO_INT4 on an INT4 export, with --merged its merged graphs (default: zo-act)",
    )
    ap.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: zo-act 60, head the demo's, int4 60)")
    ap.add_argument("--k", type=int, default=0, help="--suite head/int4: train examples per class (0: the recipe's)")
    ap.add_argument("--dev-k", type=int, default=0, help="--suite head/int4: dev examples per class (0: the recipe's)")
    ap.add_argument(
        "--train-eval-examples",
        type=int,
        default=0,
        help="--suite head/int4: test sentences each `zo-edge train` scores before/after on its own provider (its "
        "test.json; 0: --eval-examples); the benchmark's own scoring on every target uses --eval-examples",
    )
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
    ap.add_argument("--results", default="", help="JSON-lines file the stages append to and resume from")
    a = ap.parse_args()
    RESULTS = Path(a.results) if a.results else RESULTS
    done = {} if a.force else _done()
    if a.suite != "zo-act":
        return (head_suite if a.suite == "head" else int4_suite)(a, done)
    a.steps = a.steps or 60
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
