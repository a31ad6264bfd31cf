"""Layer selection (runtime/layers.py): the --layers grammar, and that a restricted run changes only its blocks.

python -m pytest tests/runtime/test_layers.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.layers import LayerSpecError, block_of, n_blocks, parse_layers, restrict_manifest
from runtime.oracle import Oracle, lm_objective
from runtime.session import GraphSession
from zo_edge import optim
from zo_edge.methods import get_method


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("all", None),
        ("", None),
        ("top:2", [28, 29]),
        ("bottom:3", [0, 1, 2]),
        ("12-14", [12, 13, 14]),
        ("0-1, 10,29", [0, 1, 10, 29]),
        ("5", [5]),
        ("head", [30]),
        ("top:2, head", [28, 29, 30]),
    ],
)
def test_parse_layers(spec, want):
    assert parse_layers(spec, 30) == want


@pytest.mark.parametrize("spec", ["top:0", "top:31", "3-1", "30", "x", "1-2-3", "top:", "-1"])
def test_parse_layers_rejects_with_one_line(spec):
    with pytest.raises(LayerSpecError) as info:
        parse_layers(spec, 30)
    assert "\n" not in str(info.value) and "--layers" in str(info.value)


def test_block_of_across_families():
    assert block_of("model.layers.3.self_attn.q_proj") == 3
    assert block_of("transformer.h.11.attn.c_attn") == 11
    assert block_of("model.decoder.layers.0.fc1.weight") == 0
    assert block_of("model.embed_tokens.weight") == -1


@pytest.fixture(scope="module")
def fp32(tiny_export):
    return tiny_export("llama")


def test_restricted_manifest_holds_only_the_selected_blocks(fp32):
    m = fp32.manifest
    assert n_blocks(m) == 2
    view = restrict_manifest(m, [1])
    assert view.linears and all(block_of(s.name) == 1 for s in view.linears)
    assert all(block_of(g.name) == 1 for g in view.groups)
    assert view.params and all(block_of(p.name) == 1 for p in view.params)
    assert restrict_manifest(m, None) is m


@pytest.mark.parametrize(("name", "optimizer"), [("lozo", "sgd"), ("zo-act", "adam"), ("mezo", "sgd")])
def test_a_restricted_run_changes_only_its_blocks(fp32, tiny, name, optimizer):
    """Every method trains through the restricted manifest, so the frozen block's weights and ports stay put."""
    session = GraphSession(fp32.dir)
    before = {k: v.copy() for k, v in session.params.items()}
    oracle = Oracle(session, blocks=[1])
    cls = get_method(name)
    schedule = optim.constant(1e-2)
    method = cls(cls.Config(), optim.make_optimizer(optimizer, schedule), schedule)
    method.init(oracle, 0)
    batch = tiny.make_batch(tiny.VOCAB, seed=2, batch=3, seq=8)
    if method.needs_calibration:
        method.calibrate(oracle, [batch])
    for t in range(3):
        assert not method.step(oracle, batch, lm_objective, t).skipped
    changed = {k for k, v in session.params.items() if not np.array_equal(v, before[k])}
    assert all(block_of(layer) == 1 for layer in oracle.trained.adapters), "an adapter outside block 1"
    assert all(block_of(k) == 1 for k in changed), f"{name} changed frozen params: {sorted(changed)[:3]}"
    assert changed or oracle.trained.adapters, f"{name} changed nothing"
