"""Every method on the real SmolLM2-135M (slow): 20 steps on real Rotten Tomatoes text, finite and not rising.

ZO-Act also runs on the INT4 export: calibrate, 20 steps, merge, generate a few tokens.

    python -m pytest tests/methods/test_real_model.py -q -s
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.batch import Batch
from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.batching import lm_batch
from zo_edge.data import load_tokenizer
from zo_edge.methods import METHODS, get_method
from zo_edge.tasks import get_task

pytestmark = pytest.mark.slow

STEPS = 20


def _batches(model_dir, n: int, size: int = 8):
    tok = load_tokenizer(model_dir)
    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=64)
    return [Batch.from_dict(lm_batch(tok, data.train[i * size : (i + 1) * size], task, 48)) for i in range(n)]


def _method(name: str, oracle: Oracle):
    """The method with its own declared defaults (Config, default_lr, default_optimizer): what `zo-edge train` uses."""
    cls = get_method(name)
    sched = optim.constant(cls.default_lr)
    opt = optim.make_optimizer(cls.default_optimizer, sched)
    return cls(cls.Config(), opt, sched)


def _mean_loss(oracle: Oracle, batches) -> float:
    return float(np.mean([np.mean(oracle.sample_losses(b)) for b in batches]))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_twenty_steps_on_real_model(name, real_model_dirs):
    oracle = Oracle(GraphSession(real_model_dirs["fp32"]["dir"]))
    batches = _batches(real_model_dirs["fp32"]["dir"], 4)
    method = _method(name, oracle)
    method.init(oracle, 0)
    if method.needs_calibration:
        method.calibrate(oracle, batches[:2])
    before = _mean_loss(oracle, batches)
    reports = [method.step(oracle, batches[t % len(batches)], lm_objective, t) for t in range(STEPS)]
    after = _mean_loss(oracle, batches)
    losses = [r.loss for r in reports]
    print(f"\n{name}: loss {before:.4f} -> {after:.4f}; step losses {losses[0]:.3f} .. {losses[-1]:.3f}")
    assert all(np.isfinite(losses)) and not any(r.skipped for r in reports)
    assert np.isfinite(after) and after <= before * 1.01, f"{name}: loss rose {before:.4f} -> {after:.4f}"


def test_zo_act_int4_calibrate_train_merge_generate(real_model_dirs, tmp_path, capsys):
    from zo_edge.cli import main

    run, merged = tmp_path / "run", tmp_path / "merged"
    argv = [
        "train",
        "--model",
        str(real_model_dirs["int4"]["dir"]),
        "--method",
        "zo-act",
        "--steps",
        str(STEPS),
        "--out",
        str(run),
        "--batch-size",
        "8",
        "--max-len",
        "48",
        "--k",
        "32",
        "--dev-k",
        "8",
        "--calib-batches",
        "2",
        "--save-every",
        "10",
        "--eval-examples",
        "16",
    ]
    assert main(argv) == 0
    assert main(["merge", str(run), "--out", str(merged)]) == 0
    capsys.readouterr()
    assert main(["generate", str(merged), "The movie was", "--max-new-tokens", "5"]) == 0
    text = capsys.readouterr().out
    print(text)
    assert text.startswith("The movie was") and len(text) > len("The movie was")
