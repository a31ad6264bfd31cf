"""A checkpoint whose method state has another shape is refused in one line, never broadcast or swapped in.

python -m pytest tests/methods/test_state_shapes.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.method import MethodError
from runtime.oracle import Oracle
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import get_method


def test_load_state_dict_refuses_a_wrongly_shaped_state(tiny_export):
    exp = tiny_export("llama")
    cls = get_method("agzo")
    schedule = optim.constant(1e-3)
    method = cls(cls.Config(), optim.make_optimizer(cls.default_optimizer, schedule), schedule)
    method.init(Oracle(GraphSession(exp.dir)), 0)
    state = method.state_dict()
    key = next(k for k, v in state.items() if k.startswith("state/omega::"))
    good = {k: v.copy() for k, v in state.items()}
    method.load_state_dict(good)  # its own state: accepted
    bad = {**good, key: np.zeros((good[key].shape[0] + 1, *good[key].shape[1:]), np.float32)}
    with pytest.raises(MethodError) as info:
        method.load_state_dict(bad)
    assert "\n" not in str(info.value) and key.removeprefix("state/") in str(info.value)
