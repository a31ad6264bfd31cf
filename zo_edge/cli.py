"""The ``zo-edge`` command: export | train | eval | prompts | merge | generate | providers | demo.

    zo-edge demo                                            # export SmolLM2-135M, zero-shot, fine-tune, re-evaluate
    zo-edge export smollm2-135m --out artifacts/smollm2-fp32 [--int4]
    zo-edge train --model artifacts/smollm2-fp32 --task rotten-tomatoes --method zo-act --steps 200 --out runs/rt
    zo-edge train --model artifacts/smollm2-fp32 --data my.csv --labels 'neg=terrible,pos=great' --out runs/mine
    zo-edge eval --run runs/rt                              # the run names its model, task and data
    zo-edge eval artifacts/smollm2-fp32 --task trec --providers cpu,openvino
    zo-edge prompts artifacts/smollm2-fp32 --task rotten-tomatoes   # candidate prompts on dev; train: --template auto
    zo-edge providers

The flags of ``train``, ``eval`` and ``demo`` and their help text come from the config dataclasses
(``zo_edge.config``) and from every registered method's ``Config``: a new method's knobs appear here with no edit.
A user error (any ``runtime.errors.ZoEdgeError``) is one line on stderr and exit status 2; any other exception is a
bug in zo-edge and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from runtime.errors import ZoEdgeError
from zo_edge.config import ConfigError, FieldSpec, field_specs

__all__ = ["main"]

DEFAULT_MODEL = "smollm2-135m"


# --- flags from dataclass fields ---------------------------------------------------------------------------------
def _show(value: Any) -> str:
    if value in ("", [], None):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _listing(spec: FieldSpec) -> str:
    """The choices a field's help names, from the registries (never a written-out list)."""
    which = spec.meta.get("choices")
    if which == "methods":
        from zo_edge.config import registered_methods

        return "; one of: " + ", ".join(sorted(registered_methods()))
    if which == "tasks":
        from zo_edge.tasks import list_tasks

        return "; one of: " + ", ".join(list_tasks())
    return ""


def _default_text(spec: FieldSpec) -> str:
    attr = spec.meta.get("method_default")
    if attr:  # a per-method ClassVar (default_lr, default_optimizer), read for every registered method
        from zo_edge.config import registered_methods

        return "the method's: " + ", ".join(f"{n} {_show(getattr(c, attr))}" for n, c in registered_methods().items())
    if "default:" in spec.help:  # the help already says it (e.g. "default: the task's own")
        return ""
    return _show(spec.default)


def _help(text: str, default: str) -> str:
    text = text + (f" (default: {default})" if default else "")
    return text.replace("%", "%%")  # argparse %-formats help strings


def _add_flag(p: argparse.ArgumentParser, spec: FieldSpec, help_text: str) -> None:
    kw: dict[str, Any] = dict(dest=spec.name, default=None, help=help_text)
    if spec.kind is bool:
        p.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kw)
    elif spec.kind is list:
        p.add_argument(spec.flag, action="append", metavar=spec.name.upper(), **kw)
    else:
        typ = spec.kind if spec.kind in (int, float) else str
        p.add_argument(spec.flag, type=typ, metavar=spec.name.upper(), **kw)


def _add_fields(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """One flag per field of the config dataclass ``cls``; returns their names (the keys ``_given`` collects)."""
    names = []
    own = list(cls.__annotations__)  # the class's own fields first, then the shared sections it inherits
    specs = field_specs(cls, skip=skip + ("method_config",))
    for spec in sorted(specs, key=lambda s: own.index(s.name) if s.name in own else len(own)):
        _add_flag(p, spec, _help(spec.help + _listing(spec), _default_text(spec)))
        names.append(spec.name)
    return names


def _add_method_knobs(p: argparse.ArgumentParser, taken: set[str]) -> list[str]:
    """The union of every registered method's Config fields, each flag's help naming the methods that have it."""
    from zo_edge.config import method_knobs

    group = p.add_argument_group("method settings (each applies to the methods its help names)")
    names = []
    for name, owners in method_knobs().items():
        assert name not in taken, f"method knob {name!r} ({owners[0][0]}) collides with a train flag: rename it"
        kinds = {s.kind for _, s in owners}
        assert len(kinds) == 1, f"methods {[m for m, _ in owners]} declare {name!r} with different types: rename one"
        helps = [s.help for _, s in owners]
        spec = next(s for _, s in owners if s.help == max(helps, key=helps.count))  # the most common wording
        defaults = ", ".join(f"{m} {_show(s.default)}" for m, s in owners)
        _add_flag(group, spec, _help(spec.help, defaults))
        names.append(name)
    return names


def _given(a: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {k: getattr(a, k) for k in names}


# --- export ------------------------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="convert a Hugging Face causal LM into a ZO-ported ONNX training graph")
    p.add_argument("model", help=f"a Hugging Face folder, a .gguf file, or the alias {DEFAULT_MODEL!r}")
    p.add_argument("--out", required=True, help="output folder (required; refused if non-empty, unless --force)")
    p.add_argument("--int4", action="store_true", help="quantize the base weights to INT4, MatMulNBits (default: off)")
    p.add_argument("--block-size", type=int, default=32, choices=(32, 64, 128), help="INT4 block size (default: 32)")
    p.add_argument("--targets", default="all", help="linear roles to port, e.g. q,v or all (default: all)")
    p.add_argument(
        "--basis-rank", type=int, default=1, help="directions of the in-graph activation basis, AGZO's r (default: 1)"
    )
    p.add_argument("--power-iters", type=int, default=3, help="in-graph power iterations, AGZO's K (default: 3)")
    p.add_argument(
        "--splits",
        default="auto",
        help="block boundaries with prefix/suffix graphs for --layers training: auto (the top quarter's and the "
        "head's, Llama family, fp32 or INT4), none, or a list like 20,24,30 (default: auto)",
    )
    p.add_argument(
        "--attention",
        default="eager",
        choices=("eager", "fused"),
        help="eager (runs on every provider) or fused: onnxruntime's GroupQueryAttention, Llama family, CPU/CUDA "
        "onnxruntime only (default: eager)",
    )
    p.add_argument(
        "--int4-embedding", action="store_true", help="INT4: quantize the embedding and LM head too (default: off)"
    )
    p.add_argument(
        "--accuracy-level", type=int, default=0, help="INT4: MatMulNBits accuracy_level, 4 = int8 compute (default: 0)"
    )
    p.add_argument("--ports", default="all", help=_ports_help())
    p.add_argument("--force", action="store_true", help="replace an existing output folder (default: off)")
    p.set_defaults(func=cmd_export)


def _ports_help() -> str:
    """``--ports``' help: each port family with the methods that need it, from the registry's ``ports``."""
    from runtime import contract
    from zo_edge.config import registered_methods

    what = {
        contract.PORTS_LOWRANK: "the P/Q low-rank ports",
        contract.PORTS_NOISE: "the output-noise ports",
        contract.PORTS_PROBE: "the activation probes",
    }
    methods = registered_methods()
    families = "; ".join(
        f"{f} ({what[f]}: {', '.join(sorted(n for n, c in methods.items() if f in c.ports)) or 'no method'})"
        for f in contract.PORT_FAMILIES
    )
    bare = ", ".join(sorted(n for n, c in methods.items() if not c.ports))
    return (
        f"port families in the graphs: all, none or a comma list of {families}. A family left out costs nothing "
        f"per forward, and the methods that need it are refused; {bare} and --recipe head need none "
        "(default: all)"
    )


def cmd_export(a) -> int:
    from export.config import ExportConfig
    from export.exporter import export_source
    from runtime.contract import PORT_FAMILIES

    cfg = ExportConfig(
        targets=a.targets,
        int4=a.int4,
        block_size=a.block_size,
        basis_rank=a.basis_rank,
        power_iters=a.power_iters,
        splits=a.splits,
        attention=a.attention,
        int4_embedding=a.int4_embedding,
        accuracy_level=a.accuracy_level,
        ports=a.ports,
    )
    t0 = time.time()
    m = export_source(a.model, a.out, cfg, force=a.force)
    size = sum(f.stat().st_size for f in Path(a.out).iterdir()) / 2**20
    print(
        f"exported {m.source} ({m.architecture}, {m.dtype}) to {a.out}: {len(m.linears)} ported linears, "
        f"{size:.0f} MiB, {time.time() - t0:.0f} s"
        + (f"; split graphs at blocks {m.splits}" if m.splits else "")
        + ("" if m.ports == list(PORT_FAMILIES) else f"; ports: {','.join(m.ports) or 'none'}")
    )
    return 0


# --- train -------------------------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    from zo_edge.config import OptimConfig, TrainConfig

    p = sub.add_parser("train", help="fine-tune an exported model with a ZO method (forward passes only)")
    p.add_argument(
        "--config", help="TOML file: keys mirror these flags, plus [method] and [optim] tables (default: none)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint (default: off)"
    )
    names = _add_fields(p, TrainConfig, skip=("optim",))
    names += _add_fields(p.add_argument_group("optimizer ([optim] in TOML)"), OptimConfig)
    names += _add_method_knobs(p, set(names))
    p.set_defaults(func=cmd_train, _names=names)


def cmd_train(a) -> int:
    from runtime.atomic import atomic_write_json
    from zo_edge.config import TrainConfig
    from zo_edge.recipes import AUTO_RECIPE
    from zo_edge.train import (
        describe_kept,
        evaluate_on,
        load_run,
        plot_run,
        prepare,
        train_with_progress,
        zero_shot_baseline,
    )

    # `zo-edge train --model M --task T` alone trains with the measured best recipe the export can run
    cfg = TrainConfig.from_sources(a.config, _given(a, a._names), default_recipe=AUTO_RECIPE)
    if not cfg.model:
        raise ConfigError("--model is required: an exported model folder (zo-edge export MODEL --out DIR)")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: choose another --out")
    if out.is_dir() and not (out / "config.json").is_file() and any(out.iterdir()):
        raise ConfigError(f"--out {out} holds files that are not a zo-edge run: choose a new or empty folder")
    if cfg.recipe:  # say what the run will do: a user who gave two flags should not have to read config.json
        q = getattr(cfg.method_config, "queries", 1)
        print(
            f"recipe {cfg.recipe}: {cfg.method} + {cfg.optim.optimizer} (lr {cfg.optim.lr:g}) on --layers "
            f"{cfg.layers}, {q} queries x {cfg.steps} steps, batch {cfg.batch_size}, "
            + (f"k {cfg.k} per class, " if cfg.k else "the whole training pool, ")
            + f"{cfg.objective} objective (flags override it; --recipe none: a method's own defaults)",
            flush=True,
        )
    p = prepare(cfg)
    if p.prompt_scores:
        from zo_edge.prompts import format_prompt_table

        print(
            format_prompt_table(p.prompt_scores)
            + f"\nprompt (--template auto, best dev AUC): {p.task.prompt.describe()}"
        )
    n = cfg.eval_examples
    # the base model, before any checkpoint is loaded (also on --resume)
    before, before_prompt = zero_shot_baseline(p, n)
    result = train_with_progress(p, resume=a.resume)
    kept = load_run(p.oracle, cfg.out, "best")
    after = evaluate_on(p, p.data.test, n)
    atomic_write_json(
        Path(cfg.out) / "test.json",
        {"before": {**before.summary(), "prompt": before_prompt}, "after": after.summary()},
    )
    plot = plot_run(cfg.out)
    print(
        f"run {cfg.out}: {result['step']} steps, {describe_kept(kept, result, cfg.pick)}, peak RSS "
        f"{result['peak_rss_mb']:.0f} MiB" + (f", plot {plot}" if plot else "")
    )
    print(
        f"held-out test (n={before.n}): accuracy {before.accuracy:.3f} -> {after.accuracy:.3f}, "
        f"macro-F1 {before.macro_f1:.3f} -> {after.macro_f1:.3f} (before: zero-shot with prompt {before_prompt}; "
        f"after: best checkpoint; {cfg.out}/test.json)"
    )
    return 0


# --- federate (zo_edge/federated/) ---------------------------------------------------------------------------------
def _add_federate(sub) -> None:
    from zo_edge.config import OptimConfig, TrainConfig
    from zo_edge.federated.node import FederatedConfig

    p = sub.add_parser(
        "federate", help="simulate federated ZO fine-tuning on Flower: clients exchange seeds and scalars only"
    )
    p.add_argument(
        "--config", help="TOML file of `zo-edge train` keys (a step is a round; MeZO's: one per query) (default: none)"
    )
    names = _add_fields(p, TrainConfig, skip=("optim",))
    names += _add_fields(p.add_argument_group("optimizer ([optim] in TOML)"), OptimConfig)
    fed = _add_fields(p.add_argument_group("federation"), FederatedConfig)
    names += _add_method_knobs(p, set(names) | set(fed))
    p.set_defaults(func=cmd_federate, _names=names, _fed=fed)


def cmd_federate(a) -> int:
    from zo_edge.config import TrainConfig
    from zo_edge.federated.node import FederatedConfig

    cfg = TrainConfig.from_sources(a.config, _given(a, a._names))
    fed = FederatedConfig(**{k: v for k, v in _given(a, a._fed).items() if v is not None})
    if not cfg.model:
        raise ConfigError("--model is required: an exported model folder (zo-edge export MODEL --out DIR)")
    try:
        from zo_edge.federated.flower import simulate
    except ImportError as e:
        raise ConfigError(
            f"zo-edge federate needs Flower ({e.name} is missing): pip install 'zo-edge[federated]'"
        ) from None

    def show(log) -> None:
        ev = f", test accuracy {log.eval['accuracy']:.3f}" if log.eval else ""
        print(
            f"round {log.round + 1} (step {log.step + 1}/{cfg.steps}): {log.answered}/{log.sampled} answered, "
            f"loss {log.loss:.4f}, "
            f"{log.bytes_down} B down / {log.bytes_up} B up"
            + (f", rejected {log.rejected}" if log.rejected else "")
            + ev,
            flush=True,
        )

    server = simulate(cfg, fed, on_round=show)
    sent = sum(r.sampled for r in server.rounds) or 1
    down = sum(r.bytes_down for r in server.rounds) / sent
    up = sum(r.bytes_up for r in server.rounds) / sent
    cal = server.calibration_bytes
    print(
        f"federation {cfg.out}: {len(server.rounds)} rounds x {fed.clients} clients, per client per round "
        f"{down:.0f} B down / {up:.0f} B up"
        + (f"; zo-act basis once: {cal['down']} B down / {cal['up']} B up in all" if cal["up"] else "")
        + f"; run folder {cfg.out} (federated.json, checkpoint for zo-edge eval --run)"
    )
    return 0


# --- eval --------------------------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    from zo_edge.config import EvalConfig

    p = sub.add_parser("eval", help="accuracy, macro-F1 and confusion matrix of a model (and run) on a task")
    model = next(s for s in field_specs(EvalConfig) if s.name == "model")
    p.add_argument("model", nargs="?", default=None, help=_help(model.help, ""))
    names = ["model", *_add_fields(p, EvalConfig, skip=("model",))]
    p.set_defaults(func=cmd_eval, _names=names)


def cmd_eval(a) -> int:
    from runtime.batch import Batch
    from runtime.providers import ProviderError, available_providers
    from zo_edge.config import AUTO, EvalConfig
    from zo_edge.data import load_tokenizer
    from zo_edge.evaluate import evaluate
    from zo_edge.prompts import format_prompt_table
    from zo_edge.train import load_run, load_task_data, make_oracle, resolve_max_len, resolve_prompt

    cfg = EvalConfig.from_flags(_given(a, a._names))
    task, data = load_task_data(cfg)
    auto = cfg.template == AUTO
    examples = data.test if cfg.split == "test" else data.dev
    examples = examples[: cfg.eval_examples] if cfg.eval_examples else examples
    tok = load_tokenizer(cfg.model)
    providers = cfg.provider_list()
    options = cfg.provider_options(providers)
    if cfg.merged:
        return _eval_merged(cfg, task, data, examples, tok, providers, options)
    results, oracles, missing = {}, {}, []
    for prov in providers:
        try:
            oracle = make_oracle(cfg.model, prov, cfg.threads, cfg.micro_batch, options[prov])
        except ProviderError:
            if cfg.providers:
                missing.append(prov)
                continue
            raise
        if cfg.run:
            load_run(oracle, cfg.run, cfg.checkpoint)
        if auto:  # chosen once, on the first provider, with the state being evaluated; the rest reuse it
            task, scores = resolve_prompt(cfg, oracle, tok, task, data, training=False)
            auto = False
            if not cfg.json:
                print(
                    format_prompt_table(scores)
                    + f"\nprompt (--template auto, best zero-shot on dev: z): {task.prompt.describe()}"
                )
        # --json prints the JSON document alone on stdout: the sizing line goes to stderr then
        with contextlib.redirect_stdout(sys.stderr if cfg.json else sys.stdout):
            resolve_max_len(cfg, tok, task, data)
        results[prov] = evaluate(oracle, tok, task, examples, max_len=cfg.max_len, normalize=cfg.length_normalize)
        oracles[prov] = oracle
    if not results:
        raise ConfigError(f"none of the providers {providers} is available here (available: {available_providers()})")
    if cfg.json:
        print(json.dumps({p: r.summary() for p, r in results.items()} | {"missing": missing}))
        return 0
    for prov, r in results.items():
        print(
            f"[{prov}] {task.name} {cfg.split} n={r.n}: accuracy {r.accuracy:.4f}  macro-F1 {r.macro_f1:.4f}"
            + (f"  ({r.truncated} prompts cut to --max-len {cfg.max_len})" if r.truncated else "")
        )
        print(f"  confusion (rows gold {task.classes}, cols predicted): {r.confusion}")
    if len(results) > 1:
        from zo_edge.batching import lm_batch
        from zo_edge.cross_provider import compare, format_report, layer_divergence

        probe = Batch.from_dict(lm_batch(tok, examples[:4], task, cfg.max_len))  # where along the depth drift starts
        report = compare(
            results,
            precisions={p: o.session.precision for p, o in oracles.items()},
            options={p: options[p] for p in results},
            layers=layer_divergence(oracles, probe),
            label=cfg.run or "base",
        )
        print(format_report(report))
    if missing:
        print(f"not available here (skipped): {', '.join(missing)}")
    return 0


def _eval_merged(cfg, task, data, examples, tok, providers, options) -> int:
    """``eval --merged DIR``: the cross-provider report of each deployable graph ``zo-edge merge`` wrote."""
    from runtime.providers import available_providers, full_name
    from zo_edge.config import AUTO
    from zo_edge.cross_provider import format_report, merged_graphs, merged_report
    from zo_edge.train import resolve_max_len

    if cfg.template == AUTO:
        raise ConfigError("--template auto scores prompts with the training graph; with --merged pass the template")
    graphs = merged_graphs(cfg.merged)
    have = [p for p in providers if full_name(p) in available_providers()]
    if not have:
        raise ConfigError(f"none of the providers {providers} is available here (available: {available_providers()})")
    resolve_max_len(cfg, tok, task, data)
    reports = {
        d: merged_report(g, have, task, examples, tok, provider_options=options, max_len=cfg.max_len)
        for d, g in graphs.items()
    }
    if cfg.json:
        print(json.dumps({d: r.to_dict() for d, r in reports.items()}))
        return 0
    print("\n".join(format_report(r) for r in reports.values()))
    if len(have) < len(providers):
        print(f"not available here (skipped): {', '.join(p for p in providers if p not in have)}")
    return 0


# --- prompts -----------------------------------------------------------------------------------------------------
def _add_prompts(sub) -> None:
    from zo_edge.config import ScoringConfig

    p = sub.add_parser("prompts", help="score a task's candidate prompts on its dev split (zero-shot, forwards only)")
    model = next(s for s in field_specs(ScoringConfig) if s.name == "model")
    p.add_argument("model", nargs="?", default=None, help=_help(model.help, ""))
    p.set_defaults(func=cmd_prompts, _names=["model", *_add_fields(p, ScoringConfig, skip=("model",))])


def cmd_prompts(a) -> int:
    from zo_edge.config import ScoringConfig
    from zo_edge.data import load_tokenizer
    from zo_edge.prompts import chosen, format_prompt_table, select_prompt, zero_shot_best
    from zo_edge.train import load_run, load_task_data, make_oracle

    cfg = ScoringConfig.from_flags(_given(a, a._names))
    task, data = load_task_data(cfg)
    oracle = make_oracle(
        cfg.model, cfg.provider, cfg.threads, cfg.micro_batch, cfg.provider_options([cfg.provider])[cfg.provider]
    )
    if cfg.run:
        load_run(oracle, cfg.run, cfg.checkpoint)
    scores = select_prompt(oracle, load_tokenizer(cfg.model), task, data.dev, max_len=cfg.max_len)
    if cfg.json:
        print(json.dumps([s.summary() for s in scores]))
        return 0
    print(format_prompt_table(scores))
    print(
        f"train from (*): {chosen(scores).prompt.name}, the best dev AUC (--template auto picks it); "
        f"answer untrained with (z): {zero_shot_best(scores).prompt.name}, the best zero-shot on dev"
    )
    return 0


# --- merge / generate ---------------------------------------------------------------------------------------------
def _add_merge(sub) -> None:
    from export.formats import registered_formats

    formats = registered_formats()
    listing = "; ".join(f"{n}: {f.help}" for n, f in formats.items())
    default = ",".join(n for n, f in formats.items() if f.default)
    p = sub.add_parser("merge", help="write a run's trained state as deployable files (--format: HF, ONNX, PEFT, ...)")
    p.add_argument("run", help="run folder (the --out of zo-edge train)")
    p.add_argument("--out", required=True, help="output folder (required; refused if it exists, unless --force)")
    p.add_argument(
        "--format",
        action="append",
        metavar="NAME[,NAME]",
        help=f"what to write, a comma list or repeated ({listing}) (default: {default})",
    )
    p.add_argument(
        "--checkpoint", default="best", choices=("best", "latest"), help="which checkpoint of RUN (default: best)"
    )
    p.add_argument(
        "--no-onnx",
        action="store_true",
        help="without --format: skip the optimum ONNX (KV-cache) export (default: off, it is written)",
    )
    p.add_argument(
        "--gguf-metadata",
        metavar="FILE.gguf",
        help="GGUF file whose tokenizer and general metadata the gguf format's files copy (default: the export's "
        "source, when it was a .gguf)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder (default: off)")
    p.set_defaults(func=cmd_merge)


def cmd_merge(a) -> int:
    from export.merge import merge_run

    notes: list[str] = []
    out = merge_run(
        a.run,
        a.out,
        which=a.checkpoint,
        formats=a.format,
        onnx=not a.no_onnx,
        force=a.force,
        gguf_metadata=a.gguf_metadata,
        notes=notes,
    )
    print(f"merged {a.run} into {out}: " + ", ".join(sorted(x.name for x in out.iterdir())))
    for note in notes:
        print(f"  note: {note}")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a merged model (greedy or sampling)")
    p.add_argument("model", help="merged folder (zo-edge merge, with its onnx/) or that onnx/ subfolder")
    p.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the model's chat template as a user turn and print the reply (default: on when "
        "the model's tokenizer has a chat template, as instruct models do)",
    )
    p.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate at most (default: 30)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (default: off, greedy)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, with --sample (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, with --sample (default: 0)")
    p.add_argument("--provider", default="cpu", help="execution provider, as for train (default: cpu)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(a) -> int:
    from runtime.generate import Generator

    folder = Path(a.model)
    if (folder / "onnx").is_dir():
        folder = folder / "onnx"
    elif not (folder / "model.onnx").is_file() and (folder / "adapter.json").is_file():
        raise ConfigError(
            f"{a.model} has no onnx/ folder: merge the run again with the default formats or --format onnx"
        )
    if a.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {a.max_new_tokens}")
    g = Generator(folder, a.provider)
    chat = g.chat_template is not None if a.chat is None else a.chat
    text = g.generate(
        a.prompt,
        a.max_new_tokens,
        sample=a.sample,
        temperature=a.temperature,
        top_k=a.top_k,
        seed=a.seed,
        chat=chat,
        stop_at_eos=True,
    )
    print(text if chat else a.prompt + text)
    return 0


# --- providers ---------------------------------------------------------------------------------------------------
#: listed by every onnxruntime build, but it forwards requests to an Azure endpoint: it cannot run a local graph
_NOT_LOCAL = ("AzureExecutionProvider",)


def cmd_providers(a) -> int:
    import onnxruntime as ort

    from runtime.providers import PROVIDER_ALIASES, available_providers

    short = {v: k for k, v in PROVIDER_ALIASES.items()}
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}):")
    for p in available_providers():
        if p not in _NOT_LOCAL:
            print(f"  {short.get(p, '-'):<10} {p}")
    return 0


# --- demo --------------------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    from zo_edge.config import DemoConfig

    p = sub.add_parser(
        "demo", help="export SmolLM2-135M, evaluate zero-shot, fine-tune on Rotten Tomatoes, re-evaluate"
    )
    p.set_defaults(func=cmd_demo, _names=_add_fields(p, DemoConfig))


def cmd_demo(a) -> int:
    from zo_edge.config import DemoConfig
    from zo_edge.demo import run_demo

    return run_demo(DemoConfig(**{k: v for k, v in _given(a, a._names).items() if v is not None}))


# --- main --------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zo-edge", description="Forward-only (zeroth-order) fine-tuning on onnxruntime"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_train(sub)
    _add_federate(sub)
    _add_eval(sub)
    _add_prompts(sub)
    _add_merge(sub)
    _add_generate(sub)
    sub.add_parser("providers", help="list the execution providers this machine has").set_defaults(func=cmd_providers)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # Truncation is counted and reported once per command (train/eval summaries), not warned batch by batch.
    import warnings

    from zo_edge.batching import TruncationWarning

    warnings.simplefilter("ignore", TruncationWarning)
    try:
        return a.func(a)
    except KeyboardInterrupt:
        return 130
    except ZoEdgeError as e:  # the user's mistake: one line. Anything else is a bug and keeps its traceback.
        print(f"zo-edge {a.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
