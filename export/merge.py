"""``zo-edge merge RUN --out DIR``: make what a run trained deployable.

* fp32 base: the trained weights (folded updates, plus any adapter C Aᵀ / Q Pᵀ folded in) are written as a Hugging
  Face folder (``hf/``: safetensors + config + tokenizer) that transformers loads, and exported with optimum-onnx
  (``main_export``, task text-generation-with-past) to ``onnx/``, which optimum's ORTModelForCausalLM and
  ``zo-edge generate`` load.
* Any base: the adapter alone (``adapter.safetensors`` with P/Q per layer, ΔW = Q Pᵀ in HF orientation, plus
  ``adapter.json`` naming the base by its weight hash), so several personalisations can share one base.
* INT4 base: folding ΔW into the weights and re-quantizing would change the function that was trained, so the
  deployable model is the *dequantized* INT4 base (exactly the weights MatMulNBits computes with) plus ΔW, in
  fp32: the trained function, at fp32 size. The adapter file is the INT4-sized deployable (base + adapter). An INT4
  KV-cache graph with the adapter branch as initializers is not built yet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from runtime import checkpoint, contract
from runtime.contract import Manifest

__all__ = ["MergeError", "merge_run", "trained_state"]


class MergeError(ValueError):
    pass


def trained_state(run_dir: Path, which: str = "best") -> tuple[dict[str, np.ndarray], dict, Path]:
    path = run_dir / "best" if which == "best" and checkpoint.is_complete(run_dir / "best") else None
    path = path or checkpoint.latest_checkpoint(run_dir)
    if path is None:
        raise MergeError(f"{run_dir} has no checkpoint; train first with `zo-edge train --out {run_dir}`")
    arrays, meta = checkpoint.load_checkpoint(path)
    return arrays, meta, path


def _adapters(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key, q in arrays.items():
        if key.startswith("adapter.q::"):
            layer = key.removeprefix("adapter.q::")
            out[layer] = (q, arrays[f"adapter.p::{layer}"])
    return out


def merge_run(
    run_dir: str | Path, out_dir: str | Path, *, which: str = "best", onnx: bool = True, force: bool = False
):
    """Write the deployable forms of ``run_dir``'s trained state into ``out_dir`` (see the module docstring)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise MergeError(f"{run_dir} is not a zo-edge run folder (no config.json)")
    model_dir = Path(json.loads(cfg_path.read_text())["model"])
    manifest = Manifest.load(model_dir)
    if out_dir.exists():
        if not force:
            raise MergeError(f"{out_dir} already exists; pass --force to replace it")
        shutil.rmtree(out_dir)
    arrays, meta, ckpt = trained_state(run_dir, which)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapters = _adapters(arrays)
    _write_adapter(tmp, adapters, manifest, ckpt)
    hf = tmp / "hf"
    _write_hf(hf, model_dir, manifest, arrays, adapters)
    if onnx:
        _export_onnx(hf, tmp / "onnx")
    tmp.rename(out_dir)
    return out_dir


def _write_adapter(out: Path, adapters, manifest: Manifest, ckpt: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {}
    for layer, (q, p) in adapters.items():
        tensors[f"{layer}.Q"] = np.ascontiguousarray(q, np.float32)
        tensors[f"{layer}.P"] = np.ascontiguousarray(p, np.float32)
    if tensors:
        save_file(tensors, str(out / "adapter.safetensors"))
    info = {
        "base_weights_sha256": manifest.weights_sha256,
        "base_source": manifest.source,
        "base_dtype": manifest.dtype,
        "checkpoint": str(ckpt),
        "layers": sorted(adapters),
        "formula": "W_hf[layer] += Q @ P.T  (Q [d_out, r], P [d_in, r])",
    }
    (out / "adapter.json").write_text(json.dumps(info, indent=1))


def _write_hf(out: Path, model_dir: Path, manifest: Manifest, arrays, adapters) -> None:
    """Params (folded training updates if the run changed them) + adapters -> an HF folder transformers loads."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    params = load_file(str(model_dir / contract.PARAMS_FILE)) if manifest.dtype == "fp32" else _int4_params(model_dir)
    for k, v in arrays.items():
        if k.startswith("param/"):
            params[k.removeprefix("param/")] = v
    layout = {f"{s.name}.weight": "in_out" for s in manifest.linears}
    state = {}
    for key, value in params.items():
        w = value.T if layout.get(key) == "in_out" else value  # stored [d_in, d_out] -> HF [d_out, d_in]
        state[key] = np.array(w, dtype=np.float32, copy=True)
    for spec in manifest.linears:
        if spec.name in adapters:
            q, p = adapters[spec.name]
            state[f"{spec.name}.weight"] += q.astype(np.float64) @ p.astype(np.float64).T
    config = AutoConfig.for_model(**manifest.hf_config)
    model = AutoModelForCausalLM.from_config(config)
    arch_transposed = manifest.architecture == "gpt2"  # Conv1D keeps [d_in, d_out] in HF too
    torch_state = {}
    for key, value in state.items():
        if arch_transposed and layout.get(key) == "in_out":
            value = value.T
        torch_state[key] = torch.from_numpy(np.ascontiguousarray(value))
    missing, unexpected = model.load_state_dict(torch_state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight") and "rotary" not in m and "masked_bias" not in m]
    if missing or unexpected:
        raise MergeError(f"merged weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(str(out), safe_serialization=True)
    for name in manifest.tokenizer_files:
        src = model_dir / name
        if src.is_file():
            shutil.copy2(src, out / name)


def _int4_params(model_dir: Path) -> dict[str, np.ndarray]:
    """The float weights an INT4 training graph computes with: float initializers + dequantized MatMulNBits."""
    import onnx
    from onnx import numpy_helper

    from export.quantize import dequantize_matmulnbits

    graph = onnx.load(str(model_dir / contract.GRAPH_FILE))
    prefix = contract.param_name("")
    quantized = {name for n in graph.graph.node if n.op_type == "MatMulNBits" for name in n.input[1:]}
    out = {
        i.name.removeprefix(prefix): numpy_helper.to_array(i)
        for i in graph.graph.initializer
        if i.name.startswith(prefix) and i.data_type == onnx.TensorProto.FLOAT and i.name not in quantized
    }
    out.update({k.removeprefix(prefix): v for k, v in dequantize_matmulnbits(graph).items()})
    return out


def _export_onnx(hf_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), str(out), task="text-generation-with-past", do_validation=False)
