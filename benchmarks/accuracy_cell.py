"""One cell of the accuracy study (``benchmarks/accuracy.py``): a training run and its held-out test score.

    python benchmarks/accuracy_cell.py '{"key": "rt/zo-act/fp32/s0", "kind": "zo", ...}'

* ``kind = "zero-shot"``: the exported model as it is, scored on the test and dev sets.
* ``kind = "zo"``: ``zo_edge.train.run_training`` (the same code as ``zo-edge train``), into a run folder that is
  resumed when it holds a checkpoint, then the final weights are scored on the test set.
* ``kind = "torch-fo"``: first-order fine-tuning in PyTorch (backprop + AdamW) of the model the export came from, on
  the same batches in the same order (``BatchIterator`` with the run seed) and the same objective; its weights are
  then copied into the exported graph's parameters and scored by the *same* ``zo_edge.evaluate`` code as every
  other cell, so that the evaluation cannot differ between the ZO and the first-order rows.

Each cell reports where its time went (load, calibration, training split into forwards / update / sampling,
evaluation) and the per-step training losses and dev accuracies for the learning-curve plot.
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cell_main  # noqa: E402
from torch_reference import first_order_step, row_nll  # noqa: E402  (imports torch only when called)

from runtime import checkpoint  # noqa: E402
from zo_edge.config import TrainConfig  # noqa: E402
from zo_edge.train import evaluate_on, prepare, run_training  # noqa: E402

BATCH_KEYS = ("input_ids", "attention_mask", "loss_mask")


def _config(spec: dict, method: str) -> TrainConfig:
    keys = ("model", "task", "steps", "seed", "batch_size", "max_len", "k", "dev_k", "objective", "threads")
    kw = {k: spec[k] for k in keys if k in spec}
    kw.update(spec.get("overrides", {}))
    return TrainConfig.from_flat(dict(method=method, out=spec["run_dir"], eval_every=spec.get("eval_every", 0), **kw))


def _scores(p, n_test: int) -> tuple[dict, float]:
    t0 = time.perf_counter()
    test = evaluate_on(p, p.data.test, n_test).summary()
    return test, time.perf_counter() - t0


def _curves(run_dir: Path) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r for r in rows if "loss" in r]
    out = {
        "losses": [round(r["loss"], 5) if r["loss"] == r["loss"] else None for r in steps],
        "forwards": int(sum(r.get("forwards", 0) for r in steps)),
        "dev_curve": [[r["step"], r["eval_accuracy"]] for r in rows if "eval_accuracy" in r],
        "skipped_steps": int(sum(bool(r.get("skipped")) for r in steps)),
        "max_rss_mb": max((r.get("rss_mb", 0.0) for r in steps), default=0.0),
    }
    for k in ("t_forward", "t_update", "t_sample"):
        out[k] = round(sum(r.get(k, 0.0) for r in steps), 2)
    out["calibration_s"] = sum(r.get("calibration_s", 0.0) for r in rows)
    return out


def zero_shot(spec: dict) -> dict:
    t0 = time.perf_counter()
    p = prepare(_config(spec, "zo-act"))
    load_s = time.perf_counter() - t0
    test, eval_s = _scores(p, spec["n_test"])
    dev = evaluate_on(p, p.data.dev, 0).summary()
    return {"test": test, "dev_curve": [[0, dev["accuracy"]]], "load_s": round(load_s, 2), "eval_s": round(eval_s, 2)}


def zo(spec: dict) -> dict:
    run_dir = Path(spec["run_dir"])
    t0 = time.perf_counter()
    p = prepare(_config(spec, spec["method"]))
    load_s = time.perf_counter() - t0
    resume = checkpoint.latest_checkpoint(run_dir) is not None
    t1 = time.perf_counter()
    result = run_training(p, resume=resume)
    train_s = time.perf_counter() - t1  # includes the dev evaluations and checkpoint writes (split below)
    test, eval_s = _scores(p, spec["n_test"])
    return {
        "test": test,
        "resumed": resume,
        "load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        "train_peak_rss_mb": round(result["peak_rss_mb"], 1),
        **_curves(run_dir),
    }


# --- PyTorch first-order reference ------------------------------------------------------------------------------
def copy_torch_weights(model, session) -> None:
    """Write a torch model's weights into the exported graph's bound parameters (linear weights are stored
    [d_in, d_out] there, i.e. transposed), in place, so the session evaluates the fine-tuned model."""
    params = dict(model.named_parameters())
    linear = {s.weight for s in session.manifest.linears}
    for key, arr in session.params.items():
        w = params[key].detach().float().numpy()
        arr[...] = w.T if key in linear else w


def _candidate_ce(model, feeds, row_ex, row_cls, labels, n_classes: int):
    """The classification objective in torch: cross-entropy of the gold class over the candidates' log-likelihoods
    (a class scores its label word's -row NLL, as ``zo_edge.tasks.class_scores`` with one word per class)."""
    import torch

    nll, _ = row_nll(model, tuple(torch.from_numpy(feeds[k]) for k in BATCH_KEYS))
    scores = torch.full((len(labels), n_classes), -torch.inf).index_put(
        (torch.from_numpy(row_ex), torch.from_numpy(row_cls)), -nll
    )
    return torch.nn.functional.cross_entropy(scores, labels)


def torch_fo(spec: dict) -> dict:
    import torch

    from export.source import resolve_source
    from runtime.oracle import Oracle
    from runtime.session import GraphSession
    from zo_edge.batching import BatchIterator, candidate_batch
    from zo_edge.train import Prepared, load_task_data

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    torch.manual_seed(spec["seed"])
    cfg = _config(spec, "zo-act")
    t0 = time.perf_counter()
    model, _ = resolve_source("smollm2-135m").load()
    model.train()
    session = GraphSession(cfg.model, threads=cfg.threads or None)
    task, data = load_task_data(cfg)
    from zo_edge.data import load_tokenizer

    p = Prepared(cfg, Oracle(session), load_tokenizer(cfg.model), task, data)
    load_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.0)
    it = BatchIterator(data.train, cfg.batch_size, cfg.seed)
    n_classes = len(task.classes)
    losses, dev_curve = [], []
    t = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0, "eval": 0.0}

    def dev_eval(step: int) -> None:
        t0 = time.perf_counter()
        copy_torch_weights(model, session)
        dev_curve.append([step, evaluate_on(p, data.dev, 0).accuracy])
        t["eval"] += time.perf_counter() - t0

    if cfg.eval_every:
        dev_eval(0)
    t_train = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        examples = next(it)
        feeds, row_ex, row_cls = candidate_batch(p.tokenizer, examples, task, cfg.max_len)
        labels = torch.tensor([task.class_index(e.label) for e in examples])
        loss, split = first_order_step(partial(_candidate_ce, model, feeds, row_ex, row_cls, labels, n_classes), opt)
        for k, v in split.items():
            t[k] += v
        losses.append(round(loss, 5))
        if cfg.eval_every and step % cfg.eval_every == 0:
            dev_eval(step)
    train_s = time.perf_counter() - t_train
    copy_torch_weights(model, session)
    test, eval_s = _scores(p, spec["n_test"])
    return {
        "test": test,
        "losses": losses,
        "dev_curve": dev_curve,
        "load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
        **{f"t_{k}": round(v, 2) for k, v in t.items()},
    }


def main(spec: dict) -> dict:
    kind = spec["kind"]
    if kind == "zero-shot":
        return zero_shot(spec)
    if kind == "zo":
        return zo(spec)
    if kind == "torch-fo":
        return torch_fo(spec)
    raise ValueError(f"unknown accuracy cell kind {kind!r}")


if __name__ == "__main__":
    cell_main(main)
