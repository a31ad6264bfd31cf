"""``--recipe head`` end to end on a tiny model: the frozen stack runs once per training example before the first
step, every step then runs the candidates' head from the cache, and the CLI shows that pass as its own bar.

python -m pytest tests/zo_edge/test_head_recipe.py -q
"""

from __future__ import annotations

import json

from zo_edge.cli import main
from zo_edge.config import TrainConfig
from zo_edge.train import prefill_cache, prepare, run_training

SMALL = {"task": "rotten-tomatoes", "k": 8, "dev_k": 4, "batch_size": 4, "eval_examples": 8, "max_len": 32}


def test_the_prefix_runs_once_per_training_example_before_the_first_step(tiny_lm_dirs, tmp_path):
    flags = {**SMALL, "model": str(tiny_lm_dirs["fp32"]), "recipe": "head", "steps": 4, "queries": 2}
    p = prepare(TrainConfig.from_flat({**flags, "out": str(tmp_path / "run"), "eval_every": 0, "save_every": 4}))
    cache = p.oracle.prefix
    assert cache is not None and cache.scored_only and p.oracle.candidate_head is not None
    chunks = []
    computed = prefill_cache(p, on_chunk=lambda done, total: chunks.append((done, total)), chunk=5)
    assert 0 < computed <= len(p.data.train) and len(cache.rows) >= computed  # rows: train + the dev rows scored
    assert chunks[-1] == (len(p.data.train), len(p.data.train)) and len(chunks) == -(-len(p.data.train) // 5)
    misses = []
    run_training(p, on_step=lambda step, report: misses.append(cache.misses))
    assert len(misses) == 4 and len(set(misses)) == 1, f"a step recomputed prefix rows: {misses}"
    assert prefill_cache(p) == 0, "a second prefill must find every row cached"
    # the checkpoint holds the one tensor the run trains (the final norm's gain), not every bound param of the
    # export (SmolLM2: 2.3 KB instead of 540 MB a save, and no 540 MB load to score the best checkpoint)
    from runtime import checkpoint, contract

    arrays, _ = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path / "run"))
    params = sorted(k for k in arrays if contract.parse_checkpoint_param_name(k))
    assert params == [contract.checkpoint_param_name("model.norm.weight")], params


def test_cli_head_recipe_shows_the_prefix_pass_and_trains(tiny_lm_dirs, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_lm_dirs["fp32"]), "--recipe", "head", "--steps", "3", "--out", str(run)]
    argv += ["--k", "8", "--dev-k", "4", "--batch-size", "4", "--eval-examples", "8", "--max-len", "32"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "frozen stack, once" in err and "mezo" in err
    written = json.loads((run / "config.json").read_text())
    assert (written["recipe"], written["layers"], written["method"]["name"]) == ("head", "head", "mezo")
