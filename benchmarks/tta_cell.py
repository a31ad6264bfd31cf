"""One cell of the time-to-accuracy study (``benchmarks/time_to_accuracy.py``): train for a wall-clock budget and
score the held-out test split at minute marks.

    python benchmarks/tta_cell.py '{"key": "rt/zo-act/s0/10m", "kind": "zo", ...}'

* ``kind = "zero-shot"``: the best prompt, chosen zero-shot on the dev split (``zo_edge.prompts.select_prompt``,
  forwards only), scored on the test split; it also fixes ``max_len`` for the task (``choose_max_len`` of the chosen
  prompt over train + dev).
  Every other cell of the task trains from this prompt at this ``max_len``.
* ``kind = "zo"``: a ZO recipe through the real zo-edge path, ``zo_edge.train.run_training`` (the loop of
  ``zo-edge train``), with an ``on_step`` hook that keeps the clock, scores the test split when a mark is passed and
  stops the run once the budget is spent (by raising ``BudgetSpent`` out of the hook: the loop has no time budget,
  and the last mark's score is already taken, so nothing is lost by not saving there).
* ``kind = "torch"``: PyTorch backprop + AdamW on the model the export came from, full fine-tuning or ``peft`` LoRA
  (``torch_reference.apply_lora``), the same prompt, the same candidate cross-entropy objective in the same encoding
  as the ZO rows (one row per example when the export has candidate scoring and the words are single tokens,
  ``_one_row_ce``; else one row per label word, ``accuracy_cell._candidate_ce``) and the same batches in the same
  order (the ZO rows' ``TaskBatches`` iterator, same seed).
  Scored by the same ``zo_edge.evaluate.evaluate`` code as the ZO rows, with the torch model behind a duck-typed
  oracle (``TorchOracle``), so the process holds no onnxruntime session and its peak RSS is the torch run's alone.

The clock counts training wall time only: it is paused while the test split is scored (and while a torch cell
saves its resume state). It includes what a user's run also pays: method init and calibration (ZO-Act's 8
forwards), data encoding, and the loop's own checkpoint saves every ``save_every`` steps. A mark is scored at the
first step boundary after it, so the recorded minutes overshoot the mark by less than a step.

Memory: ``VmHWM`` (the kernel's peak RSS) is reset (``/proc/self/clear_refs`` 5) after loading, after the inference
forward and after every evaluation, so the cell reports separately the load peak, the inference forward's peak
(``infer_peak_mb``, same engine as the row, measured right after loading) on the largest batch training can see (the
first training batch left-padded to ``max_len``: batch_size x candidates rows), the training peak (max over the
training intervals, ``train_peak_mb``) and the evaluation peak. The test split is scored in chunks of the training
batch's size, so evaluation never grows onnxruntime's arena (which keeps what it once took) beyond what a training
forward needs: the training intervals after it would otherwise carry the evaluation's memory.

Resume: a ZO cell resumes from its run folder's latest checkpoint (``runs/tta/<key>``), the clock and the marks
scored so far from ``tta_clock.jsonl`` there (cut back to the checkpoint's step); a torch cell saves its trainable
weights, AdamW moments, iterator position and clock at every mark (``torch_state.pt``, atomic) and resumes there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_cell import _candidate_ce  # noqa: E402
from common import cell_main, peak_rss_mb  # noqa: E402
from torch_reference import apply_lora, first_order_step, row_scores  # noqa: E402

from runtime import checkpoint  # noqa: E402
from runtime.batch import Batch  # noqa: E402
from zo_edge.config import TrainConfig  # noqa: E402
from zo_edge.data import TaskBatches, load_tokenizer  # noqa: E402
from zo_edge.evaluate import evaluate  # noqa: E402
from zo_edge.metrics import standard_error  # noqa: E402
from zo_edge.train import load_task_data, prepare, run_training  # noqa: E402

CLOCK_FILE = "tta_clock.jsonl"
TORCH_STATE = "torch_state.pt"
MAX_STEPS = 10**7  # the loop counts steps; the budget is wall time, so the step cap is never the limit


# --- memory -------------------------------------------------------------------------------------------------------
def hwm_mb() -> float:
    """This process's peak RSS since the last ``reset_hwm`` (``VmHWM``), in MiB; ru_maxrss where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def reset_hwm() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0), so the next reading covers what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# --- the clock ----------------------------------------------------------------------------------------------------
class BudgetSpent(Exception):  # noqa: N818  (a signal out of the loop's on_step hook, not an error)
    """Raised out of the training loop's ``on_step`` hook once the last mark is scored: the budget is spent."""


class MarkClock:
    """Training wall time with the evaluations paused, the minute marks, and what was scored at each.

    ``tick(step)`` after every training step adds the time since the last tick (or ``start``); when the total passes
    one or more marks it scores the test split once (``evaluate_fn``), records it under each mark passed, calls
    ``on_mark`` (a torch cell saves its state there) and restarts the clock. Returns True when every mark is scored.
    Rows are appended to ``log_path`` (one JSON line per step and per mark) so a resumed ZO cell can restore them.
    """

    def __init__(self, marks_min: list[float], evaluate_fn: Callable[[], dict], log_path: Path | None) -> None:
        self.marks = sorted(set(marks_min))
        self.evaluate_fn = evaluate_fn
        self.log_path = log_path
        self.train_s = 0.0
        self.step = 0
        self.evals: list[dict] = []
        self.losses: list[float] = []
        self.eval_s = 0.0
        self.eval_peak_mb = 0.0
        self.on_mark: Callable[[], None] | None = None
        self._t: float | None = None

    @property
    def pending(self) -> list[float]:
        done = {e["mark"] for e in self.evals}
        return [m for m in self.marks if m not in done]

    @property
    def train_peak_mb(self) -> float:
        return max((e["train_peak_mb"] for e in self.evals if e["mark"] > 0), default=0.0)

    def start(self) -> None:
        self._t = time.perf_counter()

    def tick(self, step: int, loss: float | None = None) -> bool:
        now = time.perf_counter()
        self.train_s += now - self._t
        self.step = step
        if loss is not None:
            self.losses.append(round(float(loss), 5) if loss == loss else None)
        self._log({"step": step, "train_s": round(self.train_s, 4), "loss": self.losses[-1] if self.losses else None})
        crossed = [m for m in self.pending if m * 60 <= self.train_s]
        if crossed:
            self.score(crossed)
        self._t = time.perf_counter()
        return not self.pending

    def score(self, marks: list[float]) -> None:
        """Score the test split now (clock paused) and record it under each of ``marks``."""
        train_peak = hwm_mb()  # the training interval's peak, read before evaluation allocates anything
        t0 = time.perf_counter()
        reset_hwm()
        r = self.evaluate_fn()
        eval_peak = hwm_mb()
        self.eval_s += time.perf_counter() - t0
        self.eval_peak_mb = max(self.eval_peak_mb, eval_peak)
        for m in marks:
            row = {
                "mark": m,
                "minutes": round(self.train_s / 60, 4),
                "step": self.step,
                "accuracy": r["accuracy"],
                "macro_f1": r["macro_f1"],
                "n": r["n"],
                "se": round(standard_error(r["accuracy"], r["n"]), 5),
                "train_peak_mb": round(train_peak, 1),
                "eval_peak_mb": round(eval_peak, 1),
            }
            self.evals.append(row)
            self._log({"eval": row})
        if self.on_mark:
            self.on_mark()
        reset_hwm()

    def _log(self, row: dict) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    # --- resume ---------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"train_s": self.train_s, "step": self.step, "evals": self.evals, "losses": self.losses}

    def load_state(self, s: dict) -> None:
        self.train_s, self.step = float(s["train_s"]), int(s["step"])
        self.evals, self.losses = list(s["evals"]), list(s["losses"])

    def restore_from_log(self, step: int) -> None:
        """Back to the state right after ``step`` (a checkpoint's), from the log; the log is cut back to it."""
        assert self.log_path is not None and self.log_path.is_file(), f"no clock log {self.log_path} to resume from"
        kept, state = [], None
        for line in self.log_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            s = row["eval"]["step"] if "eval" in row else row["step"]
            if s > step:
                continue
            kept.append(line)
            if "eval" in row:
                self.evals.append(row["eval"])
            else:
                state = row
                self.losses.append(row.get("loss"))
        assert state is not None and state["step"] == step, f"clock log has no row for checkpoint step {step}"
        self.train_s, self.step = float(state["train_s"]), step
        checkpoint.atomic_write_text(self.log_path, "".join(x + "\n" for x in kept))

    def summary(self) -> dict:
        return {
            "evals": self.evals,
            "steps": self.step,
            "train_s": round(self.train_s, 2),
            "eval_s": round(self.eval_s, 2),
            "train_peak_mb": round(self.train_peak_mb, 1),
            "eval_peak_mb": round(self.eval_peak_mb, 1),
            "losses": self.losses,
        }


# --- shared set-up ------------------------------------------------------------------------------------------------
def labels_spec(verbalizer: dict[str, list[str]]) -> str:
    """A verbalizer as the ``--labels`` spec string (class=word|word,...), for the run's config.json."""
    return ",".join(f"{c}={'|'.join(ws)}" for c, ws in verbalizer.items())


def train_config(spec: dict, method: str = "zo-act") -> TrainConfig:
    """The cell's TrainConfig: the task's data settings, the chosen prompt, and the recipe's flat keys."""
    flat = dict(spec.get("flat", {}))
    flat.setdefault("method", method)
    kw = {k: spec[k] for k in ("model", "task", "seed", "batch_size", "k", "dev_k", "threads", "max_len") if k in spec}
    kw.update(objective=spec.get("objective", "classification"), steps=MAX_STEPS, out=spec["run_dir"])
    kw["save_every"] = spec.get("save_every", 50)
    if spec.get("prompt"):
        kw["template"] = spec["prompt"]["template"]
        kw["labels"] = labels_spec(spec["prompt"]["verbalizer"])
        kw["bos"] = spec["prompt"].get("bos", True)  # cells stored before the BOS choice existed had BOS
    cfg = TrainConfig.from_flat({**kw, **flat})
    if cfg.optim.schedule != "constant":
        raise SystemExit(f"{spec['key']}: schedule {cfg.optim.schedule!r} counts steps; a time budget needs constant")
    return cfg


def check_prompt(task, spec: dict) -> None:
    """The task as built from the config asks exactly the chosen prompt (the --labels round trip kept the words)."""
    want = spec.get("prompt")
    if want and (
        task.template != want["template"] or task.verbalizer != want["verbalizer"] or task.bos != want.get("bos", True)
    ):
        raise SystemExit(f"{spec['key']}: the task's prompt {task.prompt.describe()} is not the chosen {want}")


def probe_batch(task, train, tok, cfg: TrainConfig, candidate_scoring: bool):
    """The largest batch training can see: its first batch (a separate TaskBatches with the run's seed, the run's
    own is untouched) left-padded to ``max_len`` (a batch pads to its longest row, prompts are cut at max_len)."""
    import numpy as np

    b = run_batches(task, train, tok, cfg, candidate_scoring).next()[0]
    pad = ((0, 0), (max(0, cfg.max_len - b.input_ids.shape[1]), 0))
    return Batch(
        np.pad(b.input_ids, pad, constant_values=tok.pad_token_id),
        np.pad(b.attention_mask, pad),
        np.pad(b.loss_mask, pad),
        b.candidate_ids,
    )


def run_batches(task, train, tok, cfg: TrainConfig, candidate_scoring: bool) -> TaskBatches:
    """The run's batches as ``zo_edge.train.run_training`` builds them (same sampler, seed and encoding: one row per
    example when the export has candidate scoring and the label words are single tokens)."""
    return TaskBatches(
        task, train, tok, cfg.batch_size, cfg.max_len, cfg.seed, cfg.objective, candidate_scoring=candidate_scoring
    )


def has_candidate_scoring(model_dir: str) -> bool:
    from runtime.contract import FEATURE_CANDIDATE_SCORING, Manifest

    return Manifest.load(model_dir).has(FEATURE_CANDIDATE_SCORING)


# --- zero-shot: the best prompt -----------------------------------------------------------------------------------
def zero_shot(spec: dict) -> dict:
    """Choose the prompt on dev (forwards only), fix the task's max_len from it, score the test split. Where the
    zero-shot rule picks another prompt than the training choice (best dev AUC), that one is scored on test too
    (``zero_shot_best``): the study's baseline is the better of the two (``time_to_accuracy.baseline``)."""
    from zo_edge.batching import choose_max_len, length_report
    from zo_edge.prompts import chosen, format_prompt_table, select_prompt, zero_shot_best

    t0 = time.perf_counter()
    cfg = train_config({**spec, "max_len": spec.get("select_max_len", 128)})
    p = prepare(cfg)
    load_s = time.perf_counter() - t0
    load_peak = hwm_mb()
    t0 = time.perf_counter()
    scores = select_prompt(p.oracle, p.tokenizer, p.task, p.data.dev, max_len=cfg.max_len)
    best = chosen(scores).prompt
    select_s = time.perf_counter() - t0
    print(format_prompt_table(scores), file=sys.stderr)

    def on_test(prompt) -> tuple:
        """(task, max_len, test summary) of ``prompt``, at the max_len of its own train + dev lengths."""
        task = p.task.with_prompt(prompt)
        max_len = choose_max_len(p.tokenizer, task, [*p.data.train, *p.data.dev])
        examples = _test(p.data.test, spec["n_test"], p.tokenizer, task)
        r = evaluate(p.oracle, p.tokenizer, task, examples, max_len=max_len, batch_examples=cfg.batch_size)
        return task, max_len, {**r.summary(), "se": round(standard_error(r.accuracy, r.n), 5)}

    t0 = time.perf_counter()
    task, max_len, test = on_test(best)
    alt = {}
    z = zero_shot_best(scores)
    if not z.chosen:
        _, z_len, z_test = on_test(z.prompt)
        prompt = {"name": z.prompt.name, "template": z.prompt.template, "bos": z.prompt.bos}
        alt = {"zero_shot_best": {"prompt": prompt, "max_len": z_len, "test": z_test}}
    return {
        "prompt": {"name": best.name, "template": best.template, "verbalizer": best.verbalizer, "bos": best.bos},
        "max_len": max_len,
        "length_report": length_report(p.tokenizer, task, p.data.train, max_len),
        "candidates": [s.summary() for s in scores],
        "test": test,
        "load_peak_mb": round(load_peak, 1),
        "load_s": round(load_s, 2),
        "select_s": round(select_s, 2),
        "eval_s": round(time.perf_counter() - t0, 2),
        **alt,
    }


def _test(examples, n: int, tokenizer, task) -> list:
    """The first ``n`` test examples (all for 0), shortest prompt first: a batch pads to its longest row, so
    length-sorted batches waste little; the metrics do not depend on the order."""
    import numpy as np

    from zo_edge.batching import prompt_lengths

    subset = list(examples[:n] if n else examples)
    order = np.argsort(prompt_lengths(tokenizer, task, subset), kind="stable")
    return [subset[i] for i in order]


# --- ZO: the real zo-edge path ------------------------------------------------------------------------------------
def zo(spec: dict) -> dict:
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = train_config(spec)
    p = prepare(cfg)
    check_prompt(p.task, spec)
    load_s = time.perf_counter() - t0
    load_peak = hwm_mb()
    reset_hwm()
    batch = probe_batch(p.task, p.data.train, p.tokenizer, cfg, has_candidate_scoring(cfg.model))
    for _ in range(2):
        p.oracle.run(batch)
    infer_peak = hwm_mb()
    reset_hwm()

    test = _test(p.data.test, spec["n_test"], p.tokenizer, p.task)

    def score() -> dict:
        return evaluate(
            p.oracle, p.tokenizer, p.task, test, max_len=cfg.max_len, batch_examples=cfg.batch_size
        ).summary()

    clock = MarkClock(spec["marks"], score, run_dir / CLOCK_FILE)
    latest = checkpoint.latest_checkpoint(run_dir)
    resumed_at = None
    if latest is not None:
        resumed_at = int(json.loads((Path(latest) / checkpoint.META_FILE).read_text())["step"])
        clock.restore_from_log(resumed_at)
    else:
        (run_dir / CLOCK_FILE).unlink(missing_ok=True)
        if 0.0 in clock.marks:  # the untrained model with this prompt: the zero-shot cell's score, if not asked
            clock.score([0.0])

    def on_step(step: int, report) -> None:
        if clock.tick(step, report.loss):
            raise BudgetSpent

    clock.start()
    try:
        run_training(p, resume=latest is not None, on_step=on_step)
        raise AssertionError(f"the loop ran out of its {MAX_STEPS} steps before the budget")
    except BudgetSpent:
        pass
    return {
        **clock.summary(),
        "resumed_at": resumed_at,
        "config": cfg.to_dict(),
        "infer_batch_shape": list(batch.input_ids.shape),
        "infer_peak_mb": round(infer_peak, 1),
        "load_peak_mb": round(load_peak, 1),
        "load_s": round(load_s, 2),
    }


# --- PyTorch: first-order full fine-tuning or LoRA ---------------------------------------------------------------
class TorchOracle:
    """What ``zo_edge.evaluate.evaluate`` asks of an oracle (``run(batch)`` -> row_nll, row_count), answered by a
    torch model under ``inference_mode``: the torch rows are scored by the same evaluation code as the ZO rows
    without an onnxruntime session (and its copy of the weights) in the process."""

    def __init__(self, model, manifest) -> None:
        self.model = model
        self.manifest = manifest  # the export's: evaluate() picks one-row scoring exactly as for the ZO rows

    def run(self, batch, **kw) -> dict:
        import torch

        from runtime import contract

        if kw:
            raise NotImplementedError(f"TorchOracle runs plain forwards only, not {sorted(kw)}")
        with torch.inference_mode():
            nll, count, cand = _torch_scores(self.model, batch)
        out = {contract.OUTPUT_ROW_NLL: nll.double().numpy(), contract.OUTPUT_ROW_COUNT: count.double().numpy()}
        if cand is not None:
            out[contract.OUTPUT_ROW_CANDIDATE_LOGP] = cand.double().numpy()
        return out


def _torch_scores(model, batch):
    import torch

    arrays = (batch.input_ids, batch.attention_mask, batch.loss_mask)
    cand = None if batch.candidate_ids is None else torch.from_numpy(batch.candidate_ids)
    return row_scores(model, tuple(torch.from_numpy(a) for a in arrays), cand)


def _one_row_ce(model, batch, word_class, labels, n_classes: int):
    """The classification objective on a one-row batch (``one_row_batch``): cross-entropy of the gold class over
    the classes' best candidate log-probability at the prompt's last position, as the ZO rows' objective."""
    import torch

    _, _, cand = _torch_scores(model, batch)
    scores = torch.stack([cand[:, word_class == c].max(dim=1).values for c in range(n_classes)], dim=1)
    return torch.nn.functional.cross_entropy(scores, labels)


def torch_row(spec: dict) -> dict:
    import torch

    from export.source import resolve_source
    from runtime.contract import Manifest
    from zo_edge.batching import candidate_batch, one_row_batch
    from zo_edge.objectives import use_one_row

    threads = spec.get("threads") or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(spec["seed"])
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config(spec)
    t0 = time.perf_counter()
    task, data = load_task_data(cfg)
    check_prompt(task, spec)
    tok = load_tokenizer(cfg.model)
    manifest = Manifest.load(cfg.model)
    scoring = has_candidate_scoring(cfg.model)
    one_row = use_one_row(tok, task, scoring)  # the ZO rows' encoding decision, made the same way
    model, _ = resolve_source(spec.get("source", "smollm2-135m")).load()
    load_s = time.perf_counter() - t0
    load_peak = hwm_mb()  # GGUF de-quantisation has its own transient peak
    reset_hwm()
    batch = probe_batch(task, data.train, tok, cfg, scoring)
    TorchOracle(model, manifest).run(batch)
    TorchOracle(model, manifest).run(batch)
    infer_peak = hwm_mb()
    reset_hwm()

    lora = spec.get("lora")
    if lora:
        model = apply_lora(model, r=lora["r"], alpha=lora["alpha"], targets=lora.get("targets"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=spec["lr"], weight_decay=spec.get("weight_decay", 0.0))
    it = run_batches(task, data.train, tok, cfg, scoring).iterator  # the ZO rows' example order: same sampler, seed
    n_classes = len(task.classes)
    test = _test(data.test, spec["n_test"], tok, task)
    oracle = TorchOracle(model, manifest)

    def score() -> dict:
        return evaluate(oracle, tok, task, test, max_len=cfg.max_len, batch_examples=cfg.batch_size).summary()

    clock = MarkClock(spec["marks"], score, log_path=None)
    state_path = run_dir / TORCH_STATE

    def save_state() -> None:
        """At a mark (clock paused): trainable weights, AdamW moments, iterator, RNG, clock; atomic replace."""
        tmp = state_path.with_suffix(".tmp")
        named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(
            {"params": named, "opt": opt.state_dict(), "data": it.state_dict(), "rng": torch.get_rng_state(),
             "clock": clock.state()},
            tmp,
        )  # fmt: skip
        os.replace(tmp, state_path)

    resumed_at = None
    if state_path.is_file():
        s = torch.load(state_path, weights_only=False)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, v in s["params"].items():
                params[n].copy_(v)
        opt.load_state_dict(s["opt"])
        it.load_state_dict(s["data"])
        torch.set_rng_state(s["rng"])
        clock.load_state(s["clock"])
        resumed_at = clock.step
        del s
    elif 0.0 in clock.marks:  # torch's untrained score: checks TorchOracle against the zero-shot (ORT) cell
        clock.score([0.0])
    clock.on_mark = save_state
    step = clock.step
    clock.start()
    while True:
        examples = next(it)
        labels = torch.tensor([task.class_index(e.label) for e in examples])
        if one_row:  # one row per example, every candidate from the prompt's last position (as the ZO rows)
            feeds, word_class = one_row_batch(tok, examples, task, cfg.max_len)
            loss_fn = partial(_one_row_ce, model, Batch.from_dict(feeds), word_class, labels, n_classes)
        else:  # one row per (example, label word)
            feeds, row_ex, row_cls = candidate_batch(tok, examples, task, cfg.max_len)
            loss_fn = partial(_candidate_ce, model, feeds, row_ex, row_cls, labels, n_classes)
        loss, _ = first_order_step(loss_fn, opt)
        step += 1
        if clock.tick(step, loss):
            break
    state_path.unlink(missing_ok=True)  # done: the result line is the record; the state is 1.6 GB for full FT
    return {
        **clock.summary(),
        "resumed_at": resumed_at,
        "n_trainable": sum(p.numel() for p in trainable),
        "one_row": one_row,
        "infer_batch_shape": list(batch.input_ids.shape),
        "infer_peak_mb": round(infer_peak, 1),
        "load_peak_mb": round(load_peak, 1),
        "load_s": round(load_s, 2),
    }


def main(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "zero-shot":
        return zero_shot(spec)
    if kind == "zo":
        return zo(spec)
    if kind == "torch":
        return torch_row(spec)
    raise ValueError(f"unknown time-to-accuracy cell kind {kind!r}")


if __name__ == "__main__":
    cell_main(main)
