"""Which dev evaluation becomes a run's ``best`` checkpoint (``--pick``, ``zo_edge.metrics.PICK_RULES``).

The rules against hand-computed cases, then through ``runtime.loop.train`` on the tiny Llama with a scripted dev
score per step: ``best`` keeps the highest, ``one-se`` the latest within one binomial s.e. of the highest so far,
and a run interrupted and resumed keeps the same checkpoint as the uninterrupted one (the highest-so-far it
compares against travels in the checkpoint). The head recipe asks for ``one-se``; the CLI names the kept step.

    python -m pytest tests/zo_edge/test_pick.py -q
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from runtime import checkpoint
from runtime.batch import Batch
from runtime.loop import LoopConfig, train
from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.config import ConfigError, TrainConfig
from zo_edge.methods import get_method
from zo_edge.metrics import pick_rule
from zo_edge.recipes import HEAD


def test_best_is_strictly_higher_and_one_se_is_within_one_standard_error():
    best, one_se = pick_rule("best"), pick_rule("one-se")
    assert best(0.80, 0.79, 128) and not best(0.79, 0.79, 128)  # the first of tied maxima stays
    se = math.sqrt(0.789 * 0.211 / 128)  # 0.0361, at the highest value so far
    assert one_se(0.789 - se + 1e-9, 0.789, 128) and not one_se(0.789 - se - 1e-9, 0.789, 128)
    assert one_se(0.90, 0.789, 128)  # a new highest is always within
    assert one_se(0.70, -np.inf, 128)  # the first evaluation (the base) is kept until something is within
    # the s.e. shrinks with the dev split: what 128 examples cannot tell apart, 10 000 can
    assert one_se(0.773, 0.789, 128) and not one_se(0.773, 0.789, 10_000)


def test_unknown_rule_is_one_line():
    with pytest.raises(ConfigError, match="--pick must be one of best, one-se"):
        TrainConfig(model="m", pick="last")


def test_the_head_recipe_selects_one_se():
    assert HEAD["pick"] == "one-se" and TrainConfig().pick == "best"


#: scripted dev accuracy (n = 100, s.e. ≈ 0.04 at 0.8) by step; evaluations at 0, 2, 4 and the end, 6
SCRIPT = {0: 0.70, 2: 0.80, 4: 0.78, 6: 0.60}
KEPT = {"best": 2, "one-se": 4}


class Cycling:
    def __init__(self, batch: Batch) -> None:
        self.batch, self.pos = batch, 0

    def next(self):
        self.pos += 1
        return self.batch, lm_objective

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


def _run(model_dir, run_dir, batch, select: str, steps: int, resume: bool = False) -> None:
    oracle = Oracle(GraphSession(model_dir))
    cls = get_method("lozo")
    schedule = optim.constant(2e-3)
    method = cls(cls.Config(mu=1e-3, rank=2), optim.sgd(schedule), schedule)
    at = {"step": 0}

    def on_step(step, report) -> None:
        at["step"] = step

    def dev(_oracle) -> dict:
        return {"accuracy": SCRIPT[at["step"]], "n": 100}

    cfg = LoopConfig(steps=steps, save_every=2, keep=10, eval_every=2, best_metric="accuracy", pick=pick_rule(select))
    train(oracle, method, Cycling(batch), cfg, run_dir, resume=resume, eval_fn=dev, on_step=on_step)


@pytest.mark.parametrize("select", sorted(KEPT))
def test_the_loop_keeps_the_rule_s_checkpoint_and_resume_keeps_it_too(select, tiny_export, tiny, tmp_path):
    model = tiny_export("llama")
    batch = tiny.make_batch(tiny.VOCAB, seed=0, batch=4, seq=10)
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run(model.dir, whole, batch, select, steps=6)
    _run(model.dir, split, batch, select, steps=4)  # stops at step 4 (its final evaluation), then resumes to 6
    _run(model.dir, split, batch, select, steps=6, resume=True)
    for run in (whole, split):
        arrays, meta, _ = checkpoint.load_trained_checkpoint(run, "best")
        assert meta["step"] == KEPT[select] and meta["accuracy"] == SCRIPT[KEPT[select]], (run.name, meta)
        at_step, _ = checkpoint.load_checkpoint(run / f"ckpt_{KEPT[select]:08d}")
        for k, a in arrays.items():  # the kept checkpoint is that step's state, bit for bit
            assert a.tobytes() == at_step[k].tobytes(), k


def test_train_names_the_kept_step_and_records_the_rule(tiny_lm_dirs, tmp_path, capsys):
    from zo_edge.cli import main

    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_lm_dirs["fp32"]), "--method", "lozo", "--steps", "4", "--out", str(run)]
    argv += ["--task", "rotten-tomatoes", "--batch-size", "4", "--max-len", "32", "--k", "8", "--dev-k", "4"]
    assert main([*argv, "--eval-every", "2", "--pick", "one-se", "--eval-examples", "8"]) == 0
    out = capsys.readouterr().out
    meta = checkpoint.load_trained_checkpoint(run, "best")[1]
    assert f"kept step {meta['step']} (dev accuracy {meta['accuracy']:.3f}" in out, out
    assert json.loads((run / "config.json").read_text())["pick"] == "one-se"
