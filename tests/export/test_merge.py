"""``zo-edge merge`` (export.merge.merge_run) on hand-made run folders of tiny models, against torch.

    python -m pytest tests/export/test_merge.py -q

A run folder here is what training leaves (``config.json`` naming the model, a checkpoint whose arrays are named by
``runtime.contract``), written directly so each test controls the trained state exactly. Checks: the merged HF
model equals the torch reference with ΔW = Q Pᵀ and the trained parameters applied by the test itself (GPT-2's
transposed Conv1D and an untied head included); the adapter file's names; a failing ``--force`` merge keeps the
previous output; a checkpoint of another base is refused. The optimum ONNX export is left to tests/zo_edge.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export.merge
from export.architectures import get_architecture, tiny_cases
from export.merge import MergeError, merge_run
from runtime import checkpoint, contract
from runtime.errors import ZoEdgeError


def _run_folder(tmp_path: Path, model_dir: Path, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(model_dir)}))
    checkpoint.save_checkpoint(run, 1, arrays, meta or {})
    return run


def _trained_state(manifest: contract.Manifest, seed: int) -> tuple[dict[str, np.ndarray], dict, dict]:
    """Checkpoint arrays: a rank-2 adapter on every targeted linear, plus new values of one linear weight (stored
    [d_in, d_out]) and of one norm weight, as a weight-changing method saves them. -> (arrays, adapters, params)"""
    rng = np.random.default_rng(seed)
    adapters = {}
    arrays = {}
    for lin in manifest.linears:
        q = (0.05 * rng.standard_normal((lin.d_out, 2))).astype(np.float32)
        p = (rng.standard_normal((lin.d_in, 2)) / np.sqrt(lin.d_in)).astype(np.float32)
        adapters[lin.name] = (q, p)
        arrays[contract.adapter_q_name(lin.name)] = q
        arrays[contract.adapter_p_name(lin.name)] = p
    specs = {s.name: s for s in manifest.params}
    linear = manifest.linears[0].weight
    norm = next(s.name for s in manifest.params if s.kind == contract.KIND_NORM)
    params = {
        linear: (0.1 * rng.standard_normal(specs[linear].shape)).astype(np.float32),
        norm: (1 + 0.1 * rng.standard_normal(specs[norm].shape)).astype(np.float32),
    }
    arrays.update({contract.checkpoint_param_name(k): v for k, v in params.items()})
    return arrays, adapters, params


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("case", list(tiny_cases()))  # every registered type and tiny variant
def test_merged_model_matches_torch(tiny_export, case, tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    exp = tiny_export(case)
    arrays, adapters, params = _trained_state(exp.manifest, seed=0)
    out = merge_run(_run_folder(tmp_path, exp.dir, arrays), tmp_path / "merged", which="latest", onnx=False)

    # The reference: the torch model with the trained state applied here, in HF orientation.
    ref = copy.deepcopy(exp.reference)
    hf_in_out = get_architecture(exp.manifest.model_type).weight_layout == contract.LAYOUT_IN_OUT
    stored_in_out = {s.name for s in exp.manifest.params if s.layout == contract.LAYOUT_IN_OUT}
    state = ref.state_dict()
    with torch.no_grad():
        for key, value in params.items():
            hf = value.T if key in stored_in_out and not hf_in_out else value  # [d_in, d_out] -> the HF layout
            state[key].copy_(torch.from_numpy(np.ascontiguousarray(hf)))
        for layer, (q, p) in adapters.items():
            delta = torch.from_numpy(q.astype(np.float64) @ p.astype(np.float64).T)  # HF [d_out, d_in]
            weight = ref.get_submodule(layer).weight
            weight.add_((delta.T if hf_in_out else delta).to(weight.dtype))
    merged = AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, exp.manifest.vocab_size, (2, 9)))
    want = _logits(ref, ids)
    assert (want - _logits(exp.reference, ids)).abs().max() > 1e-2, "the trained state changed nothing"
    torch.testing.assert_close(_logits(merged, ids), want, rtol=1e-4, atol=1e-4)
    if case == "llama-untied":
        assert not torch.equal(merged.lm_head.weight, merged.model.embed_tokens.weight), "the head got tied"

    saved = load_file(str(out / contract.ADAPTER_FILE))
    assert set(saved) == {
        n for layer in adapters for n in (contract.adapter_q_name(layer), contract.adapter_p_name(layer))
    }
    for layer, (q, p) in adapters.items():
        np.testing.assert_array_equal(saved[contract.adapter_q_name(layer)], q)
        np.testing.assert_array_equal(saved[contract.adapter_p_name(layer)], p)
    info = json.loads((out / contract.ADAPTER_INFO_FILE).read_text())
    assert info["base_weights_sha256"] == exp.manifest.weights_sha256 and info["layers"] == sorted(adapters)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failing_forced_merge_keeps_the_previous_output(tiny_export, tmp_path, monkeypatch):
    exp = tiny_export("llama")
    arrays, _, _ = _trained_state(exp.manifest, seed=2)
    run = _run_folder(tmp_path, exp.dir, arrays)
    out = merge_run(run, tmp_path / "merged", which="latest", onnx=False)
    before = _tree(out)
    assert "hf/config.json" in before and contract.ADAPTER_FILE in before

    with pytest.raises(ZoEdgeError) as e:  # an existing output without --force: refused before any work
        merge_run(run, out, which="latest", onnx=False)
    assert "--force" in str(e.value) and "\n" not in str(e.value)

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(export.merge, "_write_hf", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        merge_run(run, out, which="latest", onnx=False, force=True)
    assert _tree(out) == before, "a failed --force merge touched the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "run"], "temp folder left behind"


def test_checkpoint_of_another_base_is_refused(tiny_export, tmp_path):
    exp = tiny_export("llama")
    assert len(exp.manifest.weights_sha256) == 64, "every export names its base, in-memory ones too"
    arrays, _, _ = _trained_state(exp.manifest, seed=3)
    run = _run_folder(tmp_path, exp.dir, arrays, {contract.META_WEIGHTS_SHA256: "0" * 64})
    with pytest.raises(MergeError, match="another base") as e:
        merge_run(run, tmp_path / "merged", which="latest", onnx=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "merged").exists()


def test_adapter_names_round_trip():
    layer = "model.layers.0.self_attn.q_proj"
    assert contract.parse_adapter_name(contract.adapter_q_name(layer)) == (layer, "q")
    assert contract.parse_adapter_name(contract.adapter_p_name(layer)) == (layer, "p")
    assert contract.parse_checkpoint_param_name(contract.checkpoint_param_name(f"{layer}.weight")) == f"{layer}.weight"
    for other in (contract.checkpoint_param_name(layer), "C::x", f"{layer}.Q", contract.adapter_q_name("")):
        assert contract.parse_adapter_name(other) is None, other
    assert contract.parse_checkpoint_param_name(contract.adapter_q_name(layer)) is None


@pytest.mark.parametrize("text", ["{", "[]", '{"task": "rotten-tomatoes"}'])
def test_damaged_run_config_is_one_line(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    with pytest.raises(MergeError) as e:
        merge_run(run, tmp_path / "merged", which="latest", onnx=False)
    assert "\n" not in str(e.value) and "config.json" in str(e.value)
    assert not (tmp_path / "merged").exists()
