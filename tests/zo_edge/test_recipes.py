"""``--recipe`` (zo_edge/recipes.py): a measured recipe is the base of a run's config, flags and TOML keys override
it, a contradicting method is refused in one line, and ``auto`` follows what the export can run.

python -m pytest tests/zo_edge/test_recipes.py -q
"""

from __future__ import annotations

import pytest

from zo_edge.cli import main
from zo_edge.config import TrainConfig
from zo_edge.recipes import RECIPES, RecipeError


def test_a_recipe_fills_what_is_not_given_and_flags_override_it():
    cfg = TrainConfig.from_flat({"model": "m", "recipe": "head", "steps": 7, "lr": 3e-3})
    head = RECIPES["head"]
    assert (cfg.recipe, cfg.method, cfg.layers, cfg.objective) == ("head", "mezo", "head", "classification")
    assert cfg.method_config.queries == head["queries"] and cfg.method_config.mu == head["mu"]
    assert cfg.optim.optimizer == "adam" and cfg.optim.lr == 3e-3 and cfg.steps == 7
    plain = TrainConfig.from_flat({"model": "m"})
    assert (plain.recipe, plain.method, plain.steps) == ("", "zo-act", 200)  # no recipe: the library defaults


def test_toml_keys_override_the_recipe_and_flags_override_the_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "m"\nrecipe = "head"\nsteps = 11\n[optim]\nlr = 0.002\n')
    cfg = TrainConfig.from_sources(str(path), {"steps": 13})
    assert (cfg.method, cfg.steps, cfg.optim.lr, cfg.optim.optimizer) == ("mezo", 13, 0.002, "adam")


def test_a_method_other_than_the_recipes_is_one_clear_error(capsys):
    with pytest.raises(RecipeError, match="--recipe head trains with mezo"):
        TrainConfig.from_flat({"model": "m", "recipe": "head", "method": "zo-act"})
    assert main(["train", "--model", "m", "--recipe", "every-block", "--method", "lozo"]) == 2
    err = capsys.readouterr().err
    assert "drop --recipe to train with --method lozo" in err and "Traceback" not in err
    with pytest.raises(RecipeError, match="is not a recipe"):
        TrainConfig.from_flat({"model": "m", "recipe": "fastest"})


def test_auto_picks_head_where_the_export_has_the_candidates_head(tiny_export):
    fp32, int4 = tiny_export("llama"), tiny_export("llama", int4=True)
    no_split = tiny_export("llama", int4=True, splits="none")
    assert TrainConfig.from_flat({"model": str(fp32.dir), "recipe": "auto"}).recipe == "head"
    cfg = TrainConfig.from_flat({"model": str(int4.dir), "recipe": "auto"})  # INT4 has the head's split too
    assert (cfg.recipe, cfg.method, cfg.layers, cfg.method_config.kinds) == ("head", "mezo", "head", "norm")
    cfg = TrainConfig.from_flat({"model": str(no_split.dir), "recipe": "auto"})
    assert (cfg.recipe, cfg.method, cfg.layers) == ("every-block", "zo-act", "all")


def test_zo_edge_train_defaults_to_the_best_recipe_unless_a_method_is_chosen(tiny_export, tmp_path):
    """``zo-edge train --model M --task T`` alone gets ``auto``; ``--method`` (flag or TOML) or ``--recipe none`` gets
    that method's own defaults. The library's ``from_flat`` keeps no default recipe (scripts say what they run)."""
    model = str(tiny_export("llama").dir)
    auto = TrainConfig.from_sources(None, {"model": model}, default_recipe="auto")
    assert (auto.recipe, auto.method, auto.layers, auto.steps) == ("head", "mezo", "head", RECIPES["head"]["steps"])
    chosen = TrainConfig.from_sources(None, {"model": model, "method": "lozo"}, default_recipe="auto")
    assert (chosen.recipe, chosen.method, chosen.layers, chosen.steps) == ("", "lozo", "all", 200)
    none = TrainConfig.from_sources(None, {"model": model, "recipe": "none"}, default_recipe="auto")
    assert (none.recipe, none.method, none.steps) == ("", "zo-act", 200)
    path = tmp_path / "run.toml"
    path.write_text(f'model = "{model}"\nmethod = "subzero"\n')
    assert TrainConfig.from_sources(str(path), {}, default_recipe="auto").recipe == ""
    path.write_text(f'model = "{model}"\nrecipe = "none"\n')
    assert TrainConfig.from_sources(str(path), {}, default_recipe="auto").method == "zo-act"
    assert TrainConfig.from_flat({"model": model}).recipe == ""


def test_the_train_command_runs_the_default_recipe_and_says_so(tiny_lm_dirs, tmp_path, capsys):
    import json

    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_lm_dirs["fp32"]), "--task", "rotten-tomatoes", "--steps", "2", "--k", "4"]
    assert main([*args, "--dev-k", "2", "--max-len", "32", "--out", str(out), "--eval-examples", "4"]) == 0
    printed = capsys.readouterr().out
    assert "recipe head: mezo + adam (lr 0.01) on --layers head, 32 queries x 2 steps, batch 32, k 4" in printed
    saved = json.loads((out / "config.json").read_text())
    assert (saved["recipe"], saved["method"]["name"], saved["layers"]) == ("head", "mezo", "head")


def test_the_users_label_words_keep_the_users_template(tiny_export, capsys):
    """A recipe's ``--template auto`` picks a prompt with its own label words, so it yields to ``--labels``: the
    user-data example of the README (``--labels pos=great``) must not be refused under the default recipe."""
    model = str(tiny_export("llama").dir)
    cfg = TrainConfig.from_sources(None, {"model": model, "labels": "rotten=bad,fresh=good"}, default_recipe="auto")
    assert (cfg.recipe, cfg.labels) == ("head", "rotten=bad,fresh=good") and cfg.template != "auto"
    # a file's candidate prompts are built from its --labels, so there the recipe's --template auto stands
    mine = {"model": model, "data": "mine.csv", "labels": "0=normal,1=spam"}
    cfg = TrainConfig.from_sources(None, mine, default_recipe="auto")
    assert (cfg.task, cfg.template, cfg.labels) == ("user-data", "auto", "0=normal,1=spam")
    assert main(["train", "--model", "no/such/export", "--task", "trec"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model folder no/such/export does not exist" in err and len(err.splitlines()) == 1
