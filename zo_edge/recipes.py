"""Measured training recipes: one place for the flag sets that carry zo-edge's results (issue #13, item 7).

``zo-edge train --recipe head`` (or ``recipe = "head"`` in a TOML file) takes a recipe's values as the base of the
run's configuration; every flag or TOML key given still overrides its value, except the method (a recipe's
learning rate, perturbation scale and queries are tuned for its method, so ``--method`` other than the recipe's is
refused in one line). ``zo-edge demo`` runs the same recipes. ``auto`` picks ``head`` where the export has the
head's split with the candidates' head (a Llama-family export, fp32 or INT4), else ``every-block``.
``zo-edge train`` with neither ``--recipe`` nor ``--method`` (nor either in its TOML) runs ``auto``: the user who
only names a model and data gets the measured best; ``--method M`` alone, or ``--recipe none``, gives the method's own
defaults.

The numbers behind each are in benchmarks/RESULTS.md (§8 for ``head``); seed 0, held-out Rotten Tomatoes n = 500.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AUTO_RECIPE", "NO_RECIPE", "RECIPES", "RecipeError", "recipe_values", "resolve_recipe"]

from runtime.errors import ZoEdgeError

#: MeZO + Adam on the final norm's gain (576 values on SmolLM2) behind the head's split: every block is a frozen
#: prefix computed once per training example, and each ± pass runs the candidates' head alone (the C label words'
#: rows of the LM head), so 32 queries a step cost next to nothing. Classification CE from the best prompt on dev.
#: Measured (RESULTS.md §8, seed 0): 0.672 -> 0.800 on 500 held-out RT sentences from the chat prompt; from the
#: dev-AUC prompt (§12.6) 0.782 -> 0.804 ± 0.012 over 3 seeds. dev_k 64 per class: at 32 the 64-example dev split
#: (s.e. 0.05) could not resolve the recipe's 1-3 points and kept the untrained base as "best" (the demo: 0.782 ->
#: 0.782, its last checkpoint 0.804); 128 examples cost ~1 more minute of prompt scoring.
HEAD = dict(
    method="mezo",
    layers="head",
    kinds="norm",  # the same selection as "all" behind --layers head; on INT4 the only one MeZO may move
    optimizer="adam",
    lr=1e-2,
    mu=1e-3,
    dist="rademacher",
    queries=32,
    steps=2000,
    batch_size=32,
    # 1024 reviews per class (RESULTS.md §14.4): held-out RT 0.800 / 0.808 / 0.793 at 256 -> 0.806 / 0.812 / 0.800
    # (seeds 0-2, n = 1000), the steps unchanged; the prefix pass over 4x the reviews costs ~1.5 more minutes
    k=1024,
    dev_k=64,
    objective="classification",
    template="auto",
    max_len=0,
    save_every=500,
    eval_every=500,
    # the latest evaluation within one s.e. of the best dev accuracy (RESULTS.md §14.2): on 128 dev examples the
    # highest of 5 evaluations mostly picked noise; over 8 runs this rule's pick scored +0.5 on test on average
    pick="one-se",
)
#: ZO-Act's coefficients on every block: exports without the head's split (families without split graphs, or
#: ``--splits none``), and a user's choice on INT4 (an adapter over the quantized linears)
EVERY_BLOCK = dict(
    method="zo-act",
    layers="all",
    mu=1e-2,
    queries=1,
    steps=250,
    batch_size=8,
    k=64,
    dev_k=32,
    objective="classification",
    template="auto",
    max_len=0,
    save_every=100,
    eval_every=100,
)
RECIPES: dict[str, dict[str, Any]] = {"head": HEAD, "every-block": EVERY_BLOCK}
AUTO_RECIPE = "auto"
NO_RECIPE = "none"  # no recipe: the method's own defaults (what --method alone gives)


class RecipeError(ZoEdgeError, ValueError):
    """An unknown recipe, or flags that contradict the recipe's method."""


def resolve_recipe(name: str, model: str) -> str:
    """The recipe ``name`` stands for: itself, or for ``auto`` the best one ``model``'s export can run."""
    if name == AUTO_RECIPE:
        from runtime.contract import FEATURE_CANDIDATE_HEAD, Manifest

        return "head" if model and Manifest.load(model).has(FEATURE_CANDIDATE_HEAD) else "every-block"
    if name not in RECIPES:
        raise RecipeError(
            f"--recipe {name!r} is not a recipe; choose one of: {', '.join([*RECIPES, AUTO_RECIPE, NO_RECIPE])}"
        )
    return name


def recipe_values(name: str, model: str, method: str | None) -> dict[str, Any]:
    """The flat values of recipe ``name`` for ``model`` (``method``: the one given, if any, must be the recipe's)."""
    resolved = resolve_recipe(name, model)
    values = RECIPES[resolved]
    if method is not None and method != values["method"]:
        raise RecipeError(
            f"--recipe {name} trains with {values['method']} (its lr, mu and queries are tuned for it); drop --recipe "
            f"to train with --method {method}"
        )
    return dict(values)
