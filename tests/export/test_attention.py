"""``--attention fused`` (com.microsoft::GroupQueryAttention) against the torch model and the eager export.

    python -m pytest tests/export/test_attention.py -q

For every tiny case of a family that declares ``supports_fused_attention`` (the Llama family: Llama, Qwen2's q/k/v
biases, Qwen3's q/k norms, Mistral, the untied head), on ragged left-padded batches: the per-row loss against the HF
model's own logits; every port and probe (P/Q, output noise, power-iteration basis, sketch, raw rows, candidate
scoring) against the eager export of the same weights, which test_parity.py checks against torch; the split graphs;
and the one-line refusals (a family or config the op does not fit, a provider without the op).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.architectures import get_architecture, tiny_cases
from export.config import ExportConfig, ExportConfigError
from export.exporter import ExportError, export_model
from runtime import contract
from runtime.session import GraphSession

FUSED_CASES = [c for c, (t, _) in tiny_cases().items() if get_architecture(t).supports_fused_attention]
OTHER_CASES = [c for c, (t, _) in tiny_cases().items() if not get_architecture(t).supports_fused_attention]


def _all_ports(manifest: contract.Manifest, batch, seed: int) -> dict[str, np.ndarray]:
    """Every kind of port switched on at once: P/Q on all layers, noise on one, every probe of every group."""
    rng = np.random.default_rng(seed)
    b, t = batch.input_ids.shape
    ports: dict[str, np.ndarray] = {contract.INPUT_PROBE_ROWS: batch.real_token_rows()}
    for lin in manifest.linears:
        ports[contract.port_p(lin.name)] = (rng.standard_normal((lin.d_in, 2)) / np.sqrt(lin.d_in)).astype(np.float32)
        ports[contract.port_q(lin.name)] = (0.3 * rng.standard_normal((lin.d_out, 2))).astype(np.float32)
    last = manifest.linears[-1]
    ports[contract.port_noise(last.name)] = (0.2 * rng.standard_normal((b, t, last.d_out))).astype(np.float32)
    for g in manifest.groups:
        ports[contract.probe_omega(g.name)] = rng.standard_normal((g.d_in, manifest.basis_rank)).astype(np.float32)
        ports[contract.probe_sketch_omega(g.name)] = rng.standard_normal((g.d_in, 3)).astype(np.float32)
        ports[contract.probe_act_rows(g.name)] = batch.real_token_rows()[:4]
    return ports


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_loss_matches_torch(tiny_export, tiny, case):
    exp = tiny_export(case, attention="fused")
    assert exp.manifest.has(contract.FEATURE_FUSED_ATTENTION)
    graph = onnx.load(str(exp.dir / contract.GRAPH_FILE))
    ops = [n.op_type for n in graph.graph.node]
    n_layers = exp.reference.config.num_hidden_layers
    assert ops.count("GroupQueryAttention") == n_layers, f"{case}: {ops.count('GroupQueryAttention')} fused nodes"
    assert "Softmax" not in ops, f"{case}: an eager attention Softmax is left in the fused graph"
    sess = GraphSession(exp.dir)
    for seed, (b, t) in enumerate(((3, 8), (5, 11))):  # the second: other sizes than the traced example
        batch = tiny.make_batch(tiny.VOCAB, seed=seed, batch=b, seq=t)
        out = sess.forward(batch)
        with torch.no_grad():
            ref_nll, ref_count = tiny.torch_row_losses(exp.reference, batch)
            alone, _ = tiny.torch_row_losses(exp.reference, batch, unpadded=True)
        np.testing.assert_array_equal(out[contract.OUTPUT_ROW_COUNT], ref_count.numpy())
        np.testing.assert_allclose(out[contract.OUTPUT_ROW_NLL], ref_nll.numpy(), rtol=1e-4, err_msg=f"{case} {b}x{t}")
        np.testing.assert_allclose(out[contract.OUTPUT_ROW_NLL], alone.numpy(), rtol=1e-4, err_msg="vs unpadded rows")


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_ports_and_probes_match_eager(tiny_export, tiny, case):
    eager, fused = tiny_export(case), tiny_export(case, attention="fused")
    e, f = GraphSession(eager.dir), GraphSession(fused.dir)
    batch = tiny.make_batch(tiny.VOCAB, seed=7, batch=4, seq=10)
    batch.candidate_ids = np.array([3, 5, 11], np.int64)
    ports = _all_ports(eager.manifest, batch, seed=8)
    fetch = tuple(o.name for o in e.session.get_outputs())
    got, want = f.forward(batch, ports, fetch=fetch), e.forward(batch, ports, fetch=fetch)
    for name in fetch:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-5, err_msg=f"{case}: {name}")
    # the comparison is not vacuous: the ports moved the loss, the probes saw real rows
    moved = got[contract.OUTPUT_ROW_NLL] - f.forward(batch)[contract.OUTPUT_ROW_NLL]
    assert np.abs(moved).max() > 1e-2, f"{case}: ports had no effect on the fused graph"
    assert np.abs(got[contract.probe_act(eager.manifest.groups[0].name)]).max() > 0


def test_fused_split_graphs_match_full_graph(tiny_export, tiny):
    exp = tiny_export("llama", attention="fused")
    assert exp.manifest.splits, "the fused fp32 Llama export writes split graphs too"
    start = exp.manifest.splits[0]
    full = GraphSession(exp.dir)
    prefix = GraphSession(exp.dir, graph_file=contract.prefix_graph_file(start), params=full.params)
    suffix = GraphSession(exp.dir, graph_file=contract.suffix_graph_file(start), params=full.params)
    for name in (contract.prefix_graph_file(start), contract.suffix_graph_file(start)):
        ops = [n.op_type for n in onnx.load(str(exp.dir / name)).graph.node]
        assert "Softmax" not in ops and "GroupQueryAttention" in ops, f"{name} is not fused"
    batch = tiny.make_batch(tiny.VOCAB, seed=9, batch=4, seq=9)
    hidden = prefix.forward(batch, fetch=(contract.OUTPUT_HIDDEN,))[contract.OUTPUT_HIDDEN]
    got = suffix.forward(batch, {contract.INPUT_HIDDEN: hidden})[contract.OUTPUT_ROW_NLL]
    np.testing.assert_allclose(got, full.losses(batch), rtol=1e-5)


def test_fused_refusals(tmp_path, tiny, tiny_export, monkeypatch):
    with pytest.raises(ExportConfigError, match="--attention must be one of"):
        ExportConfig(attention="flash")
    for case in OTHER_CASES[:1]:  # a family whose attention module the op does not fit: one line, before tracing
        with pytest.raises(ExportError, match="--attention fused: .* use --attention eager"):
            export_model(tiny.build_tiny_model(case), None, tmp_path / case, ExportConfig(attention="fused"))
    from transformers import AutoModelForCausalLM

    windowed = get_architecture("mistral").tiny_config("mistral")
    windowed.sliding_window = 4
    model = AutoModelForCausalLM.from_config(windowed, attn_implementation="eager")
    with pytest.raises(ExportError, match="sliding-window"):
        export_model(model, None, tmp_path / "mistral", ExportConfig(attention="fused"))
    # A provider without com.microsoft kernels is refused from the manifest, in one line, before onnxruntime
    exp = tiny_export("llama", attention="fused")
    monkeypatch.setattr(
        "runtime.providers.available_providers", lambda: ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(contract.ManifestError, match="--attention fused .* re-export it with --attention eager"):
        GraphSession(exp.dir, provider="openvino")
