"""``--format genai``: an onnxruntime-genai model folder (``genai/``) with LoRA inputs, and the run's adapter as
``genai/adapter.onnx_adapter``, so several personalisations are swapped at run time on one base::

    import onnxruntime_genai as og
    model = og.Model("runs/rt-merged/genai")
    adapters = og.Adapters(model)
    adapters.load("runs/rt-merged/genai/adapter.onnx_adapter", "rt")     # any run on the same base model
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.set_active_adapter(adapters, "rt")                           # none active: the base model

How it is built (the real builder, not a hand-written ``genai_config.json``):

1. the base the run trained on (``MergeContext.base_hf``; INT4: its dequantized weights) and a PEFT LoRA folder
   for ``onnxruntime_genai.models.builder --extra_options adapter_path=...``. That folder has a LoRA pair on
   **every** linear the export targets (``manifest.linears``), zero where the run trained nothing, so the decoder
   graph has LoRA inputs wherever any run on this base can train: one ``genai/`` folder serves every run's adapter.
   ``lora_alpha = r`` makes the builder's scaling alpha / r exactly 1 (``MergeContext.lora``: B = Q, A = Pᵀ);
2. the builder (in a subprocess: it imports torch, transformers and peft, prints progress, and appends its own
   folder to ``sys.path``) writes ``model.onnx`` with each LoRA side path ``MatMul(x, A') -> MatMul(., B')`` whose
   weights are initializers named ``<node>.lora_A.MatMul.weight`` [d_in, r] and ``<node>.lora_B.MatMul.weight``
   [r, d_out] (``A' = Aᵀ``, ``B' = scaling·Bᵀ``), plus ``genai_config.json`` and the tokenizer;
3. ``_lora_to_inputs`` turns each of those initializers into a graph input of shape [d_in, R] / [R, d_out] (R a
   symbolic rank per layer) whose default is an *empty* initializer [d_in, 0] / [0, d_out]: ONNX Runtime's
   overridable-initializer pattern for LoRA (its ``AdapterFormat`` example does the same). Unfed, a side path
   adds (x·[d_in, 0])·[0, d_out] = 0: the base model exactly; an active adapter feeds its own rank;
4. the trained values (the layers the run trained; untrained ones are left out and stay at the empty default) are
   written with ``onnxruntime.AdapterFormat`` to ``adapter.onnx_adapter``.

Another run on the same base writes the same graph (same base weights, same LoRA inputs), so its
``adapter.onnx_adapter`` loads into the first run's ``genai/`` folder. The folder is fp32 on CPU; an INT4 base is
written at fp32 from its dequantized weights (the function that was trained): the builder's int4 path would
quantize the LoRA side paths too, which an adapter input cannot be.

onnxruntime-genai pin: its builder from 0.16 on imports model classes that exist only in transformers 5, which the
export side pins below 4.58; 0.15.2 builds with the export side's torch and transformers and needs only
onnxruntime>=1.28 (``pip install "zo-edge[genai]"``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats import FormatError, register_format

if TYPE_CHECKING:
    from export.merge import MergeContext

__all__ = ["ADAPTER_FILE", "GENAI_DIR", "LORA_A", "LORA_B", "write_genai"]

GENAI_DIR = "genai"
ADAPTER_FILE = "adapter.onnx_adapter"
#: how the builder names a LoRA side path's weights: <node scope>.lora_A.MatMul.weight / .lora_B.MatMul.weight
LORA_A = ".lora_A.MatMul.weight"
LORA_B = ".lora_B.MatMul.weight"
BUILDER = "onnxruntime_genai.models.builder"


def _check_builder() -> None:
    """The builder ships in the onnxruntime-genai wheel; without it the format cannot be written (one line)."""
    if importlib.util.find_spec("onnxruntime_genai") is None or importlib.util.find_spec("peft") is None:
        raise FormatError(
            "--format genai needs onnxruntime-genai's model builder and peft in this environment: "
            'pip install "zo-edge[genai]" peft'
        )


@register_format(
    "genai",
    help="onnxruntime-genai folder (genai/: genai_config.json, decoder with LoRA inputs, tokenizer, "
    "adapter.onnx_adapter)",
)
def write_genai(ctx: MergeContext, out: Path) -> list[str]:
    _check_builder()
    rank, factors = ctx.lora("genai")  # refuses dense runs and adapter-less checkpoints in one line
    if ctx.manifest.dtype == "int4":
        ctx.notes.append("genai: the INT4 base is written at fp32 from its dequantized weights (the trained function)")
    work = ctx.scratch / "genai"
    peft_dir, build = work / "peft", work / "build"
    _write_builder_peft(peft_dir, ctx, rank, factors)
    _run_builder(ctx.base_hf(), peft_dir, build, work / "cache")
    folder = out / GENAI_DIR
    trained = _lora_to_inputs(build, folder)
    _write_onnx_adapter(folder / ADAPTER_FILE, trained)
    shutil.rmtree(work)
    return [GENAI_DIR]


def _write_builder_peft(folder: Path, ctx: MergeContext, rank: int, factors) -> None:
    """A PEFT LoRA folder with a pair on every targeted linear: the run's factors, zeros (adds nothing) elsewhere.

    The builder only reads r, lora_alpha and target_modules from the config and the weights from the safetensors
    (it wraps the base it was given with ``PeftModel.from_pretrained``), so nothing else needs to be right here."""
    from safetensors.numpy import save_file

    tensors = {}
    for spec in ctx.manifest.linears:
        b, a = factors.get(spec.name) or (np.zeros((spec.d_out, rank), np.float32), np.zeros((rank, spec.d_in)))
        tensors[f"base_model.model.{spec.name}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"base_model.model.{spec.name}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": rank,  # scaling = alpha / r = 1: the builder's B' = scaling * Bᵀ is Bᵀ exactly
        "lora_dropout": 0.0,
        "target_modules": sorted(s.name for s in ctx.manifest.linears),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def _run_builder(base_hf: Path, peft_dir: Path, out: Path, cache: Path) -> None:
    """The real builder, fp32 on CPU, in its own process; a failure keeps the builder's own last lines."""
    cmd = [sys.executable, "-m", BUILDER, "-i", str(base_hf), "-o", str(out), "-p", "fp32", "-e", "cpu"]
    cmd += ["-c", str(cache), "--extra_options", f"adapter_path={peft_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        if "is not currently supported" in tail:  # the builder's own refusal of an architecture: a user error
            last = tail.splitlines()[-1]
            raise FormatError(f"--format genai: onnxruntime-genai's builder refuses this model: {last}")
        raise RuntimeError(f"onnxruntime-genai's builder failed (exit {proc.returncode}):\n{tail}")


def _lora_to_inputs(build: Path, folder: Path) -> dict[str, np.ndarray]:
    """Builder folder -> ``folder`` whose LoRA weights are graph inputs with empty defaults (module docstring, 3).

    Returns name -> value of the LoRA weights of the layers the run trained (a pair whose A' and B' are both zero
    is an untrained layer of ``_write_builder_peft``: it stays at the empty default and out of the adapter)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(build / "model.onnx"))  # external data loaded too
    values: dict[str, np.ndarray] = {}
    kept = []
    for init in model.graph.initializer:
        if init.name.endswith((LORA_A, LORA_B)):
            values[init.name] = numpy_helper.to_array(init)
        else:
            kept.append(init)
    if not values:
        raise RuntimeError(f"the builder wrote no LoRA weights ({LORA_A}) into {build / 'model.onnx'}")
    for name, value in sorted(values.items()):
        rank_dim = name.rsplit(".lora_", 1)[0] + ".lora_rank"
        if name.endswith(LORA_A):
            shape, empty = [value.shape[0], rank_dim], np.zeros((value.shape[0], 0), value.dtype)
        else:
            shape, empty = [rank_dim, value.shape[1]], np.zeros((0, value.shape[1]), value.dtype)
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        model.graph.input.append(helper.make_tensor_value_info(name, elem, shape))
        kept.append(numpy_helper.from_array(empty, name))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    # The builder declares x·A' as [batch, seq, r] with its own r: with another rank fed (0 unfed) ORT's planner
    # would reuse a buffer of the declared shape and fail. Shape inference at load time gets it right without it.
    lora_a_outputs = {n.output[0] for n in model.graph.node if any(i.endswith(LORA_A) for i in n.input)}
    kept_info = [v for v in model.graph.value_info if v.name not in lora_a_outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    folder.mkdir(parents=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    for f in build.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, folder / f.name)
    trained = {}
    for name in values:
        if name.endswith(LORA_A):
            pair = name.removesuffix(LORA_A)
            a, b = values[name], values[pair + LORA_B]
            if np.any(a) or np.any(b):
                trained[name], trained[pair + LORA_B] = a, b
    return trained


def _write_onnx_adapter(path: Path, params: dict[str, np.ndarray]) -> None:
    """name -> array as ONNX Runtime's adapter file (``onnxruntime.AdapterFormat``), which genai's Adapters load."""
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
    adapter.export_adapter(str(path))
