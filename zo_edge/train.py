"""One training run from a TrainConfig: session, method, data, evaluation, the loop, the plot.

Used by ``zo-edge train`` and ``zo-edge demo``; everything it writes lands in the run folder:
``config.json``, ``metrics.jsonl``, ``ckpt_*/``, ``best/``, ``loss.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from runtime import checkpoint, prefix_cache
from runtime.checkpoint import load_trained_checkpoint
from runtime.contract import FEATURE_CANDIDATE_SCORING, Manifest
from runtime.layers import n_blocks, parse_layers
from runtime.loop import LoopConfig, check_run_meta, load_trained, train
from runtime.method import check_export
from runtime.oracle import Oracle
from zo_edge import optim
from zo_edge.batching import AUTO_BALANCE_RATIO, class_ratio
from zo_edge.config import AUTO, DataFields, TrainConfig
from zo_edge.data import TaskBatches, load_tokenizer
from zo_edge.evaluate import EvalResult, evaluate
from zo_edge.methods import get_method
from zo_edge.metrics import pick_rule
from zo_edge.tasks import TaskData

__all__ = [
    "Prepared",
    "build_method",
    "describe_kept",
    "evaluate_on",
    "load_run",
    "load_task_data",
    "make_oracle",
    "plot_run",
    "prefill_cache",
    "prepare",
    "resolve_prompt",
    "run_training",
    "train_with_progress",
    "zero_shot_baseline",
]


@dataclass
class Prepared:
    cfg: TrainConfig
    oracle: Oracle
    tokenizer: object
    task: object
    data: TaskData
    #: the dev scores of the candidate prompts when ``--template auto`` chose one (zo_edge.prompts), else None
    prompt_scores: list | None = None


def load_task_data(cfg: DataFields):
    """The task (with the config's data file and template/labels overrides) and its train/dev/test split.

    ``cfg`` is a TrainConfig or an EvalConfig: both carry the data fields and ``seed``, ``k``, ``dev_k``."""
    task = cfg.make_task()
    data = task.load(seed=cfg.seed, k=cfg.k or None, dev_k=cfg.dev_k)
    return task, data


def make_oracle(
    model_dir: str,
    provider: str,
    threads: int,
    micro_batch: int = 0,
    provider_options: dict[str, str] | None = None,
    layers: str = "all",
) -> Oracle:
    """``provider_options``: the options of ``provider`` (``--provider-option``), passed to onnxruntime as given;
    ``layers``: the blocks training may touch (``--layers``, ``runtime.layers``; evaluation uses "all"). When they
    start at or above an exported split, the oracle runs the suffix graph behind a frozen-prefix cache
    (runtime/prefix_cache.py): each pass then costs the trained blocks only."""
    blocks = parse_layers(layers, n_blocks(Manifest.load(model_dir)))
    oracle, _ = prefix_cache.make_oracle(
        model_dir,
        blocks=blocks,
        provider=provider,
        provider_options=provider_options or None,
        threads=threads or None,
        micro_batch=micro_batch,
    )
    return oracle


def build_method(cfg: TrainConfig):
    """The method of ``cfg`` from its nested Config and the optimizer section (defaults already resolved)."""
    cls = get_method(cfg.method)
    o = cfg.optim
    # the schedule's clock is each array's own update count: MeZO updates once per query, so its --steps and
    # --warmup span steps x q updates (a cosine over 2000 steps of 32 queries had reached 0 at step 63); Zoop's
    # "cycle" updates a block every n_blocks steps (schedule_steps)
    manifest = Manifest.load(cfg.model)
    total = cls.schedule_steps(cfg.method_config, manifest, cfg.steps)
    warmup = cls.schedule_steps(cfg.method_config, manifest, o.warmup) if o.warmup else 0
    schedule = optim.make_schedule(o.schedule, o.lr, total, warmup)
    opt = optim.make_optimizer(o.optimizer, schedule, momentum=o.momentum, weight_decay=o.weight_decay)
    return cls(cfg.method_config, opt, schedule)


def prepare(cfg: TrainConfig) -> Prepared:
    # the method against the export (its base, its port families) before anything loads or runs a forward
    who = f"{cfg.method} (--recipe {cfg.recipe})" if cfg.recipe else cfg.method
    check_export(get_method(cfg.method), Manifest.load(cfg.model), where=cfg.model, who=who)
    options = cfg.provider_options([cfg.provider])[cfg.provider]
    oracle = make_oracle(cfg.model, cfg.provider, cfg.threads, cfg.micro_batch, options, cfg.layers)
    task, data = load_task_data(cfg)
    tokenizer = load_tokenizer(cfg.model)
    task, scores = resolve_prompt(cfg, oracle, tokenizer, task, data)
    resolve_max_len(cfg, tokenizer, task, data)
    return Prepared(cfg, oracle, tokenizer, task, data, scores)


def resolve_max_len(cfg: DataFields, tokenizer, task, data: TaskData) -> None:
    """``--max-len 0``: set ``cfg.max_len`` from the token lengths of the train + dev prompts at the chosen prompt
    (so config.json records the value used) and say in one line how many prompts that cuts."""
    from zo_edge.batching import choose_max_len, length_report

    if cfg.max_len:
        return
    examples = list(data.train) + list(data.dev)
    cfg.max_len = choose_max_len(tokenizer, task, examples)
    print(length_report(tokenizer, task, examples, cfg.max_len) + " (--max-len 0: auto)", flush=True)


def resolve_prompt(cfg: DataFields, oracle: Oracle, tokenizer, task, data: TaskData, *, training: bool = True):
    """(task, scores): with ``--template auto``, the task asking with the best candidate prompt on the dev split
    (zero-shot, forwards only) and every candidate's dev scores; ``cfg.template``/``cfg.labels`` are set to that
    prompt (and ``cfg.bos`` to its BOS choice), so the run's config.json records the prompt it trained with.
    ``training``: the prompt to train from (best dev AUC); False (``zo-edge eval``, whose state does not change):
    the prompt that answers best as the model is (``zero_shot_best``). Otherwise (task, None)."""
    if cfg.template != AUTO:
        return task, None
    from zo_edge.prompts import chosen, select_prompt, zero_shot_best

    scores = select_prompt(oracle, tokenizer, task, data.dev, max_len=cfg.max_len)
    prompt = (chosen if training else zero_shot_best)(scores).prompt
    cfg.template = prompt.template
    cfg.labels = ",".join(f"{c}={'|'.join(w.strip() for w in ws)}" for c, ws in prompt.verbalizer.items())
    cfg.bos = prompt.bos
    return task.with_prompt(prompt), scores


def evaluate_on(p: Prepared, examples, limit: int, task=None, max_len: int = 0) -> EvalResult:
    subset = examples[:limit] if limit else examples
    return evaluate(
        p.oracle,
        p.tokenizer,
        task or p.task,
        subset,
        max_len=max_len or p.cfg.max_len,
        normalize=p.cfg.length_normalize,
    )


def zero_shot_baseline(p: Prepared, limit: int) -> tuple[EvalResult, str]:
    """(result, prompt): the run's "before" on the test split, from the base model as it is, and its prompt (by
    name where --template auto chose it, else described). With ``--template auto`` the run trains from the dev-AUC
    choice, which need not be the prompt an untrained model answers best with (zo_edge.prompts); where the
    zero-shot rule picked another prompt, both are scored and the better on test is the baseline, so a gain is
    never measured against a prompt chosen for how well it trains (this favours the baseline: it is chosen on
    test). The other prompt runs at the length it was scored at on dev."""
    before = evaluate_on(p, p.data.test, limit)
    if not p.prompt_scores:  # the task's own or the user's prompt: named by what it is
        return before, p.task.prompt.describe()
    from zo_edge.prompts import chosen, zero_shot_best

    z, name = zero_shot_best(p.prompt_scores), chosen(p.prompt_scores).prompt.name
    if z.chosen:
        return before, name
    other = evaluate_on(p, p.data.test, limit, task=p.task.with_prompt(z.prompt), max_len=z.max_len)
    return (other, z.prompt.name) if other.accuracy > before.accuracy else (before, name)


def prefill_cache(p: Prepared, on_chunk=None, chunk: int = 32) -> int:
    """Run every training example through the frozen stack once, before the first step, at the head's split
    (where the cache keeps a scored position only, so a whole file fits): the steps then all cost the head alone,
    and the progress bar's rate and ETA are the steps' own. ``on_chunk(done, total)``. Returns the rows computed."""
    cache = p.oracle.prefix
    if cache is None or not cache.scored_only:
        return 0
    from zo_edge.objectives import encode

    cand = p.oracle.manifest.has(FEATURE_CANDIDATE_SCORING)
    train_set = p.data.train
    before = cache.misses
    for start in range(0, len(train_set), chunk):
        part = train_set[start : start + chunk]
        batch, _ = encode(p.tokenizer, p.task, part, p.cfg.objective, p.cfg.max_len, candidate_scoring=cand)
        cache.hidden(batch)
        if on_chunk:
            on_chunk(start + len(part), len(train_set))
    return cache.misses - before


def run_training(p: Prepared, *, resume: bool = False, on_step=None, on_prefill=None) -> dict:
    cfg = p.cfg
    method = build_method(cfg)
    batches = TaskBatches(
        p.task,
        p.data.train,
        p.tokenizer,
        cfg.batch_size,
        cfg.max_len,
        cfg.seed,
        cfg.objective,
        balance=cfg.balance,
        # classification batches: one row per example where the graph scores candidates itself
        candidate_scoring=p.oracle.manifest.has(FEATURE_CANDIDATE_SCORING),
    )

    prefill_cache(p, on_prefill)

    def dev_eval(oracle: Oracle) -> dict[str, float]:
        return evaluate_on(p, p.data.dev, 0).summary()

    loop_cfg = LoopConfig(
        steps=cfg.steps,
        seed=cfg.seed,
        save_every=cfg.save_every,
        eval_every=cfg.eval_every,
        # imbalanced data: the majority answer already scores high accuracy, so pick the checkpoint on macro-F1
        best_metric="macro_f1" if class_ratio(p.data.dev or p.data.train) >= AUTO_BALANCE_RATIO else "accuracy",
        pick=pick_rule(cfg.pick),
        config=cfg.to_dict(),
    )
    result = train(
        p.oracle,
        method,
        batches,
        loop_cfg,
        cfg.out,
        resume=resume,
        eval_fn=dev_eval if p.data.dev else None,
        on_step=on_step,
        # drawn only for a method with needs_calibration, whose Config then has calib_batches (CONTRIBUTING.md)
        calibration=lambda: batches.calibration(method.config.calib_batches),
    )
    result["truncated"] = batches.stats.get("truncated", 0)
    result["encoded"] = batches.stats.get("examples", 0)
    return result


def train_with_progress(p: Prepared, resume: bool, interrupted: str | None = None) -> dict:
    """``run_training`` with a progress bar (loss, RSS); Ctrl-C leaves a checkpoint and exits 130 with how to
    resume (or with ``interrupted``, the caller's own line). What ``zo-edge train`` and ``zo-edge demo`` run."""
    import psutil
    from tqdm import tqdm

    proc = psutil.Process()
    bars: dict[str, tqdm] = {}

    def on_prefill(done: int, total: int) -> None:
        if "prefix" not in bars:
            bars["prefix"] = tqdm(total=total, desc="frozen stack, once", unit="example", dynamic_ncols=True)
        bars["prefix"].n = done
        bars["prefix"].refresh()

    def on_step(step: int, report) -> None:
        if "steps" not in bars:
            if "prefix" in bars:
                bars["prefix"].close()
            bars["steps"] = tqdm(
                total=p.cfg.steps, initial=step - 1, desc=p.cfg.method, unit="step", dynamic_ncols=True
            )
        bar = bars["steps"]
        bar.n = step
        bar.set_postfix(loss=f"{report.loss:.4f}", rss=f"{proc.memory_info().rss / 2**20:.0f}M", refresh=False)
        bar.refresh()

    try:
        return run_training(p, resume=resume, on_step=on_step, on_prefill=on_prefill)
    except KeyboardInterrupt:
        for bar in bars.values():
            bar.close()
        from runtime.checkpoint import latest_checkpoint

        saved = latest_checkpoint(p.cfg.out) is not None
        default = (
            f"interrupted: checkpoint saved in {p.cfg.out}; continue with --resume"
            if saved
            else "interrupted before the first checkpoint: nothing to resume; run the same command again"
        )
        print("\n" + (interrupted or default))
        raise SystemExit(130) from None
    finally:
        for bar in bars.values():
            bar.close()


def load_run(oracle: Oracle, run: str | Path, which: str = "best") -> dict:
    """Put a run's trained state (its ``best`` checkpoint, or ``latest``) into ``oracle`` for evaluation; returns
    that checkpoint's meta (its ``step``, and for ``best`` the dev metric it was picked on).

    Refused in one line if the run was trained on another base model (its meta's weights hash) or format."""
    arrays, meta, path = load_trained_checkpoint(run, which)
    check_run_meta(meta, oracle, path)
    load_trained(oracle, arrays)
    return meta


def describe_kept(meta: dict, result: dict, pick: str) -> str:
    """Which checkpoint ``best`` is, in words: its step and the dev score it was kept on (and the highest, where the
    rule kept another one)."""
    metric = next((k for k in ("accuracy", "macro_f1") if k in meta), None)
    if metric is None:  # no dev split: best is the last checkpoint
        return f"kept step {meta.get('step')} (no dev split)"
    text = f"kept step {meta['step']} (dev {metric.replace('_', '-')} {meta[metric]:.3f}"
    if pick != "best" and result["best"] > meta[metric]:
        text += f"; highest {result['best']:.3f}, --pick {pick}"
    return text + ")"


def _kept_step(run_dir: Path) -> int | None:
    """The step of the run's ``best`` checkpoint, from its meta alone (the arrays may be the model's size)."""
    try:
        return int(json.loads((run_dir / "best" / checkpoint.META_FILE).read_text("utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_run(run_dir: str | Path, title: str = "") -> Path | None:
    """Training loss (and dev accuracy where evaluated) against step, as ``loss.png`` in the run folder."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    run_dir = Path(run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r["step"] for r in rows if "loss" in r and r.get("loss") == r.get("loss")]
    losses = [r["loss"] for r in rows if "loss" in r and r.get("loss") == r.get("loss")]
    evals = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4.6))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="train loss (per step)")
    if len(losses) >= 10:
        w = max(len(losses) // 20, 5)
        smooth = [sum(losses[max(0, i - w) : i + 1]) / len(losses[max(0, i - w) : i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=2, label=f"train loss (moving mean, {w})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in evals], [a for _, a in evals], "o-", color="C3", label="dev accuracy")
        kept = _kept_step(run_dir)
        at = [a for s, a in evals if s == kept]
        if at:  # the checkpoint eval / merge / the demo use: where --pick put it
            ax2.plot([kept], at[-1:], "*", ms=14, color="C3", mec="k", label=f"kept (step {kept})")
        ax2.set_ylabel("dev accuracy")
    # one legend under the axes: inside, it covered the curves wherever they ran
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax.set_title(title or run_dir.name)  # a run built aside (atomic_folder) passes its final name
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
