"""The ZO method interface and its registry (the interfaces live at the bottom of the stack, as in optax's base.py).

A method owns the *direction*: which perturbation to probe, how to turn losses into a projected gradient, and the
update it implies; the optimizer (zo_edge/optim.py) owns the *step*. A method talks only to the Oracle (losses,
probes, updates), never to onnxruntime. Its state is a flat ``dict[str, np.ndarray]`` mutated in place (numpy
moments and bases must not be re-allocated every step on a memory-bound device), so a checkpoint is exactly
``state_dict()`` plus, for full-parameter methods, the bound weights.

Interface (one file per method in zo_edge/methods/, registered where defined with ``@register_method``)::

    method = METHOD(config, optimizer)
    method.init(oracle, seed)                          # allocate state (bases, factors, moments)
    report = method.step(oracle, batch, objective, t)  # one ZO step at step index t (0-based)
    method.trainable(oracle)                           # the coordinates the optimizer updates
    method.state_dict() / method.load_state_dict(arrays)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from runtime.oracle import Objective, Oracle
from runtime.session import Batch

__all__ = ["METHODS", "StepReport", "ZOMethod", "get_method", "register_method"]


@dataclass
class StepReport:
    loss: float  # the step's unperturbed (or mean of ±) batch loss
    projected_grad: float  # the scalar g (mean over queries)
    forwards: int
    t_forward: float = 0.0
    t_update: float = 0.0
    t_sample: float = 0.0
    skipped: bool = False  # a non-finite loss: no update was applied
    extra: dict[str, Any] = field(default_factory=dict)


class ZOMethod(Protocol):
    name: ClassVar[str]
    #: which bases the method can train: {"fp32"}, or {"fp32", "int4"} for adapter-form methods
    bases: ClassVar[frozenset[str]]
    #: False for methods that never touch the bound weights (ZO-Act trains only its coefficients), so checkpoints
    #: need not hold a copy of the model
    changes_weights: ClassVar[bool]

    def init(self, oracle: Oracle, seed: int) -> None: ...

    def step(self, oracle: Oracle, batch: Batch, objective: Objective, t: int) -> StepReport: ...

    def trainable(self, oracle: Oracle) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None: ...


METHODS: dict[str, type] = {}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
