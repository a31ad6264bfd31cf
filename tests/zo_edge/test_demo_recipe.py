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


def test_fp32_demo_trains_the_head_and_int4_demo_the_coefficients():
    assert (DEMO["method"], DEMO["layers"]) == ("mezo", "head")
    assert (DEMO_INT4["method"], DEMO_INT4["layers"]) == ("zo-act", "all")  # INT4 graphs have no split graphs
