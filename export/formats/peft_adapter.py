"""``--format peft``: the trained adapter as a standard PEFT LoRA folder (``peft/``), loaded with no merge::

    from peft import PeftModel
    model = PeftModel.from_pretrained(base, "runs/rt-merged/peft")     # base: the model the run trained on

ZO-Act's ΔW = C Aᵀ and the low-rank adapters of LOZO/SubZero/AGZO (ΔW = Q Pᵀ, ``runtime.trained_state.LowRank``)
are LoRA-shaped: ``lora_B = Q`` [d_out, r], ``lora_A = Pᵀ`` [r, d_in], and ``lora_alpha = r`` makes peft's scaling
alpha / r exactly 1 (``MergeContext.lora`` pads every layer to one r with zeros, which adds nothing). Keys are
peft's ``base_model.model.<module>.lora_A.weight``; ``target_modules`` lists the full module names, so peft wraps
exactly the layers that have an adapter. GPT-2's Conv1D gets ``fan_in_fan_out`` (its weight is [d_in, d_out]);
A and B keep the same shapes there.

The base: an fp32 export trained on its source's own weights, so ``base_model_name_or_path`` is that source (a
GGUF source loads with ``from_pretrained(folder, gguf_file=...)``). An INT4 export trained on the dequantized INT4
weights, which no source file holds: the base is written beside as ``hf-base/`` and named there.

Trained norm gains (``--layers head``, ``--kinds norm``: the demo's recipe, MeZO on the final norm) are carried
in full through peft's ``modules_to_save``: the module's name (``model.norm``) is listed there and its merged
tensors are saved as ``base_model.model.<module>.weight`` (the key peft itself writes: it strips the wrapper's
``modules_to_save.default.``; checked by saving one with peft 0.21). A run that trained norms only has no LoRA
layer: ``target_modules`` is then peft's ``"dummy-target-modules"`` (``peft.utils.constants.DUMMY_TARGET_MODULES``,
a LoRA that wraps nothing), which is how peft itself builds a modules_to_save-only adapter.

A run that changed other weights densely (MeZO or Zoop on linears, low-rank updates folded into fp32 weights) is
refused in one line (``MergeContext.lora``): use ``--format hf`` or ``gguf``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats import FormatError, register_format
from runtime import contract

if TYPE_CHECKING:
    from export.merge import MergeContext

__all__ = ["PEFT_DIR", "changed_params", "write_peft"]

PEFT_DIR = "peft"
BASE_DIR = "hf-base"
#: peft's target_modules for a LoRA that wraps no layer (an adapter of modules_to_save only)
DUMMY_TARGET_MODULES = "dummy-target-modules"


def changed_params(ctx: MergeContext) -> set[str]:
    """The trained params whose value differs from the base's. MeZO's checkpoints hold every bound parameter, and a
    ``--layers``/``--kinds`` run changes a few of them (the demo's head run: 3 norm gains of 211 saved tensors)."""
    if not ctx.trained_params or ctx.manifest.dtype != "fp32":
        return set(ctx.trained_params)
    from safetensors import safe_open

    with safe_open(str(ctx.model_dir / contract.PARAMS_FILE), framework="numpy") as f:
        base = set(f.keys())
        return {k for k, v in ctx.trained_params.items() if k not in base or not np.array_equal(f.get_tensor(k), v)}


def _saved_modules(ctx: MergeContext, changed: set[str]) -> dict[str, list[str]]:
    """module -> its merged state keys, for every module whose norm gain the run changed (peft modules_to_save).

    peft saves a modules_to_save module whole (every tensor of it: a norm's bias too, where it has one), so the
    merged values of all its tensors are written, not only the trained ones."""
    kinds = {p.name: p.kind for p in ctx.manifest.params}
    modules = sorted({k.rsplit(".", 1)[0] for k in changed if kinds.get(k) == contract.KIND_NORM})
    if not modules:
        return {}
    state = ctx.merged_state()
    return {m: sorted(k for k in state if k.rsplit(".", 1)[0] == m) for m in modules}


def _base_name(ctx: MergeContext, out: Path) -> str:
    """What ``base_model_name_or_path`` names: the source (fp32), or the dequantized base written beside (INT4)."""
    if ctx.manifest.dtype == "int4":
        ctx.base_hf(out / BASE_DIR)
        return str((ctx.out_dir / BASE_DIR).resolve())
    from export.source import SourceError, resolve_source

    try:
        src = resolve_source(ctx.manifest.source)
    except SourceError:  # an in-memory export, or a source moved since: the manifest's label is all we know
        return ctx.manifest.source
    return str((src.folder / src.gguf_file) if src.gguf_file else src.folder.resolve())


@register_format("peft", help="LoRA adapter for transformers + peft (peft/: adapter_config.json + safetensors)")
def write_peft(ctx: MergeContext, out: Path) -> list[str]:
    from safetensors.numpy import save_file

    from export.architectures import get_architecture

    changed = changed_params(ctx)
    saved = _saved_modules(ctx, changed)
    # what peft needs no LoRA for: the norm gains it carries whole, and saved params the run left as they were
    carried = frozenset(k for keys in saved.values() for k in keys) | (set(ctx.trained_params) - changed)
    rank, factors = ctx.lora("peft", carried=carried)
    if not factors and not saved:
        raise FormatError(f"--format peft: {ctx.checkpoint_path} changed no weight and holds no adapter")
    written = []
    base = _base_name(ctx, out)
    if ctx.manifest.dtype == "int4":
        written.append(BASE_DIR)
    folder = out / PEFT_DIR
    folder.mkdir(parents=True)
    tensors = {}
    for layer, (b, a) in factors.items():
        tensors[f"base_model.model.{layer}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        tensors[f"base_model.model.{layer}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
    state = ctx.merged_state() if saved else {}
    for key in (k for keys in saved.values() for k in keys):
        tensors[f"base_model.model.{key}"] = np.ascontiguousarray(state[key], np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    conv1d = get_architecture(ctx.manifest.model_type).weight_layout == contract.LAYOUT_IN_OUT
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank or 1,  # norms only: no LoRA layer, and peft's config wants r >= 1
        "lora_alpha": rank or 1,  # scaling = alpha / r = 1: ΔW = B A exactly
        "lora_dropout": 0.0,
        "target_modules": sorted(factors) or DUMMY_TARGET_MODULES,
        "fan_in_fan_out": conv1d,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": sorted(saved) or None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return [PEFT_DIR, *written]
