"""The cross-provider report: its numbers against hand-computed ones, its text, and that the per-layer divergence
finds the exact group where two runs start to compute differently (two CPU sessions, one with an adapter on one
layer, stand in for a provider that computes something else there).

    python -m pytest tests/zo_edge/test_cross_provider.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import ZoEdgeError
from runtime.oracle import Oracle
from runtime.session import GraphSession
from runtime.trained_state import LowRank
from zo_edge.cross_provider import (
    LayerDrift,
    MergedReportError,
    compare,
    compare_greedy,
    compare_providers,
    format_report,
    layer_divergence,
    merged_graphs,
)
from zo_edge.evaluate import EvalResult


def _result(pred: list[int], loglik: list[list[float]], gold: list[int]) -> EvalResult:
    pred_a, gold_a = np.array(pred), np.array(gold)
    return EvalResult(
        accuracy=float(np.mean(pred_a == gold_a)),
        macro_f1=0.0,
        auc=0.5,
        confusion=[],
        n=len(pred),
        truncated=0,
        predictions=pred_a,
        loglik=np.array(loglik),
    )


GOLD = [0, 1, 1, 0]
CPU = _result([0, 1, 1, 1], [[-1.0, -2.0], [-3.0, -1.0], [-2.0, -1.5], [-1.0, -0.5]], GOLD)
OV = _result([0, 0, 1, 1], [[-1.0, -2.5], [-1.0, -1.5], [-2.0, -1.5], [-1.2, -0.5]], GOLD)


def test_compare_against_hand_computed_numbers():
    rep = compare(
        {"cpu": CPU, "openvino": OV},
        precisions={"cpu": "fp32", "openvino": "fp16"},
        options={"openvino": {"precision": "FP16"}},
        label="runs/x",
    )
    assert rep.reference == "cpu" and rep.n == 4 and rep.label == "runs/x"
    cpu, ov = rep.row("cpu"), rep.row("openvino")
    assert (cpu.agreement, cpu.max_abs_dloglik, cpu.mean_abs_dloglik, cpu.flipped) == (1.0, 0.0, 0.0, [])
    # |Δ| per candidate: [0, .5], [2, .5], [0, 0], [.2, 0] -> mean 3.2 / 8, max 2
    assert ov.agreement == 0.75 and ov.flipped == [1]
    assert ov.max_abs_dloglik == pytest.approx(2.0) and ov.mean_abs_dloglik == pytest.approx(3.2 / 8)
    assert (ov.accuracy, cpu.accuracy) == (0.5, 0.75)
    assert ov.precision == "fp16" and ov.options == {"precision": "FP16"} and cpu.options == {}


def test_cli_rows_keep_their_keys_and_evaluate_still_exports_them():
    rows = compare_providers({"cpu": CPU, "openvino": OV})
    assert [r["provider"] for r in rows] == ["cpu", "openvino"]
    for key in ("accuracy", "agreement", "max_abs_dloglik", "macro_f1", "mean_abs_dloglik", "flipped", "precision"):
        assert key in rows[1]


def test_compare_refuses_different_example_sets():
    short = _result([0], [[-1.0, -2.0]], [0])
    with pytest.raises(ValueError, match="not one set"):
        compare({"cpu": CPU, "openvino": short})


def test_format_report_names_flips_precision_and_where_drift_starts():
    layers = [
        LayerDrift("model.layers.0.attn_in", {"cpu": 0.0, "openvino": 2e-7}),
        LayerDrift("model.layers.0.attn_out", {"cpu": 0.0, "openvino": 0.35}),
        LayerDrift("model.layers.0.mlp_in", {"cpu": 0.0, "openvino": 0.2}),
    ]
    rep = compare({"cpu": CPU, "openvino": OV}, precisions={"cpu": "fp32", "openvino": "fp32"}, layers=layers)
    assert rep.drift_starts("openvino") == "model.layers.0.attn_out"
    assert rep.drift_starts("openvino", threshold=0.5) is None
    text = format_report(rep)
    assert "openvino: 1 prediction(s) flip vs cpu: 1" in text
    assert "drift starts at model.layers.0.attn_out" in text and "largest jump" in text
    assert "fp32" in text
    d = rep.to_dict()  # plain data: what a JSON report or a run folder records
    assert d["rows"][1]["flipped"] == [1] and d["layers"][1]["divergence"]["openvino"] == 0.35


def test_layer_divergence_finds_the_group_where_computation_changes(tiny_export, tiny):
    llama = tiny_export("llama")
    a, b = Oracle(GraphSession(llama.dir, "cpu")), Oracle(GraphSession(llama.dir, "cpu"))
    spec = next(s for s in llama.manifest.linears if s.name.endswith("layers.0.self_attn.v_proj"))
    rng = np.random.default_rng(0)
    b.trained.set_adapter(
        spec.name,
        LowRank(q=rng.standard_normal((spec.d_out, 2)).astype(np.float32), p=rng.standard_normal((spec.d_in, 2))),
    )
    batch = tiny.make_batch(llama.manifest.vocab_size)
    layers = layer_divergence({"ref": a, "other": b}, batch)
    assert [d.group for d in layers] == [g.name for g in llama.manifest.groups]
    div = {d.group: d.divergence["other"] for d in layers}
    # v_proj feeds the attention output: its input (attn_in) is untouched, everything from attn_out on moves
    assert div["model.layers.0.attn_in"] < 1e-7
    assert all(v > 1e-3 for g, v in div.items() if g != "model.layers.0.attn_in")
    rep = compare({"ref": _result([0], [[0.0, 0.0]], [0]), "other": _result([0], [[0.0, 0.0]], [0])}, layers=layers)
    assert rep.drift_starts("other") == "model.layers.0.attn_out"
    assert all(d.divergence["ref"] == 0.0 for d in layers)


def test_greedy_comparison_against_hand_computed_numbers():
    ref = [[5, 6, 7, 8], [1, 2, 3, 4]]
    rows = compare_greedy({"cpu": ref, "openvino": [[5, 6, 7, 8], [1, 2, 9, 9]]})
    cpu, ov = rows
    assert (cpu.identical, cpu.token_agreement, cpu.first_divergence) == (1.0, 1.0, [None, None])
    # prompt 1 differs from its third token on: 1 of 2 continuations identical, 6 of 8 tokens equal
    assert (ov.identical, ov.token_agreement, ov.first_divergence) == (0.5, 0.75, [None, 2])
    assert (ov.prompts, ov.new_tokens) == (2, 4)
    with pytest.raises(ValueError, match="not one set"):
        compare_greedy({"cpu": ref, "openvino": [[5, 6, 7]]})
    rep = compare({"cpu": CPU, "openvino": OV}, label="merged x/onnx")
    rep.greedy = rows
    text = format_report(rep)
    assert "50% of continuations identical" in text and "prompt 1 at token 2" in text
    assert rep.to_dict()["greedy"][1]["first_divergence"] == [None, 2]


def test_merged_graphs_finds_the_merge_outputs_and_refuses_other_folders(tmp_path):
    for sub in ("onnx", "onnx-int4"):
        (tmp_path / "m" / sub).mkdir(parents=True)
        (tmp_path / "m" / sub / "model.onnx").write_bytes(b"")
    assert merged_graphs(tmp_path / "m") == {"fp32": tmp_path / "m" / "onnx", "int4": tmp_path / "m" / "onnx-int4"}
    assert merged_graphs(tmp_path / "m" / "onnx-int4") == {"int4": tmp_path / "m" / "onnx-int4"}
    (tmp_path / "run").mkdir()
    with pytest.raises(MergedReportError, match="zo-edge merge") as info:
        merged_graphs(tmp_path / "run")
    assert "\n" not in str(info.value) and isinstance(info.value, ZoEdgeError)


# --- every provider onnxruntime lists here: the positions and ports path (issue #17) ------------------------------
def _listed_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@pytest.mark.parametrize("provider", _listed_providers())
def test_every_listed_provider_computes_positions_and_ports_as_torch(tiny_export, tiny, provider):
    """Issue #17's bug (an int64 ``Clip`` that OpenVINO evaluated as clip to [0, 0], so every RoPE position was 0)
    passed on CPU and hid at a random base: it shows with ragged left padding (positions from the mask) and a
    nonzero P/Q adapter on every linear (the trained-state path). Each provider onnxruntime lists in this
    environment must give torch's row losses there: torch with W + Q Pᵀ in the weights, each row run alone without
    its pads (positions 0..n-1 by construction, nothing exported involved). The OpenVINO venv runs the same check
    against CPU (tests/openvino); CUDA, QNN and the rest are not installed here, so they are unverified. (The main
    venv's onnxruntime also lists AzureExecutionProvider, a remote-endpoint provider that claims no local node: its
    session runs on the CPU kernels behind it, which this checks as well.)"""
    import torch

    from runtime import contract

    exp = tiny_export("llama")
    try:
        sess = GraphSession(exp.dir, provider)
    except Exception as e:  # noqa: BLE001 - a listed provider that cannot run a local graph says so here
        pytest.skip(f"{provider} is listed but cannot create a session here: {str(e).splitlines()[0]}")
    rng = np.random.default_rng(7)
    pq = {
        s.name: (
            (rng.standard_normal((s.d_in, 2)) / np.sqrt(s.d_in)).astype(np.float32),
            (rng.standard_normal((s.d_out, 2)) * 0.5).astype(np.float32),
        )
        for s in exp.manifest.linears
    }
    ports = {contract.port_p(n): p for n, (p, _) in pq.items()} | {contract.port_q(n): q for n, (_, q) in pq.items()}
    ref = exp.reference
    with torch.no_grad():
        for name, (p, q) in pq.items():
            ref.get_submodule(name).weight.add_(torch.from_numpy(q) @ torch.from_numpy(p).T)
        try:
            for seed, rows, seq in ((0, 3, 8), (1, 5, 13)):
                batch = tiny.make_batch(tiny.VOCAB, seed=seed, batch=rows, seq=seq)
                want = tiny.torch_row_losses(ref, batch, unpadded=True)[0].numpy()
                base = sess.forward(batch)[contract.OUTPUT_ROW_NLL]
                got = sess.forward(batch, ports)[contract.OUTPUT_ROW_NLL]
                np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=f"{provider}: B={rows} T={seq}")
                assert np.max(np.abs(got - base)) > 1e-2, "the adapter did not change the losses: a vacuous check"
        finally:
            for name, (p, q) in pq.items():
                ref.get_submodule(name).weight.sub_(torch.from_numpy(q) @ torch.from_numpy(p).T)
    assert sess.session.get_providers()[0] == provider, sess.session.get_providers()
