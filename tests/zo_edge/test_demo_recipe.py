"""The demo's recipes are valid configs of the methods they name (a typo in DEMO would only show at `make demo`).

python -m pytest tests/zo_edge/test_demo_recipe.py -q
"""

from __future__ import annotations

import pytest

from zo_edge.config import TrainConfig
from zo_edge.demo import DEMO, DEMO_INT4


@pytest.mark.parametrize("recipe", [DEMO, DEMO_INT4], ids=["fp32", "int4"])
def test_demo_recipe_builds_its_method_config(recipe):
    flat = {k: v for k, v in recipe.items() if v is not None}
    cfg = TrainConfig.from_flat({"model": "m", **flat})
    assert cfg.method == recipe["method"] and cfg.layers == recipe["layers"]
    for key in ("mu", "queries"):
        assert getattr(cfg.method_config, key) == recipe[key], key
    if recipe.get("lr") is not None:
        assert cfg.optim.lr == recipe["lr"] and cfg.optim.optimizer == recipe["optimizer"]
    assert cfg.objective == "classification" and cfg.template == "auto"


def test_both_demos_train_the_head():
    """INT4 exports have the head's split too (quantized), so the INT4 demo runs the fp32 demo's recipe."""
    for recipe in (DEMO, DEMO_INT4):
        assert (recipe["method"], recipe["layers"], recipe["kinds"]) == ("mezo", "head", "norm")
