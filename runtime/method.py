"""The ZO method and optimizer interfaces and the method registry (interfaces live at the bottom, as in optax).

A method owns the *direction*: which perturbation to probe, how to turn losses into a projected gradient, and the
update it implies; the optimizer owns the *step* (learning rate, schedule, momentum, decay). A method talks only to
the Oracle (losses and probes) and to the TrainedState (where updates land), never to onnxruntime. The loop calls
every member below directly: no ``getattr``/``hasattr`` probing, so a method that lacks one fails at import.

Interface (one file per method in zo_edge/methods/, registered where defined with ``@register_method``)::

    method = METHOD(METHOD.Config(...), optimizer, schedule)
    method.init(oracle, seed)                          # allocate state (bases, factors, moments)
    method.calibrate(oracle, batches)                  # once before step 0 (no-op unless needs_calibration)
    report = method.step(oracle, batch, objective, t)  # one ZO step at step index t (0-based)
    method.trainable(oracle)                           # the coordinates the optimizer updates ({} if none)
    method.state_dict() / method.load_state_dict(arrays)
    probe = method.probe(oracle, batch, objective, r)  # federated: round r's scalars g_k, nothing applied
    method.replay(oracle, r, probe.scalars)           # apply round r from its scalars alone -> False if skipped
    method.rounds_per_step                             # rounds a step is federated in (r = t·rounds_per_step + j)
    METHOD.updates_per_step(config)                    # optimizer updates a step applies
    METHOD.schedule_steps(config, manifest, steps)     # how far the schedule's clock runs in `steps` steps

Class-level declarations (read by the CLI, the config, the benchmarks and the tests; never a written-out list):

* ``Config``: the method's own knobs, a dataclass whose fields carry ``metadata={"help": ...}``; the CLI derives
  ``--flag`` names and help text from it and TOML's ``[method]`` table fills it.
* ``bases``: which exported bases it trains ({"fp32"} for full-weight methods, {"fp32", "int4"} for adapter ones).
* ``ports``: the port families its passes feed or fetch (runtime/contract.py ``PORT_FAMILIES``; empty for methods
  that perturb the bound weights themselves, MeZO); an export made without one (``zo-edge export --ports``) is
  refused by ``check_export``, with ``bases``, before any forward.
* ``changes_weights``: whether it writes into the bound weights (then checkpoints hold them).
* ``needs_calibration``: whether ``calibrate`` needs calibration batches (the loop draws them only then).
* ``default_lr`` / ``default_optimizer``: the tuned optimizer defaults (SmolLM2-135M + Rotten Tomatoes).
* ``optimizers``: the optimizer names it accepts; any other is refused with one line.
* ``direct_sgd``: the update is a rank-r SGD step written straight into W (LOZO, SubZero, AGZO): plain SGD only,
  no momentum or weight decay (their state would be model-sized); the learning rate comes from the schedule at the
  count of applied updates, the same clock the optimizer's per-key counters keep.
* ``not_federated``: why the method cannot run federated (zo_edge/federated/), or "" when ``step`` is exactly
  ``probe`` then ``replay`` (same arithmetic), so a replica holding only (seed, t, scalars) lands on the same bits.
  A round is a whole step (r = t) where every query probes one state; a method whose queries run in turn (MeZO:
  query k probes the state query k - 1's update left) federates each query as a round, ``rounds_per_step`` = q.
* A method with ``needs_calibration`` has a ``calib_batches`` field in its ``Config``: how many batches the loop
  draws for ``calibrate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from runtime import contract
from runtime.errors import ZoEdgeError

if TYPE_CHECKING:
    from runtime.batch import Batch
    from runtime.contract import Manifest
    from runtime.oracle import Objective, Oracle

__all__ = [
    "METHODS", "MethodError", "Optimizer", "Probe", "StepReport", "ZOMethod", "check_export", "get_method",
    "register_method", "written_params",
]  # fmt: skip


class MethodError(ZoEdgeError, ValueError):
    """A method asked for something it cannot do (a base, an optimizer, a knob's value)."""


@dataclass
class StepReport:
    loss: float  # the step's unperturbed (or mean of ±) batch loss
    projected_grad: float  # the scalar g (mean over queries)
    forwards: int
    t_forward: float = 0.0
    t_update: float = 0.0
    t_sample: float = 0.0
    skipped: bool = False  # a non-finite loss or update: nothing was applied
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Probe:
    """Step t probed, nothing applied: what a federated client sends (per query k, g_k), and its batch loss."""

    scalars: np.ndarray  # [queries] float64 projected gradients g_k (empty when skipped)
    loss: float
    forwards: int
    skipped: bool = False  # a non-finite loss: no scalars


class Optimizer(Protocol):
    """An optax-style gradient transformation (zo_edge/optim.py builds them): ``deltas`` are what to ADD."""

    def init(self, params: dict[str, np.ndarray]) -> Any: ...

    def update(
        self, updates: dict[str, np.ndarray], state: Any, params: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], Any]: ...


class ZOMethod(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]
    bases: ClassVar[frozenset[str]]
    ports: ClassVar[frozenset[str]]
    changes_weights: ClassVar[bool]
    needs_calibration: ClassVar[bool]
    default_lr: ClassVar[float]
    default_optimizer: ClassVar[str]
    optimizers: ClassVar[frozenset[str]]
    direct_sgd: ClassVar[bool]
    not_federated: ClassVar[str]

    def init(self, oracle: Oracle, seed: int) -> None: ...

    def calibrate(self, oracle: Oracle, batches: list[Batch]) -> None: ...

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int) -> StepReport: ...

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None: ...

    @property
    def rounds_per_step(self) -> int: ...

    @classmethod
    def updates_per_step(cls, config: Any) -> int: ...

    @classmethod
    def schedule_steps(cls, config: Any, manifest: Manifest, steps: int) -> int: ...

    def probe(self, oracle: Oracle, batch: Batch, objective: Objective, r: int) -> Probe: ...

    def replay(self, oracle: Oracle, r: int, scalars: np.ndarray) -> bool: ...


METHODS: dict[str, type] = {}

_REQUIRED = (
    "Config", "bases", "ports", "changes_weights", "needs_calibration", "default_lr", "default_optimizer",
    "optimizers", "direct_sgd", "not_federated", "init", "calibrate", "step", "trainable", "state_dict",
    "load_state_dict", "probe", "replay", "rounds_per_step", "updates_per_step", "schedule_steps",
)  # fmt: skip


def register_method(name: str):
    """Class decorator: registers a complete ZOMethod under ``name`` (a missing member fails here, at import)."""

    def wrap(cls):
        missing = [m for m in _REQUIRED if not hasattr(cls, m)]
        assert not missing, f"method {name!r} ({cls.__name__}) lacks {missing}"
        assert cls.default_optimizer in cls.optimizers, f"{name}: default optimizer not in its optimizers"
        unknown = set(cls.ports) - set(contract.PORT_FAMILIES)
        assert not unknown, f"{name}: ports {sorted(unknown)} are not port families {contract.PORT_FAMILIES}"
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def check_export(method: type, manifest: Manifest, where: str = "this export", who: str = "") -> None:
    """Refuse, in one line (MethodError), an export ``method`` cannot train: a base not in its ``bases`` (INT4 for
    a full-weight method), or a port family of its ``ports`` that the export left out (``zo-edge export --ports``).

    The one check of a method against a manifest. ``zo_edge.train.prepare`` runs it on the method's class before
    the first forward (prompt scoring included; recipes and the federated server go through it too), and every
    method's ``init`` again on the oracle's manifest, for the callers that build a method themselves (benchmarks,
    federated nodes, tests). ``where`` names the model folder in the message, ``who`` the method (default: its
    name; a recipe's run says which recipe chose it)."""
    who = who or method.name
    if manifest.dtype not in method.bases:
        adapters = sorted(n for n, m in METHODS.items() if manifest.dtype in m.bases)
        raise MethodError(
            f"{who} cannot train an {manifest.dtype} base (it updates full weights); "
            f"use {', '.join(adapters)}, which train a low-rank adapter on {manifest.dtype}"
        )
    missing = set(method.ports) - set(manifest.ports)
    if missing:
        raise MethodError(contract.ports_missing(who, missing, manifest.ports, where))


def written_params(method: ZOMethod, oracle) -> list[str]:
    """The bound params ``method`` (initialised on ``oracle``) writes into: what checkpoints, federated checksums and
    snapshots hold besides the adapters. MeZO's selection (``--layers head --kinds norm``: the final norm's gain
    alone, 2.3 KB, not the 540 MB of every tensor a SmolLM2 export binds), a folded low-rank update's linear
    weights; none for adapter training (LOZO / SubZero / AGZO on an INT4 base, whose bound params are only the norms
    and float tables they never touch, ZO-Act, FZOO)."""
    if not method.changes_weights:
        return []
    return [k for k in method.trainable(oracle) if k in oracle.params]
