"""The shared checks every registered ZO method goes through, one ``METHOD_CASES`` row per method.

    python -m pytest tests/methods/test_common.py -q
    python -m pytest tests/methods/test_common.py -q -m "not slow"

Adding a method means adding a row here (``test_every_method_has_a_case`` fails otherwise). The rows run on a tiny
random Llama exported once per session (tests/conftest.py ``tiny_export``), fp32 and, for methods whose ``bases``
include "int4", an INT4 export trained in adapter form. Checks:

* the loss falls on a tiny memorisation task (one fixed batch, 150 steps);
* a run stopped at step k and resumed through ``runtime.loop.train(..., resume=True)`` ends bit-identical to an
  uninterrupted one (params, adapters, method and optimizer state), also when the process is killed (``os._exit``
  in a subprocess) in the middle of writing a checkpoint;
* the same seed gives the same run, another seed another one;
* method and optimizer state stay small (factor-sized, not weight-sized; MeZO and Zoop with SGD hold only step
  counters);
* a non-finite loss skips the update and leaves everything untouched, and the loop stops after ``max_bad_steps``;
* MeZO refuses Adam (naming its memory cost); on INT4 it trains the float norms only, when told to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from runtime import checkpoint, contract
from runtime.batch import Batch
from runtime.loop import LoopConfig, TrainingStopped, train
from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import METHODS, get_method

VOCAB = 97  # tests/conftest.py TINY_VOCAB


@dataclass(frozen=True)
class MethodCase:
    name: str
    config: dict = field(default_factory=dict)
    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 1e-3

    def build(self):
        cls = get_method(self.name)
        schedule = optim.constant(self.lr)
        opt = optim.adam(schedule) if self.optimizer == "adam" else optim.sgd(schedule)
        return cls(cls.Config(**self.config), opt, schedule)

    def __str__(self) -> str:
        return self.name


# One row per registered method. Short lazy periods (nu, refresh) so that resume crosses a redraw boundary.
METHOD_CASES = [
    MethodCase("mezo", {"mu": 1e-3}, "sgd", 2e-3),
    MethodCase("lozo", {"mu": 1e-3, "rank": 2, "nu": 5}, "sgd", 2e-3),
    MethodCase("subzero", {"mu": 1e-3, "rank": 2, "refresh": 5}, "sgd", 3e-3),
    MethodCase("agzo", {"mu": 1e-3, "rank": 1}, "sgd", 2e-2),
    MethodCase("zo-act", {"mu": 1e-3, "rank": 4}, "adam", 1e-2),
    MethodCase("fzoo", {"mu": 1e-3, "rank": 4, "queries": 4}, "sgd", 2e-2),
    MethodCase("zoop", {"mu": 1e-3, "select": "cycle"}, "sgd", 0.1),
]
FULL_SPACE = {"mezo", "zoop"}  # trainable coordinates are the weights themselves
CASES = {c.name: c for c in METHOD_CASES}
BASE_CASES = [pytest.param(c, "fp32", id=f"{c.name}-fp32") for c in METHOD_CASES] + [
    pytest.param(c, "int4", id=f"{c.name}-int4")
    for c in METHOD_CASES
    if "int4" in get_method(c.name).bases and c.name not in FULL_SPACE  # MeZO on INT4: its norms only (below)
]

RESUME_STEPS = 9  # uninterrupted run length
SAVE_EVERY = 3


# --- data ------------------------------------------------------------------------------------------------------
def make_batch(seed: int, rows: int = 6, seq: int = 10) -> Batch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (rows, seq), dtype=np.int64)
    attn = np.ones_like(ids)
    attn[0, :3] = 0  # left padding
    attn[1, :1] = 0
    return Batch(ids, attn, np.ones_like(ids))


BATCHES = [make_batch(s) for s in range(3)]


class CyclingData:
    """Cycles through BATCHES; its position is its whole state (so a resumed run sees the same batches)."""

    def __init__(self) -> None:
        self.pos = 0

    def next(self):
        b = BATCHES[self.pos % len(BATCHES)]
        self.pos += 1
        return b, lm_objective

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


# --- helpers -----------------------------------------------------------------------------------------------------
def snapshot(oracle: Oracle, method) -> dict[str, np.ndarray]:
    """Copies of everything a run changes: bound params, adapters, method + optimizer state."""
    out = {f"param/{k}": v.copy() for k, v in oracle.params.items()}
    out.update({k: np.array(v, copy=True) for k, v in oracle.trained.arrays(include_params=False).items()})
    out.update({f"method/{k}": np.array(v, copy=True) for k, v in method.state_dict().items()})
    return out


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert sorted(a) == sorted(b), f"{what}: different arrays: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"{what}: {k} dtype/shape differ"
        assert a[k].tobytes() == b[k].tobytes(), f"{what}: {k} differs (max |Δ| {np.abs(a[k] - b[k]).max():.3g})"


def differs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return any(k not in b or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes() for k in a)


def run_loop(case: MethodCase, model_dir, run_dir, steps: int, *, resume=False, seed=0, on_step=None):
    """A fresh session, oracle and method trained by runtime.loop.train; returns (snapshot, oracle, method)."""
    oracle = Oracle(GraphSession(model_dir))
    method = case.build()
    cfg = LoopConfig(steps=steps, seed=seed, save_every=SAVE_EVERY, keep=3, config={"method": case.name})
    train(oracle, method, CyclingData(), cfg, run_dir, resume=resume, calibration=lambda: BATCHES, on_step=on_step)
    return snapshot(oracle, method), oracle, method


def fresh(case: MethodCase, model_dir, seed: int = 0):
    oracle = Oracle(GraphSession(model_dir))
    method = case.build()
    method.init(oracle, seed)
    if method.needs_calibration:
        method.calibrate(oracle, BATCHES)
    return oracle, method


@pytest.fixture(scope="module")
def models(tiny_export):
    return {"fp32": tiny_export("llama").dir, "int4": tiny_export("llama", int4=True).dir}


@pytest.fixture(scope="module")
def uninterrupted(models, tmp_path_factory):
    """Lazily computed, cached: the snapshot after RESUME_STEPS uninterrupted steps, per (method, base)."""
    cache: dict[tuple[str, str], dict] = {}

    def get(case: MethodCase, base: str) -> dict[str, np.ndarray]:
        if (case.name, base) not in cache:
            run_dir = tmp_path_factory.mktemp(f"ref-{case.name}-{base}")
            cache[case.name, base] = run_loop(case, models[base], run_dir, RESUME_STEPS)[0]
        return cache[case.name, base]

    return get


# --- (g) coverage --------------------------------------------------------------------------------------------------
def test_every_method_has_a_case():
    missing = sorted(set(METHODS) - set(CASES))
    assert not missing, f"registered methods without a METHOD_CASES row in {__file__}: {missing}"
    unknown = sorted(set(CASES) - set(METHODS))
    assert not unknown, f"METHOD_CASES rows for unregistered methods: {unknown}"


# --- (a) the loss falls ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "base"), BASE_CASES)
def test_loss_falls_on_memorisation(case, base, models):
    batch = BATCHES[0]
    oracle, method = fresh(case, models[base])
    assert oracle.trained.fold == (base == "fp32"), "INT4 bases must train in adapter form"
    before = float(np.mean(oracle.sample_losses(batch)))
    for t in range(150):
        report = method.step(oracle, batch, lm_objective, t)
        assert not report.skipped, f"{case.name} step {t} skipped on a finite loss"
    after = float(np.mean(oracle.sample_losses(batch)))
    assert after < before - 0.25, f"{case.name} on {base}: loss {before:.3f} -> {after:.3f} after 150 steps"
    if base == "int4" and case.name != "zo-act":
        assert oracle.trained.adapters, "an INT4 run must have accumulated adapters"


# --- (b) bit-exact resume ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("case", "base"), BASE_CASES)
def test_resume_is_bit_exact(case, base, models, uninterrupted, tmp_path):
    want = uninterrupted(case, base)
    run_dir = tmp_path / "run"
    first, _, _ = run_loop(case, models[base], run_dir, 4)  # saves at 3 and (final) 4
    assert checkpoint.latest_checkpoint(run_dir).name == checkpoint.checkpoint_name(4)
    seen: list[int] = []
    got, _, _ = run_loop(case, models[base], run_dir, RESUME_STEPS, resume=True, on_step=lambda s, r: seen.append(s))
    assert seen[0] == 5 and seen[-1] == RESUME_STEPS, f"resume ran steps {seen}"
    assert differs(first, got), "the resumed steps changed nothing"
    assert_bit_identical(want, got, f"{case.name}/{base} resumed at 4")
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s), "metrics must read as one uninterrupted run"


# --- (c) a kill during a save --------------------------------------------------------------------------------------
KILLED = 77
_HERE = Path(__file__).resolve().parent


def _die_while_saving(model_dir: str, name: str, run_dir: str, point: str) -> None:
    """Child process body: train RESUME_STEPS steps, dying (os._exit) inside the save of step 2*SAVE_EVERY."""
    target = checkpoint.checkpoint_name(2 * SAVE_EVERY)
    run = Path(run_dir)
    write = checkpoint._write_file

    def dying(path, data) -> None:
        path = Path(path)
        hit = {
            "arrays": path.name == checkpoint.ARRAYS_FILE and target in path.parent.name,
            "meta": path.name == checkpoint.META_FILE and target in path.parent.name,
            "latest": path.name.startswith(f".tmp-{checkpoint.LATEST_FILE}-") and (run / target).is_dir(),
        }[point]
        if hit:  # a torn write: half the bytes reach the disk, then the process is gone
            blob = b"".join(map(bytes, checkpoint._chunks(data)))
            with open(path, "wb") as f:
                f.write(blob[: len(blob) // 2])
                f.flush()
                os.fsync(f.fileno())
            os._exit(KILLED)
        write(path, data)

    checkpoint._write_file = dying
    run_loop(CASES[name], model_dir, run_dir, RESUME_STEPS)
    os._exit(0)


def _kill_cases():
    out = []
    for c in METHOD_CASES:
        for point in ("arrays", "meta", "latest"):
            marks = () if point == "arrays" or c.name == "lozo" else (pytest.mark.slow,)
            out.append(pytest.param(c, point, id=f"{c.name}-{point}", marks=marks))
    return out


@pytest.mark.parametrize(("case", "point"), _kill_cases())
def test_kill_during_save_resumes_bit_exact(case, point, models, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    code = (
        f"import sys; sys.path.insert(0, {str(_HERE)!r}); import test_common; "
        f"test_common._die_while_saving({str(models['fp32'])!r}, {case.name!r}, {str(run_dir)!r}, {point!r})"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == KILLED, f"child did not die in the save (rc {proc.returncode}): {proc.stderr[-2000:]}"
    latest = checkpoint.latest_checkpoint(run_dir)
    assert latest is not None and latest.name == checkpoint.checkpoint_name(SAVE_EVERY), f"latest is {latest}"
    seen: list[int] = []
    got, _, _ = run_loop(case, models["fp32"], run_dir, RESUME_STEPS, resume=True, on_step=lambda s, r: seen.append(s))
    assert seen[0] == SAVE_EVERY + 1, f"expected to resume from step {SAVE_EVERY}, ran {seen}"
    assert_bit_identical(uninterrupted(case, "fp32"), got, f"{case.name} killed while writing {point}")
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"a dead writer's temp files survived the next save: {leftovers}"


# --- (d) seeds ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", METHOD_CASES, ids=str)
def test_same_seed_same_run_other_seed_other_run(case, models, tmp_path):
    a = run_loop(case, models["fp32"], tmp_path / "a", 4, seed=0)[0]
    b = run_loop(case, models["fp32"], tmp_path / "b", 4, seed=0)[0]
    c = run_loop(case, models["fp32"], tmp_path / "c", 4, seed=1)[0]
    assert_bit_identical(a, b, f"{case.name}: two runs with seed 0")
    assert differs(a, c), f"{case.name}: seeds 0 and 1 gave the same run"


# --- (e) state stays small ------------------------------------------------------------------------------------------
def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(np.asarray(v).nbytes for v in arrays.values())


@pytest.mark.parametrize("case", METHOD_CASES, ids=str)
def test_state_stays_small(case, models):
    oracle, method = fresh(case, models["fp32"])
    sizes = []
    for t in range(3):
        method.step(oracle, BATCHES[t], lm_objective, t)
        sizes.append(_nbytes(method.state_dict()))
    assert len(set(sizes)) == 1, f"{case.name}: state grows with steps: {sizes}"
    params = _nbytes(oracle.params)
    if case.name in FULL_SPACE:  # with SGD: nothing but per-tensor step counters
        big = {k: v.shape for k, v in method.state_dict().items() if np.asarray(v).size > 1}
        assert not big, f"{case.name} with sgd must hold no model-sized state, holds {big}"
        assert sizes[0] < 0.01 * params, f"{case.name}: state {sizes[0]} B vs params {params} B"
        return
    # factor-sized: at most 4 float32 arrays of r columns per targeted linear (C, Adam's two moments, A/basis)
    r = method.config.rank
    budget = 4 * 4 * r * sum(s.d_in + s.d_out for s in oracle.manifest.linears)
    assert sizes[0] <= budget, f"{case.name}: state {sizes[0]} B exceeds the factor budget {budget} B"
    assert sizes[0] < 0.5 * params, f"{case.name}: state {sizes[0]} B vs params {params} B"


# --- (f) non-finite losses -------------------------------------------------------------------------------------------
def _poison(oracle: Oracle, monkeypatch) -> None:
    """Every forward from now on reports NaN row losses (the graph still runs, so in-place perturbations happen)."""
    run = oracle.run

    def nan_run(*args, **kwargs):
        out = run(*args, **kwargs)
        out[contract.OUTPUT_ROW_NLL] = np.full_like(out[contract.OUTPUT_ROW_NLL], np.nan)
        return out

    monkeypatch.setattr(oracle, "run", nan_run)


@pytest.mark.parametrize("case", METHOD_CASES, ids=str)
def test_non_finite_loss_skips_update(case, models, monkeypatch):
    oracle, method = fresh(case, models["fp32"])
    method.step(oracle, BATCHES[0], lm_objective, 0)  # non-trivial state (moments, warm bases) first
    before = snapshot(oracle, method)
    _poison(oracle, monkeypatch)
    report = method.step(oracle, BATCHES[1], lm_objective, 1)
    assert report.skipped, f"{case.name}: a NaN loss was not reported as skipped"
    after = snapshot(oracle, method)
    if case.name == "mezo":
        # MeZO perturbs in place (+μz, -2μz, +μz): restored up to float32 round-off, never updated
        for k in before:
            np.testing.assert_allclose(after[k], before[k], rtol=0, atol=1e-6, err_msg=k)
    else:
        assert_bit_identical(before, after, f"{case.name} after a NaN step")


@pytest.mark.parametrize("case", METHOD_CASES, ids=str)
def test_loop_stops_after_max_bad_steps(case, models, monkeypatch, tmp_path):
    oracle = Oracle(GraphSession(models["fp32"]))
    method = case.build()
    initial = {k: v.copy() for k, v in oracle.params.items()}
    _poison(oracle, monkeypatch)
    cfg = LoopConfig(steps=20, save_every=100, max_bad_steps=3)
    with pytest.raises(TrainingStopped, match=r"3 steps in a row had a non-finite loss") as info:
        train(oracle, method, CyclingData(), cfg, tmp_path, calibration=lambda: BATCHES)
    assert "\n" not in str(info.value)
    assert checkpoint.latest_checkpoint(tmp_path).name == checkpoint.checkpoint_name(3)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows if "skipped" in r] == [True] * 3
    for k, v in oracle.params.items():
        np.testing.assert_allclose(v, initial[k], rtol=0, atol=1e-6, err_msg=k)
    # adapter-owning methods (ZO-Act, FZOO) hold zero coefficients from init; the others have no adapter on fp32
    assert not any(np.any(a.q) for a in oracle.trained.adapters.values()), "a skipped step changed an adapter"


# --- (h) MeZO's refusals ---------------------------------------------------------------------------------------------
def test_mezo_refuses_adam_naming_its_memory_cost(models):
    oracle = Oracle(GraphSession(models["fp32"]))
    cls = get_method("mezo")
    schedule = optim.constant(1e-3)
    with pytest.raises(ValueError) as info:
        cls(cls.Config(), optim.adam(schedule), schedule).init(oracle, 0)
    msg = str(info.value)
    assert "\n" not in msg, f"not a one-line error: {msg!r}"
    assert "optimizer state" in msg and ("MB" in msg or "GB" in msg), f"the error must name the memory cost: {msg}"
    cls(cls.Config(), optim.sgd(schedule, momentum=0.9), schedule).init(oracle, 0)  # 1x the model: allowed


def test_mezo_on_int4_moves_only_the_norms_it_is_told_to(models):
    """The linear weights of an INT4 base are quantized initializers: MeZO refuses to pretend it trains them
    (--kinds all), and with --kinds norm the loss falls while only the float norms' gains move."""
    oracle = Oracle(GraphSession(models["int4"]))
    with pytest.raises(ValueError, match="int4 base.*--kinds norm") as info:
        CASES["mezo"].build().init(oracle, 0)
    assert "\n" not in str(info.value)
    method = MethodCase("mezo", {"mu": 1e-3, "kinds": "norm"}, "sgd", 2e-2).build()
    method.init(oracle, 0)
    before_params = {k: v.copy() for k, v in oracle.params.items()}
    batch = BATCHES[0]
    before = float(np.mean(oracle.sample_losses(batch)))
    for t in range(100):
        assert not method.step(oracle, batch, lm_objective, t).skipped
    after = float(np.mean(oracle.sample_losses(batch)))
    assert after < before - 0.05, f"mezo on the INT4 norms: loss {before:.3f} -> {after:.3f}"
    moved = {k for k in oracle.params if not np.array_equal(oracle.params[k], before_params[k])}
    kinds = {p.name: p.kind for p in oracle.manifest.params}
    assert moved and {kinds[k] for k in moved} == {"norm"}, moved


def test_mezo_schedule_runs_over_steps_not_queries(models):
    """MeZO steps its optimizer once per query, and the schedule's clock is that update count: ``build_method``
    stretches it by the queries, so a linear decay over 8 steps of 4 queries still moves θ in step 7 (before, it
    reached 0 after 8 updates, at step 2, and a cosine head run stood still from step 63 of 2000)."""
    from zo_edge.config import TrainConfig
    from zo_edge.train import build_method

    flat = {"model": str(models["fp32"]), "method": "mezo", "queries": 4, "steps": 8, "mu": 1e-3}
    method = build_method(TrainConfig.from_flat({**flat, "schedule": "linear", "lr": 1e-3}))
    oracle = Oracle(GraphSession(models["fp32"]))
    method.init(oracle, 0)
    moved = []
    for t in range(8):
        before = {k: v.copy() for k, v in oracle.params.items()}
        method.step(oracle, BATCHES[t % len(BATCHES)], lm_objective, t)
        moved.append(max(float(np.abs(oracle.params[k] - before[k]).max()) for k in before))
    # lr at step t is 1e-3 (1 - t/8): an update moves some weight by >= 2e-4 here, the ±mu round trips' rounding
    # by <= 5e-7 (what the steps after the schedule's end moved before the fix)
    assert min(moved[:7]) > 1e-5, moved


def test_zoop_cycle_schedule_ends_when_the_run_does(models):
    """Zoop's "cycle" updates one block per step and each layer counts its own updates, so the schedule spans what
    a layer's count reaches (``schedule_steps``: steps / n_blocks). A linear decay to 0 over 8 steps moves every
    block in steps 0-7 and nothing after; before, each layer's count reached 4 of 8 and steps 8-9 still moved by
    half the learning rate."""
    from runtime.contract import Manifest
    from runtime.layers import block_of
    from zo_edge.config import TrainConfig
    from zo_edge.train import build_method

    manifest = Manifest.load(models["fp32"])
    n_blocks = len({block_of(s.name) for s in manifest.linears})
    assert n_blocks >= 2
    flat = {"model": str(models["fp32"]), "method": "zoop", "select": "cycle", "steps": 4 * n_blocks, "mu": 1e-3}
    cfg = TrainConfig.from_flat({**flat, "schedule": "linear", "lr": 0.1})
    assert get_method("zoop").schedule_steps(cfg.method_config, manifest, cfg.steps) == 4
    method = build_method(cfg)
    oracle = Oracle(GraphSession(models["fp32"]))
    method.init(oracle, 0)
    moved = []
    for t in range(4 * n_blocks + n_blocks):  # the run, then one more cycle past its end
        before = {k: v.copy() for k, v in oracle.params.items()}
        method.step(oracle, BATCHES[t % len(BATCHES)], lm_objective, t)
        moved.append(max(float(np.abs(oracle.params[k] - before[k]).max()) for k in before))
    run, after = moved[: 4 * n_blocks], moved[4 * n_blocks :]
    assert min(run) > 1e-6 and max(after) == 0.0, (run, after)
