"""The training loop: steps, non-finite guard, periodic evaluation, atomic checkpoints, exact resume, Ctrl-C.

Everything needed to resume lives in the checkpoint: the trained state (the weights the method changed, or its
adapters: runtime.trained_state), the method's state (bases, optimizer moments, counters), the data iterator's
position and the step. Randomness is regenerated from (seed, step, layer), so a resumed run is bit-identical to an
uninterrupted one (tests/methods/test_common.py checks it, including a kill during a save).

Two guarantees beyond that:

* **No non-finite value is ever saved.** Before every save the trained state and the method state are checked; a
  run whose state went non-finite stops with a message and leaves the previous checkpoint as the latest.
* **Ctrl-C is exact.** SIGINT is deferred while a step is in flight (a full-space method may be holding θ ± μz at
  that moment, and the step's batch is already drawn); the step finishes, is logged and saved, and then the run
  stops. A second Ctrl-C stops at once without saving (the previous checkpoint stays whole).

Each checkpoint's meta records the checkpoint format version and the base's ``weights_sha256``; resume refuses a
run folder made on another base or by an incompatible writer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from runtime import checkpoint, contract
from runtime.atomic import WRITE_ERRNOS, WriteError, atomic_write_json, atomic_write_text
from runtime.batch import Batch
from runtime.errors import ZoEdgeError
from runtime.method import StepReport, ZOMethod, written_params
from runtime.oracle import Objective, Oracle
from runtime.trained_state import NonFiniteState

__all__ = [
    "BatchSource", "LoopConfig", "TrainingStopped", "check_run_meta", "load_trained", "peak_rss_mb", "train",
    "trained_arrays",
]  # fmt: skip


class TrainingStopped(ZoEdgeError):
    """The run cannot go on (or cannot start) as asked; the message says why and what to do."""


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
    #: whether an evaluation becomes `best`: (its metric, the highest earlier one, its result's "n") -> bool;
    #: None = strictly higher than every earlier evaluation. The state it sees (the highest so far) is what a
    #: checkpoint stores, so a resumed run picks as the uninterrupted one would.
    pick: Callable[[float, float, int], bool] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved user config, copied into every checkpoint


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss, which the kernel tracks exactly)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def trained_arrays(oracle: Oracle, method: ZOMethod, params: list[str]) -> dict[str, np.ndarray]:
    """What a checkpoint holds (views, not copies): the adapters, the bound ``params`` the method writes
    (``runtime.method.written_params``) and the method's and optimizer's state. Params the run cannot change are
    left out: resume, eval and merge take them from the export, which the checkpoint's base hash pins."""
    arrays = {f"method/{k}": v for k, v in method.state_dict().items()}
    arrays.update(oracle.trained.arrays(include_params=False))
    arrays.update({contract.checkpoint_param_name(k): oracle.params[k] for k in params})
    return arrays


def _check_finite(arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise NonFiniteState(
                f"{name} holds NaN/inf, so it was not saved (the last checkpoint is kept); lower the learning "
                "rate or mu and --resume"
            )


def _meta_base(oracle: Oracle) -> dict[str, Any]:
    return {
        contract.META_FORMAT_VERSION: contract.CHECKPOINT_FORMAT_VERSION,
        contract.META_WEIGHTS_SHA256: oracle.manifest.weights_sha256,
    }


def check_run_meta(meta: dict[str, Any], oracle: Oracle, where: str | Path) -> None:
    """Refuse a checkpoint written by another format version, or trained on another base model."""
    version = meta.get(contract.META_FORMAT_VERSION)
    if version != contract.CHECKPOINT_FORMAT_VERSION:
        raise TrainingStopped(
            f"{where}: checkpoint format {version}, this zo-edge reads {contract.CHECKPOINT_FORMAT_VERSION}; "
            "retrain the run with this version"
        )
    sha = meta.get(contract.META_WEIGHTS_SHA256)
    if sha != oracle.manifest.weights_sha256:
        raise TrainingStopped(
            f"{where} was trained on another base model (weights {str(sha)[:12]}..., this model "
            f"{oracle.manifest.weights_sha256[:12]}...); pass the model folder the run was trained on"
        )


def load_trained(oracle: Oracle, arrays: dict[str, np.ndarray]) -> None:
    """Put a checkpoint's trained state (folded params and/or adapters) into ``oracle``: enough to evaluate.
    Adapters are fed through the P/Q ports on every pass, so an export without them (``--ports``) is refused."""
    _check_finite(arrays)
    if not oracle.manifest.has_ports(contract.PORTS_LOWRANK) and any(map(contract.parse_adapter_name, arrays)):
        where, have = str(oracle.session.model_dir), oracle.manifest.ports
        raise TrainingStopped(contract.ports_missing("the run's adapter", {contract.PORTS_LOWRANK}, have, where))
    oracle.trained.load_arrays(arrays)


def _restore(oracle: Oracle, method: ZOMethod, arrays: dict[str, np.ndarray]) -> None:
    load_trained(oracle, arrays)
    method.load_state_dict({k.removeprefix("method/"): v for k, v in arrays.items() if k.startswith("method/")})


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
    written = written_params(method, oracle)
    start = 0
    best = -np.inf
    latest = checkpoint.latest_checkpoint(run_dir) if resume else None
    if resume and latest is None:
        raise TrainingStopped(f"--resume: {run_dir} has no complete checkpoint; drop --resume to start afresh")
    if latest is not None:
        arrays, meta = checkpoint.load_checkpoint(latest)
        check_run_meta(meta, oracle, latest)
        if meta.get("method") != method.name:
            raise TrainingStopped(
                f"{run_dir} holds a {meta.get('method')} run, not {method.name}: resume it with --method "
                f"{meta.get('method')} or choose another --out"
            )
        try:
            _restore(oracle, method, arrays)
        except NonFiniteState as e:
            raise TrainingStopped(
                f"--resume: {latest}: {e}; delete that checkpoint folder to resume from an older one"
            ) from None
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
        if method.needs_calibration:
            t0 = time.perf_counter()
            method.calibrate(oracle, calibration() if calibration else [])
            _log(metrics_path, {"step": 0, "calibration_s": round(time.perf_counter() - t0, 3)})
    atomic_write_json(run_dir / "config.json", cfg.config)
    if eval_fn and start == 0:
        # the starting point is a candidate too: if training never beats it on dev, `best` is the base model
        best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, 0, best, written)

    def save(step: int) -> None:
        arrays = trained_arrays(oracle, method, written)
        try:
            _check_finite(arrays)
        except NonFiniteState as e:
            raise TrainingStopped(f"step {step}: {e}") from None
        meta = {"data": data.state_dict(), "config": cfg.config, "best": best, "method": method.name}
        meta.update(_meta_base(oracle))
        checkpoint.save_checkpoint(run_dir, step, arrays, meta, keep=cfg.keep)

    bad = 0
    step = start
    proc = psutil.Process(os.getpid())
    interrupted = _DeferredInterrupt()
    # False from drawing a batch until the step that used it is counted: a checkpoint taken then would pair a data
    # position past the batch with the step before it (or θ mid-perturbation), so it is never saved
    consistent = True
    try:
        while step < cfg.steps:
            if interrupted.pending:
                raise KeyboardInterrupt
            interrupted.__enter__()  # a Ctrl-C from here to the end of the iteration waits for it (see the class)
            consistent = False
            batch, objective = data.next()
            report = method.step(oracle, batch, objective, step)
            step += 1
            consistent = True
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
                best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, written)
            if step % cfg.save_every == 0 and step < cfg.steps:
                save(step)
            interrupted.__exit__()
    except KeyboardInterrupt:
        interrupted.restore()
        if consistent:
            save(step)
        else:  # a second Ctrl-C inside a step: its state is half-made; the last checkpoint stands
            print(f"interrupted inside step {step + 1}: resuming starts from the last checkpoint", file=sys.stderr)
        raise
    finally:
        interrupted.restore()
    if eval_fn:
        best = _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, written)
    save(step)
    return {"step": step, "best": best, "peak_rss_mb": peak_rss_mb()}


def _evaluate(eval_fn, oracle, method, cfg, run_dir, metrics_path, step, best, written) -> float:
    """Evaluate, log, and save ``best`` where ``cfg.pick`` takes this evaluation; returns the highest value so far."""
    result = eval_fn(oracle)
    _log(metrics_path, {"step": step, **{f"eval_{k}": v for k, v in result.items()}})
    if not cfg.best_metric or cfg.best_metric not in result:
        return best
    value = float(result[cfg.best_metric])
    picked = cfg.pick(value, best, int(result.get("n", 0))) if cfg.pick else value > best
    if picked and np.isfinite(value):
        arrays = trained_arrays(oracle, method, written)
        _check_finite(arrays)
        meta = {"step": step, "config": cfg.config, cfg.best_metric: value, "method": method.name}
        meta.update(_meta_base(oracle))
        checkpoint.save_named(run_dir, "best", arrays, meta)
    return max(best, value) if np.isfinite(value) else best


class _DeferredInterrupt:
    """Defers SIGINT during a loop iteration (drawing the batch, the step, its log, evaluation and save): the first
    Ctrl-C is remembered and acted on between iterations (so the step in flight finishes, the data position and the
    step count agree, and θ is not mid-perturbation); a second one interrupts at once. Main thread only (elsewhere
    Python delivers no signals to us anyway)."""

    def __init__(self) -> None:
        self.pending = False
        self._active = False
        self._installed = threading.current_thread() is threading.main_thread()
        self._previous = signal.getsignal(signal.SIGINT) if self._installed else None
        if self._installed:
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        if self.pending or not self._active:
            self.restore()
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self) -> _DeferredInterrupt:
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


def _log(path: Path, row: dict) -> None:
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise WriteError(
            f"cannot append to {path} ({os.strerror(e.errno).lower()}); the run's checkpoints are kept. Free space or "
            "fix the folder's permissions, then --resume"
        ) from None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the resumed checkpoint, so the log reads as one uninterrupted run. A torn line (the
    process died mid-append) is dropped too: metrics are a log, the checkpoint is the truth."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))
