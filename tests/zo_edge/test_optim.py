"""Tests for zo_edge/optim.py against an independent reference: torch.optim and torch's lr schedulers.

Also: streamed (subset-key) updates equal full updates bit for bit, state round trips through flat arrays (and a
real checkpoint) bit-exactly, and model-sized state is refused with a one-line error.

Run with ``python -m pytest tests/zo_edge/test_optim.py -q``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from zo_edge import optim

torch = pytest.importorskip("torch")

SHAPES = {"a.weight": (17, 9), "b.bias": (33,), "c.weight": (4, 5, 6), "big": (300, 301)}  # big > one scratch chunk
STEPS = 20


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _grads(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + step)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _run_ours(opt: optim.Transform, steps: int = STEPS) -> dict[str, np.ndarray]:
    params = _params()
    state = opt.init(params)
    for t in range(steps):
        deltas, state = opt.update(_grads(t), state, params)
        optim.apply_updates(params, deltas)
    return params


def _run_torch(make_opt, make_sched=None, steps: int = STEPS) -> dict[str, np.ndarray]:
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in _params().items()}
    opt = make_opt(list(tparams.values()))
    sched = make_sched(opt) if make_sched else None
    for t in range(steps):
        for k, g in _grads(t).items():
            tparams[k].grad = torch.from_numpy(g.copy())
        opt.step()
        if sched is not None:
            sched.step()
    return {k: v.detach().numpy() for k, v in tparams.items()}


def _assert_close(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol: float = 1e-6) -> None:
    for k in ref:
        assert ours[k].dtype == np.float32, k
        err = np.linalg.norm((ours[k] - ref[k]).astype(np.float64)) / np.linalg.norm(ref[k].astype(np.float64))
        assert err < rtol, f"{k}: relative error {err:.2e} vs torch"
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


# --- against torch.optim ------------------------------------------------------------------------------------------

TORCH_CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum_wd": (
        lambda: optim.sgd(0.05, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    "adam": (lambda: optim.adam(1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam_custom": (
        lambda: optim.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
        lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    ),
    "adamw": (
        lambda: optim.adam(1e-2, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_matches_torch_optim(case):
    ours, ref = TORCH_CASES[case]
    _assert_close(_run_ours(ours()), _run_torch(ref))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_scheduled_lr_matches_torch(name):
    sched = optim.cosine(0.05, total_steps=STEPS, final_fraction=0.1)
    if name == "sgd":
        ours = optim.sgd(sched, momentum=0.9, weight_decay=0.01)
        ref = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)
    else:
        ours = optim.adam(sched, weight_decay=0.1)
        ref = lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)
    make_sched = lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.005)
    _assert_close(_run_ours(ours), _run_torch(ref, make_sched))


def test_make_optimizer():
    _assert_close(
        _run_ours(optim.make_optimizer("adamw", 1e-2, weight_decay=0.1)),
        _run_ours(optim.adam(1e-2, 0.9, 0.999, 1e-8, 0.1)),
        1e-12,
    )
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; choose one of"):
        optim.make_optimizer("lion", 1e-3)


# --- schedules ----------------------------------------------------------------------------------------------------


def test_schedules_hand_computed():
    lin = optim.linear(1.0, total_steps=10, warmup_steps=2, final_fraction=0.2)
    assert [lin(t) for t in (0, 1, 2, 6, 10, 50)] == pytest.approx([0.5, 1.0, 1.0, 1 - 0.8 * 0.5, 0.2, 0.2])
    cos = optim.cosine(2.0, total_steps=12, warmup_steps=4)
    assert [cos(t) for t in (0, 3, 4, 8, 12, 13)] == pytest.approx([0.5, 2.0, 2.0, 1.0, 0.0, 0.0], abs=1e-12)
    assert cos(6) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    con = optim.constant(0.3, warmup_steps=3)
    assert [con(t) for t in (0, 1, 2, 3, 100)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert optim.constant(0.3)(0) == 0.3


def _torch_lrs(make_sched, steps: int, lr: float) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_sched(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return out


def test_schedules_match_torch_schedulers():
    lr, total, w = 0.1, 30, 5
    lrs = _torch_lrs(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.25, total_iters=total), total + 5, lr)
    np.testing.assert_allclose([optim.linear(lr, total, final_fraction=0.25)(t) for t in range(total + 5)], lrs)
    lrs = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=0.01), total + 1, lr)
    np.testing.assert_allclose([optim.cosine(lr, total, final_fraction=0.1)(t) for t in range(total + 1)], lrs)

    # Warmup: LinearLR from 1/w over w-1 steps reaches lr at step w-1, i.e. lr·(t+1)/w; then the decay over T-w.
    def warm_then(decay):
        def make(o):
            warm = torch.optim.lr_scheduler.LinearLR(o, 1.0 / w, 1.0, total_iters=w - 1)
            return torch.optim.lr_scheduler.SequentialLR(o, [warm, decay(o)], milestones=[w])

        return make

    lrs = _torch_lrs(warm_then(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - w)), total, lr)
    np.testing.assert_allclose([optim.cosine(lr, total, warmup_steps=w)(t) for t in range(total)], lrs, atol=1e-12)
    lrs = _torch_lrs(
        warm_then(lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=total - w)), total, lr
    )
    np.testing.assert_allclose([optim.linear(lr, total, warmup_steps=w)(t) for t in range(total)], lrs, atol=1e-12)


def test_make_schedule():
    assert optim.make_schedule("cosine", 1.0, 10, 2)(5) == optim.cosine(1.0, 10, 2)(5)
    assert optim.make_schedule("linear", 1.0, 10)(5) == pytest.approx(0.5)
    assert optim.make_schedule("constant", 1.0, 10, 2)(0) == 0.5
    with pytest.raises(ValueError, match=r"^unknown schedule 'step'; choose one of: constant, cosine, linear$"):
        optim.make_schedule("step", 1.0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_schedule("linear", 1.0, 10, 11)


# --- subset (streamed) updates --------------------------------------------------------------------------------------

ALL_OPTS = {
    "sgd": lambda: optim.sgd(optim.linear(0.1, STEPS, 3)),
    "sgd_momentum": lambda: optim.sgd(0.05, momentum=0.9, weight_decay=0.01),
    "adamw": lambda: optim.adam(optim.cosine(1e-2, STEPS, 2), weight_decay=0.1),
    "chain_adam": lambda: optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(0.01)),
}


@pytest.mark.parametrize("case", sorted(ALL_OPTS))
def test_streamed_updates_equal_full_updates(case):
    full = _run_ours(ALL_OPTS[case]())
    opt = ALL_OPTS[case]()
    params = _params()
    state = opt.init(params)
    for t in range(STEPS):
        grads = _grads(t)
        order = sorted(grads) if t % 2 else sorted(grads, reverse=True)
        for k in order:  # one tensor at a time, as MeZO streams
            deltas, state = opt.update({k: grads[k]}, state, params)
            assert list(deltas) == [k]
            optim.apply_updates(params, deltas)
    for k in full:
        assert params[k].tobytes() == full[k].tobytes(), f"{case}: streamed != full for {k}"


@pytest.mark.parametrize("case", sorted(ALL_OPTS))
def test_slab_updates_equal_full_updates(case):
    """Each tensor updated in slabs of its flattened elements (optim.state_slice, as MeZO streams a table-sized z):
    the same bits as whole-tensor updates, counts and schedules included; the slabs are not chunk-aligned."""
    full = _run_ours(ALL_OPTS[case]())
    opt = ALL_OPTS[case]()
    params = _params()
    state = opt.init(params)
    for t in range(STEPS):
        for k, g in _grads(t).items():
            flat_g, flat_p = g.reshape(-1), params[k].reshape(-1)
            cuts = list(range(0, flat_g.size, 4000 if flat_g.size > 4000 else 7)) + [flat_g.size]
            for a, b in zip(cuts, cuts[1:], strict=False):
                part = slice(a, b)
                sub = optim.state_slice(state, k, part, advance=b == flat_g.size)
                deltas, _ = opt.update({k: flat_g[part].copy()}, sub, {k: flat_p[part]})
                flat_p[part] += deltas[k]
    for k in full:
        assert params[k].tobytes() == full[k].tobytes(), f"{case}: slab updates != full for {k}"


def test_state_slice_of_an_unknown_name_is_refused():
    opt = optim.adam(1e-2)
    with pytest.raises(KeyError, match="not a name init"):
        optim.state_slice(opt.init(_params()), "nope", slice(0, 3), advance=True)


def test_sometimes_skipped_key_counts_its_own_steps():
    # A name updated only on even steps behaves like a separate Adam that sees only those gradients (torch does the
    # same: per-parameter state["step"]).
    opt = optim.adam(1e-2)
    params = _params()
    state = opt.init(params)
    solo = optim.adam(1e-2)
    solo_params = {"a.weight": params["a.weight"].copy()}
    solo_state = solo.init(solo_params)
    for t in range(STEPS):
        g = _grads(t)
        keys = list(SHAPES) if t % 2 == 0 else [k for k in SHAPES if k != "a.weight"]
        deltas, state = opt.update({k: g[k] for k in keys}, state, params)
        optim.apply_updates(params, deltas)
        if t % 2 == 0:
            # _grads(t) again: update() consumed g's arrays as work buffers
            d, solo_state = solo.update({"a.weight": _grads(t)["a.weight"]}, solo_state, solo_params)
            optim.apply_updates(solo_params, d)
    assert params["a.weight"].tobytes() == solo_params["a.weight"].tobytes()
    assert int(state[0].count["a.weight"]) == STEPS // 2 and int(state[0].count["b.bias"]) == STEPS


def test_unknown_key_is_a_one_line_error():
    opt = optim.adam(1e-3)
    state = opt.init({"x": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match="scale_by_adam: update for 'y'"):
        opt.update({"y": np.zeros(3, np.float32)}, state, None)


def test_non_float32_or_readonly_updates_are_copied_not_mutated():
    opt = optim.sgd(0.5)
    g = np.ones(4, np.float64)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    deltas, _ = opt.update({"a": g, "b": ro}, opt.init({"a": g, "b": ro}), None)
    assert deltas["a"].dtype == np.float32 and np.all(deltas["a"] == -0.5) and np.all(g == 1.0)
    assert np.all(deltas["b"] == -0.5) and np.all(ro == 1.0)
    w = np.ones(4, np.float32)
    deltas, _ = opt.update({"w": w}, opt.init({"w": w}), None)
    assert deltas["w"] is w, "a writable float32 update is used in place"


# --- state: arrays round trip, budget -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(ALL_OPTS))
def test_state_round_trip_and_bit_exact_resume(case, tmp_path):
    from runtime import checkpoint

    full = _run_ours(ALL_OPTS[case]())
    opt = ALL_OPTS[case]()
    params = _params()
    state = opt.init(params)
    for t in range(STEPS // 2):
        deltas, state = opt.update(_grads(t), state, params)
        optim.apply_updates(params, deltas)
    arrays = optim.state_to_arrays(state, prefix="opt/")
    assert all(k.startswith("opt/") for k in arrays)
    checkpoint.save_checkpoint(tmp_path, STEPS // 2, {**{f"p/{k}": v for k, v in params.items()}, **arrays}, {})
    del state, params
    # --- a fresh process would do this:
    loaded, _ = checkpoint.load_checkpoint(tmp_path)
    params = {k[2:]: v for k, v in loaded.items() if k.startswith("p/")}
    opt = ALL_OPTS[case]()
    state = optim.state_from_arrays(opt.init(params), loaded, prefix="opt/")
    for k, v in optim.state_to_arrays(state, prefix="opt/").items():
        assert v.tobytes() == arrays[k].tobytes() and v.dtype == arrays[k].dtype, k
    for t in range(STEPS // 2, STEPS):
        deltas, state = opt.update(_grads(t), state, params)
        optim.apply_updates(params, deltas)
    for k in full:
        assert params[k].tobytes() == full[k].tobytes(), f"{case}: resumed run differs for {k}"


def test_state_flatten_paths_and_errors():
    opt = optim.adam(optim.constant(1e-3), weight_decay=0.1)
    params = {"w": np.zeros((2, 3), np.float32)}
    state = opt.init(params)
    arrays = optim.state_to_arrays(state)
    assert sorted(arrays) == ["0/count/w", "0/mu/w", "0/nu/w", "2/count/w"]
    assert arrays["0/count/w"].dtype == np.int64 and arrays["0/count/w"].shape == ()
    mixed = {"n": 3, "x": 1.5, "flag": True, "t": (np.ones(2, np.float32), None)}
    back = optim.state_from_arrays(mixed, optim.state_to_arrays(mixed))
    assert back["n"] == 3 and back["x"] == 1.5 and back["flag"] is True and back["t"][1] is None
    bad = dict(arrays, **{"0/mu/w": np.zeros((3, 2), np.float32)})
    with pytest.raises(ValueError, match="0/mu/w"):
        optim.state_from_arrays(state, bad)
    with pytest.raises(KeyError, match="0/nu/w"):
        optim.state_from_arrays(state, {k: v for k, v in arrays.items() if k != "0/nu/w"})


def test_state_nbytes_and_budget():
    params = _params()
    n = sum(p.size for p in params.values())
    assert optim.state_nbytes(optim.sgd(0.1).init(params)) == 0
    assert optim.state_nbytes(optim.sgd(0.1, momentum=0.9).init(params)) == 4 * n
    assert optim.state_nbytes(optim.adam(0.1).init(params)) == 8 * n + 8 * len(params)  # + per-key int64 counts
    assert optim.check_state_budget("adam", 1000, 8, 10_000) == 8000
    with pytest.raises(ValueError) as e:
        optim.check_state_budget("adam", 135_000_000, optim.STATE_BYTES_PER_PARAM["adam"], 512 * 2**20)
    msg = str(e.value)
    assert "\n" not in msg and "1.01 GB" in msg and "512.0 MB" in msg and "sgd" in msg and "low-rank" in msg
