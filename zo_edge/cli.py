"""The ``zo-edge`` command: export | train | eval | merge | generate | providers | demo.

    zo-edge demo                                            # export SmolLM2-135M, zero-shot, fine-tune, re-evaluate
    zo-edge export smollm2-135m --out artifacts/smollm2-fp32 [--int4]
    zo-edge train --model artifacts/smollm2-fp32 --task rotten-tomatoes --method zo-act --steps 200 --out runs/rt
    zo-edge eval artifacts/smollm2-fp32 --run runs/rt --task rotten-tomatoes [--providers cpu,openvino]
    zo-edge providers

Every user error is one line on stderr and exit status 2; no traceback from inside onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]

DEFAULT_MODEL = "smollm2-135m"


class UserError(Exception):
    pass


# --- export ------------------------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="convert a Hugging Face causal LM into a ZO-ported ONNX training graph")
    p.add_argument("model", help=f"a Hugging Face folder, a .gguf file, or the alias {DEFAULT_MODEL!r}")
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --force)")
    p.add_argument("--int4", action="store_true", help="quantize the base weights to INT4 (MatMulNBits)")
    p.add_argument("--block-size", type=int, default=32, choices=(32, 64, 128), help="INT4 block size (default 32)")
    p.add_argument("--targets", default="all", help="linear roles to port, e.g. q,v or all (default all)")
    p.add_argument("--basis-rank", type=int, default=1, help="directions of the in-graph activation basis (AGZO r)")
    p.add_argument("--power-iters", type=int, default=3, help="power iterations inside the graph (AGZO K)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export)


def cmd_export(a) -> int:
    from export.config import ExportConfig
    from export.exporter import export_source

    cfg = ExportConfig(
        targets=a.targets, int4=a.int4, block_size=a.block_size, basis_rank=a.basis_rank, power_iters=a.power_iters
    )
    t0 = time.time()
    m = export_source(a.model, a.out, cfg, force=a.force)
    size = sum(f.stat().st_size for f in Path(a.out).iterdir()) / 2**20
    print(
        f"exported {m.source} ({m.architecture}, {m.dtype}) to {a.out}: {len(m.linears)} ported linears, "
        f"{size:.0f} MiB, {time.time() - t0:.0f} s"
    )
    return 0


# --- train -------------------------------------------------------------------------------------------------------
_TRAIN_HELP = {
    "model": "exported model folder (zo-edge export)",
    "task": "rotten-tomatoes | trec | user-data",
    "method": "zo-act | agzo | subzero | lozo | mezo | zoop",
    "steps": "training steps",
    "out": "run folder (checkpoints, metrics.jsonl, loss.png)",
    "lr": "learning rate (default: the method's)",
    "mu": "perturbation scale (default: the method's)",
    "rank": "rank of the low-rank methods / ZO-Act basis",
    "queries": "perturbations averaged per step",
    "optimizer": "sgd | adam (adam only where the state is small)",
    "schedule": "constant | linear | cosine",
    "warmup": "warm-up steps",
    "objective": "lm (LM loss on the label tokens) | classification (CE over candidates)",
    "batch_size": "examples per step",
    "max_len": "max tokens per sequence (prompts are cut from the left)",
    "k": "training examples per class (k-shot); 0 = the whole pool",
    "dev_k": "dev examples per class (best-checkpoint selection)",
    "eval_examples": "held-out test examples scored before/after (0 = all)",
    "eval_every": "dev evaluation every N steps (0 = at the end)",
    "save_every": "checkpoint every N steps",
    "provider": "execution provider: cpu, cuda, openvino, qnn, dml, coreml, cann or a full ORT name",
    "threads": "intra-op threads (0 = all cores)",
    "micro_batch": "rows per onnxruntime pass for loss forwards (0 = whole batch); caps activation memory",
    "data": "your CSV/JSONL file (task user-data)",
    "text_field": "text column(s) the template uses (repeatable)",
    "label_field": "label column",
    "template": "prompt template naming columns, e.g. 'Review: {text} Sentiment:'",
    "labels": "verbalizer, e.g. 'neg=terrible,pos=great'",
    "seed": "run seed (data order, perturbations)",
}


def _add_train_flags(p) -> None:
    from zo_edge.config import TrainConfig

    p.add_argument("--config", help="TOML file whose keys mirror these flags (flags override it)")
    bools = {"normalize", "skip_bad_rows"}
    for f in TrainConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        help_ = _TRAIN_HELP.get(f.name, f.name.replace("_", " "))
        if f.name in bools:
            p.add_argument(flag, action="store_true", default=None, help=help_)
        elif f.name == "text_field":
            p.add_argument(flag, action="append", default=None, help=help_)
        else:
            # annotations are strings here ("float | None"); their first word is the flag's type
            first = str(f.type).split(" ")[0]
            typ = {"int": int, "float": float}.get(first, str)
            p.add_argument(flag, type=typ, default=None, help=help_)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune an exported model with a ZO method (forward passes only)")
    _add_train_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.set_defaults(func=cmd_train)


def _train_config(a):
    from zo_edge.config import TrainConfig

    overrides = {k: getattr(a, k, None) for k in TrainConfig.keys()}
    return TrainConfig.from_sources(a.config, overrides)


def cmd_train(a) -> int:
    from zo_edge.train import plot_run, prepare, train_with_progress

    cfg = _train_config(a)
    if not cfg.model:
        raise UserError("--model is required: an exported model folder (zo-edge export MODEL --out DIR)")
    p = prepare(cfg)
    result = train_with_progress(p, resume=a.resume)
    plot = plot_run(cfg.out)
    print(
        f"run {cfg.out}: {result['step']} steps, best dev accuracy {result['best']:.3f}, "
        f"peak RSS {result['peak_rss_mb']:.0f} MiB" + (f", plot {plot}" if plot else "")
    )
    return 0


# --- eval --------------------------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy, macro-F1 and confusion matrix of a model (and run) on a task")
    p.add_argument("model", help="exported model folder")
    p.add_argument("--run", help="run folder whose trained state to evaluate (zero-shot without)")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"), help="which checkpoint of --run")
    p.add_argument("--task", default="rotten-tomatoes")
    p.add_argument("--split", default="test", choices=("test", "dev"))
    p.add_argument("--eval-examples", type=int, default=500, help="examples scored (0 = all)")
    p.add_argument("--provider", default="cpu")
    p.add_argument("--providers", help="comma list: run the same evaluation on each available provider and compare")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--normalize", action="store_true", help="length-normalised candidate scores")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--micro-batch", type=int, default=0, help="rows per onnxruntime pass (0 = 16 examples' rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(a) -> int:
    from runtime.providers import ProviderError, available_providers
    from zo_edge.config import TrainConfig
    from zo_edge.data import load_tokenizer
    from zo_edge.evaluate import compare_providers, evaluate
    from zo_edge.train import load_run, load_task_data, make_oracle

    cfg = TrainConfig(task=a.task, seed=a.seed, max_len=a.max_len)
    task, data = load_task_data(cfg)
    examples = data.test if a.split == "test" else data.dev
    examples = examples[: a.eval_examples] if a.eval_examples else examples
    tok = load_tokenizer(a.model)
    providers = a.providers.split(",") if a.providers else [a.provider]
    results, missing = {}, []
    for prov in providers:
        try:
            oracle = make_oracle(a.model, prov, a.threads, a.micro_batch)
        except ProviderError:
            if a.providers:
                missing.append(prov)
                continue
            raise
        if a.run:
            load_run(oracle, a.run, a.checkpoint)
        results[prov] = evaluate(oracle, tok, task, examples, max_len=a.max_len, normalize=a.normalize)
    if not results:
        raise UserError(f"none of the providers {providers} is available here (available: {available_providers()})")
    if a.json:
        print(json.dumps({p: r.summary() for p, r in results.items()} | {"missing": missing}))
        return 0
    for prov, r in results.items():
        print(
            f"[{prov}] {task.name} {a.split} n={r.n}: accuracy {r.accuracy:.4f}  macro-F1 {r.macro_f1:.4f}"
            + (f"  ({r.truncated} prompts cut to --max-len {a.max_len})" if r.truncated else "")
        )
        print(f"  confusion (rows gold {task.classes}, cols predicted): {r.confusion}")
    if len(results) > 1:
        print("provider comparison (against the first):")
        for row in compare_providers(results):
            print(
                f"  {row['provider']:<12} accuracy {row['accuracy']:.4f}  agreement {row['agreement']:.4f}  "
                f"max|Δloglik| {row['max_abs_dloglik']:.2e}"
            )
    if missing:
        print(f"not available here (skipped): {', '.join(missing)}")
    return 0


# --- merge / generate ---------------------------------------------------------------------------------------------
def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="fold a run's trained state into a deployable model (HF folder + ONNX + adapter)")
    p.add_argument("run", help="run folder (zo-edge train --out RUN)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    p.add_argument("--no-onnx", action="store_true", help="skip the optimum ONNX (KV-cache) export")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_merge)


def cmd_merge(a) -> int:
    from export.merge import merge_run

    out = merge_run(a.run, a.out, which=a.checkpoint, onnx=not a.no_onnx, force=a.force)
    print(f"merged {a.run} into {out}: " + ", ".join(sorted(x.name for x in out.iterdir())))
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a merged model (greedy or sampling)")
    p.add_argument("model", help="merged folder (zo-edge merge) or its onnx/ subfolder")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--provider", default="cpu")
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from runtime.generate import Generator

    folder = Path(a.model)
    if (folder / "onnx").is_dir():
        folder = folder / "onnx"
    elif (folder / "adapter.json").is_file():
        raise UserError(
            f"{a.model} holds an adapter for an INT4 base only; generation from INT4 + adapter is not built yet"
        )
    g = Generator(folder, a.provider)
    text = g.generate(
        a.prompt, a.max_new_tokens, sample=a.sample, temperature=a.temperature, top_k=a.top_k, seed=a.seed
    )
    print(a.prompt + text)
    return 0


# --- providers ---------------------------------------------------------------------------------------------------
def cmd_providers(a) -> int:
    import onnxruntime as ort

    from runtime.providers import PROVIDER_ALIASES, available_providers

    short = {v: k for k, v in PROVIDER_ALIASES.items()}
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}):")
    for p in available_providers():
        print(f"  {short.get(p, p):<10} {p}")
    return 0


# --- demo --------------------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="export SmolLM2-135M, evaluate zero-shot, fine-tune on Rotten Tomatoes, re-evaluate"
    )
    p.add_argument("--artifacts", default="artifacts", help="where the exported model is cached")
    p.add_argument("--out", default="runs/demo", help="run folder (replaced if it exists)")
    p.add_argument("--steps", type=int, default=None, help="override the demo's step budget")
    p.add_argument("--eval-examples", type=int, default=None, help="override the held-out test size")
    p.add_argument("--int4", action="store_true", help="train on the INT4 export instead of fp32")
    p.set_defaults(func=cmd_demo)


def cmd_demo(a) -> int:
    from zo_edge.demo import run_demo

    return run_demo(a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="zo-edge", description="Forward-only (zeroth-order) fine-tuning on onnxruntime"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_merge(sub)
    _add_generate(sub)
    sub.add_parser("providers", help="list the execution providers this machine has").set_defaults(func=cmd_providers)
    _add_demo(sub)
    a = parser.parse_args(argv)
    # Truncation is counted and reported once per command (train/eval summaries), not warned batch by batch.
    import warnings

    from zo_edge.tasks import TruncationWarning

    warnings.simplefilter("ignore", TruncationWarning)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the user's mistakes; a real bug still shows its traceback
        if _is_user_error(e):
            print(f"zo-edge {a.command}: error: {e}", file=sys.stderr)
            return 2
        raise


def _is_user_error(e: Exception) -> bool:
    from runtime.batch import BatchError
    from runtime.contract import ManifestError
    from runtime.loop import TrainingStopped
    from runtime.providers import ProviderError

    user = (UserError, ManifestError, ProviderError, BatchError, TrainingStopped, ValueError, FileNotFoundError)
    try:
        from export.exporter import ExportError
        from export.merge import MergeError
        from export.source import SourceError

        user += (ExportError, SourceError, MergeError)
    except ImportError:  # device-only install without the export extra
        pass
    return isinstance(e, user)


if __name__ == "__main__":
    raise SystemExit(main())
