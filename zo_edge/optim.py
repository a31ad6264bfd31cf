"""Optax-style optimizers on dicts of numpy float32 arrays: the method owns the direction, the optimizer owns the step.

A ``Transform`` is a pair of functions, as optax's ``GradientTransformation`` (optax ``_src/base.py``)::

    state = opt.init(params)                                  # params: {name: float32 array}
    deltas, state = opt.update(grads, state, params)          # grads may hold only SOME of the names
    apply_updates(params, deltas)                             # params[k] += deltas[k], in place

The final ``deltas`` are what to ADD to the parameters (the learning rate is applied with a minus sign, like optax).
Building blocks (``add_decayed_weights``, ``trace``, ``scale_by_adam``,
``scale_by_learning_rate``) compose with ``chain``; ``sgd`` and ``adam`` are the user-facing aliases, and
``make_optimizer`` / ``make_schedule`` build them from config names.

Three choices differ from optax, for on-device zeroth-order training:

* **Subset updates.** Full-parameter ZO methods (MeZO) stream the update one tensor at a time, so that no
  model-sized gradient copy ever exists: ``update({"model.layers.3.mlp.up_proj": g}, state, params)``. Every
  stateful block therefore keeps a **per-key step counter** (a 0-d int64 array per name) instead of optax's single
  ``count``. Why per key rather than a global step: (1) with streaming, ``update`` runs once per tensor per step, so a
  global counter would need a separate "step boundary" signal that every caller must remember; per-key counters
  need none and cannot drift; (2) it is exactly torch's per-parameter ``state["step"]``, so Adam's bias correction
  is right for a tensor that is updated only on some steps (it counts the moments that tensor has accumulated).
  Calling ``update`` with all keys at once, or key by key in any order, gives bit-identical results. A consequence
  to know: a key that is skipped on a step does not advance its learning-rate schedule either.
* **In place.** Moments are updated in place (``np.multiply(m, b1, out=m)``), and the arrays in ``updates`` are
  used as work buffers: ``update`` overwrites them and returns them as the deltas (arrays that are not writable
  C-contiguous float32 are first copied). Pass a copy if you still need the gradient. The returned state is the
  same object, mutated; the functional signature is kept so transforms compose.
* **Slab updates.** Every transform here is elementwise, so one tensor can also be updated slab by slab
  (``state_slice``): MeZO draws a 136M-value embedding's z 16 MiB at a time instead of holding a table-sized buffer,
  with the same bits as one whole-tensor update.
* **Flat state.** States are NamedTuples, tuples and dicts of numpy arrays and ints. ``state_to_arrays`` flattens
  one to ``{"1/mu/model.layers.0.q_proj": array, ...}`` for ``runtime.checkpoint``, and ``state_from_arrays``
  restores it into a template from ``init``, bit-exactly.

``state_nbytes`` and ``check_state_budget`` let callers refuse optimizers whose state would be model-sized
(Adam over all weights of a model costs 8 bytes per parameter: 2x the fp32 model itself).

Run the tests with ``python -m pytest tests/zo_edge/test_optim.py -q``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from runtime.errors import ZoEdgeError

__all__ = [
    "SCHEDULES",
    "STATE_BYTES_PER_PARAM",
    "EmptyState",
    "OptimizerError",
    "ScaleByAdamState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "Transform",
    "adam",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "check_state_budget",
    "constant",
    "cosine",
    "linear",
    "make_optimizer",
    "make_schedule",
    "scale_by_adam",
    "scale_by_learning_rate",
    "sgd",
    "state_from_arrays",
    "state_nbytes",
    "state_slice",
    "state_to_arrays",
    "trace",
]


class OptimizerError(ZoEdgeError, ValueError):
    """An optimizer or schedule setting the user chose is invalid or unaffordable (one line, names the fix)."""


Params = dict[str, np.ndarray]
Updates = dict[str, np.ndarray]
OptState = Any
Schedule = Callable[[int], float]

_CHUNK = 1 << 16  # elements per scratch chunk (256 KiB of float32): bounded temporaries, cache-sized


class Transform(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``.

    ``update`` accepts ``updates`` holding any subset of the names given to ``init``.
    """

    init: Callable[[Params], OptState]
    update: Callable[..., tuple[Updates, OptState]]


class EmptyState(NamedTuple):
    """State of a stateless transform."""


class TraceState(NamedTuple):
    """Momentum buffers, one per name."""

    trace: dict[str, np.ndarray]


class ScaleByAdamState(NamedTuple):
    """Adam's per-name step counts (0-d int64) and first/second moments (float32)."""

    count: dict[str, np.ndarray]
    mu: dict[str, np.ndarray]
    nu: dict[str, np.ndarray]


class ScaleByScheduleState(NamedTuple):
    """Per-name step counts (0-d int64) at which the learning-rate schedule is evaluated."""

    count: dict[str, np.ndarray]


# --- helpers ------------------------------------------------------------------------------------------------------


def _work(updates: Updates) -> Updates:
    """A new dict whose arrays are writable C-contiguous float32 (the given ones when they already are)."""
    out = {}
    for k, g in updates.items():
        if not (isinstance(g, np.ndarray) and g.dtype == np.float32 and g.flags.writeable and g.flags.c_contiguous):
            g = np.array(g, dtype=np.float32, order="C")
        out[k] = g
    return out


def _check_keys(updates: Updates, known: dict, who: str) -> None:
    for k in updates:
        if k not in known:
            raise KeyError(f"{who}: update for {k!r}, a name init() was not given ({len(known)} known names)")


def _zeros_like(params: Params) -> dict[str, np.ndarray]:
    return {k: np.zeros(np.shape(p), np.float32) for k, p in params.items()}


def _counts(params: Params) -> dict[str, np.ndarray]:
    return {k: np.zeros((), np.int64) for k in params}


def _chunks(n: int):
    for i in range(0, n, _CHUNK):
        yield slice(i, min(i + _CHUNK, n))


def _axpy(alpha: float, x: np.ndarray, y: np.ndarray) -> None:
    """y += alpha * x in float32, in place, with at most a chunk-sized temporary."""
    if x.size <= _CHUNK or not (x.flags.c_contiguous and y.flags.c_contiguous and x.dtype == np.float32):
        y += np.float32(alpha) * np.asarray(x, np.float32)
        return
    xf, yf = x.reshape(-1), y.reshape(-1)
    tmp = np.empty(_CHUNK, np.float32)
    for s in _chunks(xf.size):
        t = tmp[: s.stop - s.start]
        np.multiply(xf[s], np.float32(alpha), out=t)
        yf[s] += t


def _add_scaled_square(alpha: float, x: np.ndarray, y: np.ndarray) -> None:
    """y += alpha * x * x in float32, in place, with at most a chunk-sized temporary (x, y C-contiguous)."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    tmp = np.empty(min(_CHUNK, xf.size), np.float32)
    for s in _chunks(xf.size):
        t = tmp[: s.stop - s.start]
        np.multiply(xf[s], xf[s], out=t)
        t *= np.float32(alpha)
        yf[s] += t


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params[k] += updates[k]`` in place for every name in ``updates`` (a subset is fine). Returns ``params``."""
    for k, u in updates.items():
        p = params[k]
        assert p.shape == u.shape, f"apply_updates: {k} has shape {p.shape}, update {u.shape}"
        p += u
    return params


# --- building blocks ----------------------------------------------------------------------------------------------


def chain(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order; the state is the tuple of their states (optax ``chain``)."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(updates: Updates, state: tuple, params: Params | None = None) -> tuple[Updates, tuple]:
        assert len(state) == len(transforms), f"chain: state has {len(state)} parts for {len(transforms)} transforms"
        new_state = []
        for t, s in zip(transforms, state, strict=True):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return Transform(init, update)


def add_decayed_weights(weight_decay: float) -> Transform:
    """g ← g + λ·θ. Placed before the learning-rate scaling this is decay scaled by the lr.

    In ``sgd`` it precedes the momentum (coupled L2, as ``torch.optim.SGD``); in ``adam`` it follows the Adam scaling
    (decoupled, Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization", i.e. AdamW). Needs ``params``.
    """
    assert weight_decay >= 0.0, f"weight_decay must be >= 0, got {weight_decay}"

    def init(params: Params) -> EmptyState:
        return EmptyState()

    def update(updates: Updates, state: EmptyState, params: Params | None = None) -> tuple[Updates, EmptyState]:
        updates = _work(updates)
        if weight_decay == 0.0:
            return updates, state
        assert params is not None, "add_decayed_weights: update() needs params"
        for k, g in updates.items():
            _axpy(weight_decay, params[k], g)
        return updates, state

    return Transform(init, update)


def trace(momentum: float) -> Transform:
    """Heavy-ball momentum: m ← μ·m + g, output m.

    This is ``torch.optim.SGD``'s buffer with dampening 0 (Polyak, 1964; Sutskever et al., 2013, "On the importance
    of initialization and momentum in deep learning"). State: one float32 buffer per name, updated in place.
    """
    assert 0.0 <= momentum < 1.0, f"momentum must be in [0, 1), got {momentum}"

    def init(params: Params) -> TraceState:
        return TraceState(trace=_zeros_like(params))

    def update(updates: Updates, state: TraceState, params: Params | None = None) -> tuple[Updates, TraceState]:
        _check_keys(updates, state.trace, "trace")
        updates = _work(updates)
        for k, g in updates.items():
            m = state.trace[k]
            np.multiply(m, np.float32(momentum), out=m)
            m += g
            np.copyto(g, m)
        return updates, state

    return Transform(init, update)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam's direction (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", Alg. 1), per name::

        t ← t + 1;  m ← β1·m + (1-β1)·g;  v ← β2·v + (1-β2)·g²
        out = (m / (1-β1ᵗ)) / (√v / √(1-β2ᵗ) + ε)

    (ε outside the square root, as in torch and optax). t is the name's own step count, see the module docstring.
    Defaults are the paper's: β1 = 0.9, β2 = 0.999, ε = 1e-8. State: 8 bytes per parameter (m and v in float32).
    """
    assert 0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0, f"adam betas must be in [0, 1), got {b1}, {b2}"
    assert eps >= 0.0, f"adam eps must be >= 0, got {eps}"

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(count=_counts(params), mu=_zeros_like(params), nu=_zeros_like(params))

    def update(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        _check_keys(updates, state.mu, "scale_by_adam")
        updates = _work(updates)
        for k, g in updates.items():
            count, mu, nu = state.count[k], state.mu[k], state.nu[k]
            count += 1
            t = int(count)
            np.multiply(mu, np.float32(b1), out=mu)
            _axpy(1.0 - b1, g, mu)
            np.multiply(nu, np.float32(b2), out=nu)
            _add_scaled_square(1.0 - b2, g, nu)
            bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
            np.sqrt(nu, out=g)  # g is consumed: from here on it holds the denominator, then the output
            np.divide(g, np.float32(math.sqrt(bc2)), out=g)
            g += np.float32(eps)
            np.divide(mu, g, out=g)
            np.divide(g, np.float32(bc1), out=g)
        return updates, state

    return Transform(init, update)


def scale_by_learning_rate(learning_rate: float | Schedule, *, flip_sign: bool = True) -> Transform:
    """g ← -η(t)·g (``flip_sign=False``: +η(t)·g), so the result is the delta to add to the parameters.

    ``learning_rate`` is a float or a schedule ``step -> lr``; a schedule is evaluated at each name's own step count
    (0 on its first update, then incremented), so the first update uses ``schedule(0)`` as torch's schedulers do.
    """
    sign = -1.0 if flip_sign else 1.0

    if not callable(learning_rate):
        lr = float(learning_rate)

        def init_c(params: Params) -> EmptyState:
            return EmptyState()

        def update_c(updates: Updates, state: EmptyState, params: Params | None = None) -> tuple[Updates, EmptyState]:
            updates = _work(updates)
            for g in updates.values():
                np.multiply(g, np.float32(sign * lr), out=g)
            return updates, state

        return Transform(init_c, update_c)

    schedule = learning_rate

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=_counts(params))

    def update(
        updates: Updates, state: ScaleByScheduleState, params: Params | None = None
    ) -> tuple[Updates, ScaleByScheduleState]:
        _check_keys(updates, state.count, "scale_by_learning_rate")
        updates = _work(updates)
        for k, g in updates.items():
            count = state.count[k]
            np.multiply(g, np.float32(sign * schedule(int(count))), out=g)
            count += 1
        return updates, state

    return Transform(init, update)


# --- aliases ------------------------------------------------------------------------------------------------------


def sgd(learning_rate: float | Schedule, momentum: float = 0.0, weight_decay: float = 0.0) -> Transform:
    """SGD with optional heavy-ball momentum and coupled L2 decay: ``torch.optim.SGD`` (dampening 0)::

        g ← g + λ·θ;  m ← μ·m + g;  Δθ = -η(t)·m

    Stateless for ``momentum=0`` (the ZO default: MeZO uses plain SGD, Malladi et al., 2023); 4 bytes per parameter
    with momentum.
    """
    parts = []
    if weight_decay:
        parts.append(add_decayed_weights(weight_decay))
    if momentum:
        parts.append(trace(momentum))
    parts.append(scale_by_learning_rate(learning_rate))
    return chain(*parts)


def adam(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Transform:
    """Adam with decoupled weight decay, i.e. AdamW (Loshchilov & Hutter, 2019) when ``weight_decay > 0``::

        Δθ = -η(t)·( m̂ / (√v̂ + ε) + λ·θ )

    This is ``torch.optim.AdamW`` (and ``torch.optim.Adam`` when λ = 0), and optax's ``adamw``: the decay is scaled
    by the scheduled lr but not by Adam's preconditioner. Paper defaults β1 = 0.9, β2 = 0.999, ε = 1e-8 (Kingma &
    Ba, 2015). 8 bytes of state per parameter: use it on low-rank coordinates, not on full weights (see
    ``check_state_budget``).
    """
    parts = [scale_by_adam(b1=b1, b2=b2, eps=eps)]
    if weight_decay:
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_learning_rate(learning_rate))
    return chain(*parts)


STATE_BYTES_PER_PARAM = {"sgd": 0, "momentum": 4, "adam": 8}
"""Optimizer-state bytes per trainable value (float32 buffers): sgd none, momentum one buffer, adam two moments."""


def make_optimizer(
    name: str,
    learning_rate: float | Schedule,
    *,
    momentum: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Transform:
    """``sgd`` (with ``momentum``) or ``adam``/``adamw`` (both decoupled decay) by config name."""
    if name == "sgd":
        return sgd(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        return adam(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    raise OptimizerError(f"unknown optimizer {name!r}; choose one of: adam, adamw, sgd")


# --- schedules ----------------------------------------------------------------------------------------------------


def _check_schedule(lr: float, total_steps: int, warmup_steps: int, final_fraction: float) -> None:
    if not (math.isfinite(lr) and lr >= 0):
        raise OptimizerError(f"learning rate must be finite and >= 0, got {lr}")
    if total_steps < 1:
        raise OptimizerError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise OptimizerError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if not 0.0 <= final_fraction <= 1.0:
        raise OptimizerError(f"final_fraction must be in [0, 1], got {final_fraction}")


def _progress(step: int, total_steps: int, warmup_steps: int) -> float:
    """Fraction of the decay phase done at ``step``: 0 at ``warmup_steps``, 1 at (and after) ``total_steps``."""
    return min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def constant(lr: float, warmup_steps: int = 0) -> Schedule:
    """η(t) = lr, after an optional linear warmup η(t) = lr·(t+1)/w for t < w."""
    _check_schedule(lr, max(1, warmup_steps), warmup_steps, 0.0)

    def schedule(step: int) -> float:
        return lr * (step + 1) / warmup_steps if step < warmup_steps else lr

    return schedule


def linear(lr: float, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> Schedule:
    """Linear warmup then linear decay to ``final_fraction·lr`` at ``total_steps`` (held after)::

        η(t) = lr·(t+1)/w                     for t < w   (never a zero-lr step: each ZO step costs forwards)
        η(t) = lr·(1 - (1-f)·p),  p = min(1, (t-w)/(T-w))   otherwise

    With w = 0 this is ``torch.optim.lr_scheduler.LinearLR(start_factor=1, end_factor=f, total_iters=T)``.
    """
    _check_schedule(lr, total_steps, warmup_steps, final_fraction)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        return lr * (1.0 - (1.0 - final_fraction) * _progress(step, total_steps, warmup_steps))

    return schedule


def cosine(lr: float, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> Schedule:
    """Linear warmup then cosine decay to ``final_fraction·lr`` (Loshchilov & Hutter, 2017, "SGDR")::

        η(t) = lr·(t+1)/w                                  for t < w
        η(t) = lr·(f + (1-f)·(1 + cos(π·p))/2),  p as in ``linear``   otherwise

    With w = 0 this is ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=T, eta_min=f·lr)`` for t <= T.
    """
    _check_schedule(lr, total_steps, warmup_steps, final_fraction)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        p = _progress(step, total_steps, warmup_steps)
        return lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * p)))

    return schedule


SCHEDULES = {"constant": constant, "cosine": cosine, "linear": linear}


def make_schedule(
    name: str, lr: float, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0
) -> Schedule:
    """The schedule ``name`` (constant, cosine, linear); ``constant`` ignores ``total_steps``/``final_fraction``."""
    if name not in SCHEDULES:
        raise OptimizerError(f"unknown schedule {name!r}; choose one of: {', '.join(sorted(SCHEDULES))}")
    if name == "constant":
        _check_schedule(lr, total_steps, warmup_steps, final_fraction)
        return constant(lr, warmup_steps=warmup_steps)
    return SCHEDULES[name](lr, total_steps, warmup_steps=warmup_steps, final_fraction=final_fraction)


# --- state: flatten, restore, size --------------------------------------------------------------------------------


def _flatten(node: Any, path: tuple[str, ...], out: dict[str, np.ndarray], prefix: str) -> None:
    if node is None:
        return
    if isinstance(node, np.ndarray):
        key = prefix + "/".join(path)
        if key in out:
            raise ValueError(f"optimizer state path {key!r} is ambiguous (a name contains '/')")
        out[key] = node
    elif isinstance(node, bool | np.bool_):
        _flatten(np.array(node, np.bool_), path, out, prefix)
    elif isinstance(node, int | np.integer):
        _flatten(np.array(node, np.int64), path, out, prefix)
    elif isinstance(node, float | np.floating):
        _flatten(np.array(node, np.float64), path, out, prefix)
    elif isinstance(node, tuple) and hasattr(node, "_fields"):
        for f in node._fields:
            _flatten(getattr(node, f), (*path, f), out, prefix)
    elif isinstance(node, tuple | list):
        for i, v in enumerate(node):
            _flatten(v, (*path, str(i)), out, prefix)
    elif isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, (*path, str(k)), out, prefix)
    else:
        raise TypeError(f"optimizer state leaf at {'/'.join(path)!r} is a {type(node).__name__}, not array/int/float")


def state_to_arrays(state: OptState, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten ``state`` to ``{prefix + "0/mu/<name>": array, ...}`` (no copies; ints become 0-d int64 arrays).

    Paths join NamedTuple field names, tuple indices and dict keys with ``/``. Feed the result to
    ``runtime.checkpoint.save_checkpoint`` (e.g. with ``prefix="opt/"`` next to the parameters).
    """
    out: dict[str, np.ndarray] = {}
    _flatten(state, (), out, prefix)
    return out


def _restore(node: Any, path: tuple[str, ...], arrays: dict[str, np.ndarray], prefix: str) -> Any:
    if node is None:
        return None
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*(_restore(getattr(node, f), (*path, f), arrays, prefix) for f in node._fields))
    if isinstance(node, tuple | list):
        return type(node)(_restore(v, (*path, str(i)), arrays, prefix) for i, v in enumerate(node))
    if isinstance(node, dict):
        return {k: _restore(v, (*path, str(k)), arrays, prefix) for k, v in node.items()}
    key = prefix + "/".join(path)
    if key not in arrays:
        raise KeyError(f"optimizer state {key!r} is missing from the arrays (saved with another optimizer or names?)")
    a = np.asarray(arrays[key])
    if isinstance(node, np.ndarray):
        if a.shape != node.shape or a.dtype != node.dtype:
            raise ValueError(
                f"optimizer state {key!r}: saved {a.dtype}{list(a.shape)}, expected {node.dtype}{list(node.shape)}"
            )
        return np.array(a, copy=True, order="C")
    if isinstance(node, bool | np.bool_):
        return bool(a)
    if isinstance(node, int | np.integer):
        return int(a)
    if isinstance(node, float | np.floating):
        return float(a)
    raise TypeError(f"optimizer state leaf at {key!r} is a {type(node).__name__}, not array/int/float")


def state_from_arrays(template_state: OptState, arrays: dict[str, np.ndarray], prefix: str = "") -> OptState:
    """Rebuild a state shaped like ``template_state`` (e.g. ``opt.init(params)``) from ``state_to_arrays`` output.

    Arrays are copied (writable, owning their memory) and must match the template's shape and dtype exactly; keys
    of ``arrays`` not under the template's paths are ignored, so one checkpoint can hold params and state.
    """
    return _restore(template_state, (), arrays, prefix)


def state_slice(state: OptState, key: str, elements: slice, *, advance: bool) -> OptState:
    """``state`` for an update of elements ``elements`` of ``key``'s flattened tensor (views into the real arrays).

    Use: update a tensor in slabs, ``update({key: g[s]}, state_slice(state, key, s, advance=last), {key: p[s]})``
    for its slabs in turn. Every transform is elementwise, so that equals one update of the whole tensor bit for bit,
    provided every slab sees the same step count: the 0-d counts are the real ones only where ``advance`` (pass it
    for the last slab, which moves them on), copies otherwise. The state's other keys are left out.
    """

    def part(value: np.ndarray) -> np.ndarray:
        if value.ndim == 0:
            return value if advance else value.copy()
        flat = value.reshape(-1)
        assert np.shares_memory(flat, value), f"state_slice: {key}'s state is not contiguous"
        return flat[elements]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if key not in node:
                raise KeyError(f"state_slice: {key!r} is not a name init() was given ({len(node)} known names)")
            return {key: part(node[key])}
        if isinstance(node, tuple):
            parts = [walk(x) for x in node]
            return type(node)(*parts) if hasattr(node, "_fields") else tuple(parts)
        return node

    return walk(state)


def state_nbytes(state: OptState) -> int:
    """Bytes held by the arrays of ``state``."""
    return sum(a.nbytes for a in state_to_arrays(state).values())


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_state_budget(optimizer_name: str, n_params: int, bytes_per_param_state: int, limit_bytes: int) -> int:
    """Raise a one-line ``ValueError`` if ``n_params · bytes_per_param_state`` exceeds ``limit_bytes``; else return it.

    ``bytes_per_param_state`` is e.g. ``STATE_BYTES_PER_PARAM["adam"]`` (8). Call it before ``init`` so a model-sized
    state is refused before it is allocated.
    """
    need = int(n_params) * int(bytes_per_param_state)
    if need > limit_bytes:
        raise OptimizerError(
            f"{optimizer_name} needs {_fmt_bytes(need)} of optimizer state ({bytes_per_param_state} B x {n_params:,} "
            f"trainable values), over the {_fmt_bytes(limit_bytes)} limit: use sgd (no state) or a low-rank method "
            f"(lozo, subzero) whose trainable coordinates are small"
        )
    return need
