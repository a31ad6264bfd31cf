"""The training loop: steps, non-finite guard, periodic evaluation, atomic checkpoints, exact resume, Ctrl-C.

Everything needed to resume lives in the checkpoint: the weights the method changed (or its adapters), the method's
state (bases, coefficients, optimizer moments), the data iterator's position and the step. Randomness is
regenerated from (seed, step, layer), so a resumed run is bit-identical to an uninterrupted one
(tests/methods/test_common.py checks it, including a kill during a save).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from runtime import checkpoint
from runtime.batch import Batch
from runtime.method import StepReport, ZOMethod
from runtime.oracle import Objective, Oracle

__all__ = ["BatchSource", "LoopConfig", "TrainingStopped", "load_trained", "peak_rss_mb", "train"]


class TrainingStopped(RuntimeError):
    pass


class BatchSource(Protocol):
    def next(self) -> tuple[Batch, Objective]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class LoopConfig:
    steps: int
    seed: int = 0
    save_every: int = 50
    eval_every: int = 0  # 0 = only at the end
    keep: int = 2
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row
    #: metric of eval_fn's result that selects the `best` checkpoint (higher is better); None = no best
    best_metric: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved user config, copied into every checkpoint


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss, which the kernel tracks exactly)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _arrays(oracle: Oracle, method: ZOMethod, weights_changed: bool) -> dict[str, np.ndarray]:
    arrays = {f"method/{k}": v for k, v in method.state_dict().items()}
    arrays.update(oracle.adapter_arrays())
    if weights_changed:
        arrays.update({f"param/{k}": v for k, v in oracle.params.items()})
    return arrays


def load_trained(oracle: Oracle, arrays: dict[str, np.ndarray]) -> None:
    """Put a checkpoint's trained weights (folded params and/or adapters) into ``oracle``: enough to evaluate."""
    for k, v in arrays.items():
        if k.startswith("param/"):
            oracle.params[k.removeprefix("param/")][...] = v  # in place: the bound buffers stay bound
    oracle.load_adapter_arrays({k: v for k, v in arrays.items() if k.startswith("adapter.")})


def _restore(oracle: Oracle, method: ZOMethod, arrays: dict[str, np.ndarray]) -> None:
    load_trained(oracle, arrays)
    method.load_state_dict({k.removeprefix("method/"): v for k, v in arrays.items() if k.startswith("method/")})
    if hasattr(method, "link"):
        method.link(oracle)


def train(
    oracle: Oracle,
    method: ZOMethod,
    data: BatchSource,
    cfg: LoopConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    eval_fn: Callable[[Oracle], dict[str, float]] | None = None,
    on_step: Callable[[int, StepReport], None] | None = None,
    calibration: Callable[[], list[Batch]] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.steps`` steps into ``run_dir`` (resuming from its latest checkpoint when ``resume``)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    method.init(oracle, cfg.seed)
    # Methods that write into the bound weights (in place) must checkpoint them, at every save, the step-0 `best`
    # included: evaluating `best` later in the same process must put the base weights back.
    weights_changed = getattr(method, "changes_weights", True) and bool(oracle.params)
    start = 0
    best = -np.inf
    latest = checkpoint.latest_checkpoint(run_dir) if resume else None
    if resume and latest is None:
        raise TrainingStopped(f"--resume: {run_dir} has no complete checkpoint; drop --resume to start afresh")
    if latest is not None:
        arrays, meta = checkpoint.load_checkpoint(latest)
        if meta.get("method") != method.name:
            raise TrainingStopped(
                f"{run_dir} holds a {meta.get('method')} run, not {method.name}: resume it with --method "
                f"{meta.get('method')} or choose another --out"
            )
        _restore(oracle, method, arrays)
        data.load_state_dict(meta["data"])
        start = int(meta["step"])
        best = float(meta.get("best", -np.inf))
        _truncate_metrics(metrics_path, start)
    else:
        if not resume and checkpoint.latest_checkpoint(run_dir) is not None:
            raise TrainingStopped(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        metrics_path.unlink(missing_ok=True)
        if getattr(method, "needs_calibration", False):
            t0 = time.perf_counter()
            method.calibrate(oracle, calibration() if calibration else [])
            _log(metrics_path, {"step": 0, "calibration_s": round(time.perf_counter() - t0, 3)})
    checkpoint.atomic_write_json(run_dir / "config.json", cfg.config)
    if eval_fn and start == 0:
        # the starting point is a candidate too: if training never beats it on dev, `best` is the base model
        best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, 0, best, weights_changed)

    def save(step: int) -> None:
        meta = {"data": data.state_dict(), "config": cfg.config, "best": best, "method": method.name}
        checkpoint.save_checkpoint(run_dir, step, _arrays(oracle, method, weights_changed), meta, keep=cfg.keep)

    bad = 0
    step = start
    proc = psutil.Process(os.getpid())
    try:
        while step < cfg.steps:
            batch, objective = data.next()
            report = method.step(oracle, batch, objective, step)
            step += 1
            bad = bad + 1 if report.skipped else 0
            row = {"step": step, **{k: v for k, v in asdict(report).items() if k != "extra"}, **report.extra}
            row["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
            _log(metrics_path, row)
            if on_step:
                on_step(step, report)
            if bad >= cfg.max_bad_steps:
                save(step)
                raise TrainingStopped(
                    f"{bad} steps in a row had a non-finite loss (weights untouched by them); lower the learning "
                    f"rate or mu, then --resume"
                )
            if eval_fn and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, weights_changed)
            if step % cfg.save_every == 0 and step < cfg.steps:
                save(step)
    except KeyboardInterrupt:
        save(step)
        raise
    if eval_fn:
        best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, weights_changed)
    save(step)
    return {"step": step, "best": best, "peak_rss_mb": peak_rss_mb()}


def _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, weights_changed) -> float:
    result = eval_fn(oracle)
    _log(metrics_path, {"step": step, **{f"eval_{k}": v for k, v in result.items()}})
    if cfg.best_metric and result.get(cfg.best_metric, -np.inf) > best:
        best = float(result[cfg.best_metric])
        meta = {"step": step, "config": cfg.config, cfg.best_metric: best, "method": method.name}
        checkpoint.save_named(run_dir, "best", _arrays(oracle, method, weights_changed), meta)
    return best


def _log(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=float) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the resumed checkpoint, so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    checkpoint.atomic_write_text(path, "".join(r + "\n" for r in rows))
