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
    assert TrainConfig.from_flat({"model": str(fp32.dir), "recipe": "auto"}).recipe == "head"
    cfg = TrainConfig.from_flat({"model": str(int4.dir), "recipe": "auto"})
    assert (cfg.recipe, cfg.method, cfg.layers) == ("every-block", "zo-act", "all")
