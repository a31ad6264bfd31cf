"""``zo-edge export``: Hugging Face causal LM -> ZO-ported ONNX training graph + manifest, written atomically.

    zo-edge export smollm2-135m --out artifacts/smollm2-fp32
    zo-edge export smollm2-135m --out artifacts/smollm2-int4 --int4 --block-size 32

Steps: load (float32, eager attention) -> swap targeted linears for PortedLinear -> trace TrainingForward with the
TorchScript exporter (8 s on a 100M model against 40 s for dynamo, and it keeps dynamic batch/seq/rank) -> move
every parameter initializer out of the graph into ``params.safetensors`` as a ``param::`` graph input -> rewrite
the LM head into one Gemm(transB) over the embedding -> (INT4) MatMulNBits for the linears, the float rest kept
in ``params.safetensors`` -> the split graphs (export/split.py) -> manifest. The folder is
built by ``runtime.atomic.atomic_folder`` (a hidden temporary sibling, renamed into place at the end; a forced
replace removes the old export only after the new one is in place), so a crash never leaves a half model that looks
whole. What differs between families (parameter kinds, constant buffers, weight layout, trace patches, the logits
hook) is declared on the family's ``Architecture`` (export/architectures/), never tested for here.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from export.architectures import get_architecture
from export.architectures.base import Architecture, transformers_version
from export.architectures.fused_attention import FUSED_ATTENTION, register_fused_attention
from export.config import ExportConfig
from export.graph import PortLayout, TrainingForward, install_ports
from export.quantize import quantize_int4
from export.source import ModelSource, resolve_source
from export.split import resolve_splits, write_split_graphs
from runtime import contract
from runtime.atomic import atomic_folder, check_replaceable
from runtime.errors import ZoEdgeError
from runtime.safetensors_io import safetensors_chunks

__all__ = ["ExportError", "export_model", "export_source"]

_WRAPPER_PREFIX = "model."  # TrainingForward keeps the HF model as attribute `model`


class ExportError(ZoEdgeError, RuntimeError):
    """An export that cannot be made from what the user gave (the message says what to change)."""


# --- tracing -------------------------------------------------------------------------------------------------
def _dummy_inputs(model: nn.Module, layout: PortLayout, basis_rank: int) -> tuple[list, list[str], dict]:
    """Example inputs with batch 2 and ragged left padding (a batch-1 example would pin the batch dim to 1)."""
    vocab = model.config.vocab_size
    batch, seq = 2, 6
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    attn = torch.ones(batch, seq, dtype=torch.long)
    attn[0, :2] = 0
    loss = torch.ones(batch, seq, dtype=torch.long)
    probe_rows = torch.tensor([2, 3, 6, 7, 8], dtype=torch.long)
    candidate_ids = torch.tensor([1, 4, 9], dtype=torch.long)
    args: list = [ids, attn, loss, probe_rows, candidate_ids]
    dyn: dict[str, dict[int, str]] = {
        contract.INPUT_IDS: {0: "batch", 1: "seq"},
        contract.INPUT_ATTENTION_MASK: {0: "batch", 1: "seq"},
        contract.INPUT_LOSS_MASK: {0: "batch", 1: "seq"},
        contract.INPUT_PROBE_ROWS: {0: "probe_rows"},
        contract.INPUT_CANDIDATE_IDS: {0: "candidates"},
        contract.OUTPUT_ROW_NLL: {0: "batch"},
        contract.OUTPUT_ROW_COUNT: {0: "batch"},
        contract.OUTPUT_ROW_CANDIDATE_LOGP: {0: "batch", 1: "candidates"},
    }
    # in layout.input_names() order: per linear its kept P/Q and noise ports, then per group its probe inputs
    lowrank, noise = contract.PORTS_LOWRANK in layout.ports, contract.PORTS_NOISE in layout.ports
    for i, m in enumerate(layout.linears):
        if lowrank:
            args += [torch.zeros(m.d_in, 2), torch.zeros(m.d_out, 2)]
            dyn[contract.port_p(m.name)] = {1: f"rank_{i}"}
            dyn[contract.port_q(m.name)] = {1: f"rank_{i}"}
        if noise:
            args.append(torch.zeros(batch, seq, m.d_out))
            dyn[contract.port_noise(m.name)] = {0: f"noise_b_{i}", 1: f"noise_t_{i}", 2: f"noise_d_{i}"}
    for j, (group, d_in) in enumerate(layout.groups.items() if contract.PORTS_PROBE in layout.ports else ()):
        args += [torch.randn(d_in, basis_rank, generator=g), torch.randn(d_in, 3, generator=g), torch.arange(3)]
        dyn[contract.probe_sketch_omega(group)] = {1: f"sketch_{j}"}
        dyn[contract.probe_act_rows(group)] = {0: f"act_{j}"}
        dyn[contract.probe_sketch(group)] = {1: f"sketch_{j}"}
        dyn[contract.probe_act(group)] = {0: f"act_{j}"}
    if contract.PORTS_PROBE not in layout.ports:  # probe_rows feeds the probes only: not an input without them
        del dyn[contract.INPUT_PROBE_ROWS]
    names = [
        contract.INPUT_IDS,
        contract.INPUT_ATTENTION_MASK,
        contract.INPUT_LOSS_MASK,
        contract.INPUT_PROBE_ROWS,
        contract.INPUT_CANDIDATE_IDS,
    ]
    return args, names + layout.input_names(), dyn


def _trace(wrapper: TrainingForward, layout: PortLayout, cfg: ExportConfig, path: Path) -> None:
    args, input_names, dyn = _dummy_inputs(wrapper.model, layout, cfg.basis_rank)
    output_names = [
        contract.OUTPUT_ROW_NLL,
        contract.OUTPUT_ROW_COUNT,
        contract.OUTPUT_ROW_CANDIDATE_LOGP,
        *layout.output_names(),
    ]
    with wrapper.arch.patched_for_tracing(wrapper.model):
        trace_to_onnx(wrapper, tuple(args), path, input_names, output_names, dyn, cfg.opset)


def trace_to_onnx(module: nn.Module, args: tuple, path: Path, input_names, output_names, dyn, opset: int) -> None:
    """torch.onnx.export (TorchScript) with the settings every zo-edge graph needs (the split graphs too).

    The graph is traced without its weights (``export_params=False``): every parameter is a graph input named by
    its ``named_parameters`` key, and ``_lift_params`` takes the values from the torch module itself. Exporting them
    made the exporter hold each weight three times (the module, torch's serialised proto, the loaded proto; about
    2.7x the weights at peak, RESULTS.md §11.2), which is what kept a 1.7B model from exporting in 24 GB.
    """
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dyn,
            opset_version=opset,
            dynamo=False,
            export_params=False,
            # Folding would bake transposed copies of weights into new constants (the tied embedding ends up
            # twice); onnxruntime folds what is really constant at session start anyway.
            do_constant_folding=False,
            # True also skips the exporter's value-based initializer dedup, which would merge distinct parameters
            # that happen to hold equal values (every freshly initialised norm weight). Tied weights are one
            # Parameter and stay one name.
            keep_initializers_as_inputs=True,
        )


# --- graph surgery -------------------------------------------------------------------------------------------
def _head_param_key(model: nn.Module, arch: Architecture, arrays: dict[str, np.ndarray]) -> str:
    """The key a traced graph's lifted params (``arrays``) hold the LM head under: its own, or, tied, the
    embedding's (the exporter keeps one name for a shared tensor)."""
    head = arch.lm_head_weight(model)
    names = [k for k, p in model.named_parameters(remove_duplicate=False) if p is head]
    own = [k for k in names if k in arrays]
    return own[0] if own else next(k for k in arrays if k.startswith(arch.embed_path))


def _lift_params(
    graph_model: onnx.ModelProto, arch: Architecture, layout: PortLayout, module: nn.Module
) -> tuple[dict[str, np.ndarray], list[contract.ParamSpec]]:
    """Name every model-parameter input of a graph traced by ``trace_to_onnx`` ``param::<key>``; return the values.

    The arrays are numpy views of ``module``'s own tensors (no copy: the caller saves or quantizes them before the
    module changes). A constant buffer of the family (e.g. rotary ``inv_freq``) or a non-float tensor is not a
    parameter: it becomes an initializer of the graph again.
    """
    graph = graph_model.graph
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    arrays: dict[str, np.ndarray] = {}
    specs: list[contract.ParamSpec] = []
    linear_weights = {f"{m.name}.weight" for m in layout.linears}
    renames: dict[str, str] = {}
    inputs = []
    for value in graph.input:
        tensor = tensors.get(value.name) if value.name.startswith(_WRAPPER_PREFIX) else None
        if tensor is None:
            inputs.append(value)
            continue
        key = value.name[len(_WRAPPER_PREFIX) :]
        arr = tensor.detach().numpy()
        if arch.is_constant_buffer(key) or arr.dtype != np.float32:
            graph.initializer.append(numpy_helper.from_array(arr, value.name))
            continue
        arrays[key] = arr
        if key in linear_weights:  # PortedLinear holds it [d_in, d_out] whatever the family's HF layout
            kind, layout_name = contract.KIND_LINEAR, contract.LAYOUT_IN_OUT
        else:
            kind, layout_name = arch.param_kind(key), contract.LAYOUT_HF
        specs.append(contract.ParamSpec(name=key, shape=list(arr.shape), kind=kind, layout=layout_name))
        renames[value.name] = contract.param_name(key)
        inputs.append(helper.make_tensor_value_info(contract.param_name(key), onnx.TensorProto.FLOAT, arr.shape))
    del graph.input[:]
    graph.input.extend(inputs)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return arrays, specs


def _head_to_gemm(graph_model: onnx.ModelProto, head_input: str) -> int:
    """Rewrite MatMul(h, Transpose(E)) into Gemm(h, E, transB=1) for the LM head: no [d, V] transposed copy."""
    graph = graph_model.graph
    transposes = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and n.input[0] == head_input}
    rewritten = 0
    for idx, node in enumerate(list(graph.node)):
        if node.op_type == "MatMul" and node.input[1] in transposes:
            gemm = helper.make_node("Gemm", [node.input[0], head_input], list(node.output), name=node.name, transB=1)
            graph.node.remove(node)
            graph.node.insert(idx, gemm)
            rewritten += 1
    used = {i for n in graph.node for i in n.input}
    for out, t in transposes.items():
        if out not in used:
            graph.node.remove(t)
    return rewritten


# --- folder --------------------------------------------------------------------------------------------------
def _save_graph(model: onnx.ModelProto, path: Path) -> None:
    external = model.ByteSize() > (1 << 30) or any(i.ByteSize() > (1 << 20) for i in model.graph.initializer)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


# --- entry points --------------------------------------------------------------------------------------------
def export_model(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    cfg: ExportConfig | None = None,
    *,
    source_label: str = "<in-memory>",
    weights_sha256: str = "",
    force: bool = False,
    architecture: Architecture | None = None,
) -> contract.Manifest:
    """Export an already loaded HF causal LM (tests pass tiny random models here). ``model`` is modified.

    ``weights_sha256`` names the base in the manifest (``export_source`` passes the source files' hash); when empty,
    the hash of the exported float parameters is recorded instead, so every export names its base. ``architecture``
    replaces the registry's declaration for ``model.config.model_type`` (tests of the hooks use it).
    """
    cfg = cfg or ExportConfig()
    out_dir = Path(out_dir)
    arch = architecture or get_architecture(model.config.model_type)
    roles = arch.resolve_roles(cfg.targets)
    check_replaceable(out_dir, force=force)  # before the model is touched
    t0 = time.time()
    model = model.float().eval()
    hf_config = model.config.to_dict()
    if cfg.attention == "fused":
        _use_fused_attention(model, arch)
    layout = install_ports(model, arch, roles, cfg.basis_rank, frozenset(cfg.port_families))
    wrapper = TrainingForward(model, arch, layout, cfg.power_iters)
    with atomic_folder(out_dir, force=force) as tmp:
        traced = tmp / "traced.onnx"
        _trace(wrapper, layout, cfg, traced)
        graph_model = onnx.load(str(traced))
        traced.unlink()
        arrays, specs = _lift_params(graph_model, arch, layout, wrapper)
        head_name = contract.param_name(_head_param_key(model, arch, arrays))
        if _head_to_gemm(graph_model, head_name) != 1:
            raise ExportError("could not locate the LM head MatMul in the traced graph")
        weights_sha256 = weights_sha256 or _arrays_sha256(arrays)
        if cfg.int4:
            embed_name = contract.param_name(next(k for k in arrays if k.startswith(arch.embed_path)))
            floats = quantize_int4(
                graph_model,
                arrays,
                cfg.block_size,
                accuracy_level=cfg.accuracy_level,
                embedding=(embed_name, head_name) if cfg.int4_embedding else None,
            )
            specs = [s for s in specs if s.name in floats]  # the norms (and a float embedding) stay bound inputs
            saved = {k: v for k, v in arrays.items() if k in floats}
        else:
            saved = arrays
        with (tmp / contract.PARAMS_FILE).open("wb") as fh:  # streamed from the arrays: no copy of the model
            fh.writelines(safetensors_chunks(saved))
        _save_graph(graph_model, tmp / contract.GRAPH_FILE)
        splits = resolve_splits(cfg.splits, len(model.get_submodule(arch.layers_path)), arch, cfg.int4)
        write_split_graphs(wrapper, cfg, tmp, splits, saved)
        tokenizer_files = _save_tokenizer(tokenizer, tmp)
        manifest = contract.Manifest(
            format_version=contract.FORMAT_VERSION,
            architecture=arch.name,
            model_type=model.config.model_type,
            source=source_label,
            weights_sha256=weights_sha256,
            dtype="int4" if cfg.int4 else "fp32",
            int4_block_size=cfg.block_size if cfg.int4 else None,
            basis_rank=cfg.basis_rank,
            power_iters=cfg.power_iters,
            vocab_size=model.config.vocab_size,
            pad_token_id=_pad_id(tokenizer),
            bos_token_id=getattr(tokenizer, "bos_token_id", None),
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
            tokenizer_files=tokenizer_files,
            hf_config=hf_config,
            params=specs,
            linears=[
                contract.LinearSpec(
                    name=m.name,
                    role=_role_of(m.name, arch),
                    d_in=m.d_in,
                    d_out=m.d_out,
                    group=m.group,
                    weight=None if cfg.int4 else f"{m.name}.weight",
                    bias=None if (cfg.int4 or m.bias is None) else f"{m.name}.bias",
                )
                for m in layout.linears
            ],
            groups=[
                contract.GroupSpec(name=g, d_in=d, layers=[m.name for m in layout.linears if m.group == g])
                for g, d in layout.groups.items()
            ],
            export_seconds=round(time.time() - t0, 2),
            splits=splits,
            features=_features(cfg, head_split=len(model.get_submodule(arch.layers_path)) in splits),
            ports=cfg.port_families,
        )
        (tmp / contract.MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def export_source(model: str, out_dir: str | Path, cfg: ExportConfig | None = None, force: bool = False):
    """Export from what the user typed: a folder, a .gguf, or an alias. Errors are one line (SourceError...)."""
    out_dir = check_replaceable(out_dir, force=force)  # before anything is loaded
    src: ModelSource = resolve_source(model)
    from transformers import AutoConfig

    # An unsupported folder fails here in one line, before weights and tokenizer load (which may fail obscurely,
    # e.g. an AttributeError from a tokenizer conversion). Not for GGUF: reading its config costs ~8 s.
    if src.gguf_file is None:
        get_architecture(AutoConfig.from_pretrained(src.folder).model_type)
    hf_model, tokenizer = src.load()
    return export_model(
        hf_model, tokenizer, out_dir, cfg, source_label=src.label, weights_sha256=src.weights_sha256(), force=force
    )


def _use_fused_attention(model: nn.Module, arch: Architecture) -> None:
    """Switch ``model``'s attention to export/architectures/fused_attention.py (checked first, one-line errors)."""
    problem = arch.fused_attention_problem(model.config)
    if problem:
        raise ExportError(f"--attention fused: {problem}; use --attention eager")
    if transformers_version() < (4, 53):  # the ready-4D-mask trace patch hands the blocks the key-padding bias
        raise ExportError("--attention fused needs transformers >= 4.53; upgrade it or use --attention eager")
    register_fused_attention()
    model.config._attn_implementation = FUSED_ATTENTION


def _features(cfg: ExportConfig, head_split: bool = False) -> list[str]:
    """The manifest's optional capabilities: every export's, plus those of the options chosen (``head_split``:
    the splits include the head's, so export/split.py wrote the candidates' head beside its pair)."""
    features = list(contract.FEATURES)
    if head_split:
        features.append(contract.FEATURE_CANDIDATE_HEAD)
    if cfg.attention == "fused":
        features.append(contract.FEATURE_FUSED_ATTENTION)
    if cfg.int4_embedding:
        features.append(contract.FEATURE_INT4_EMBEDDING)
    return features


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the exported float parameters (name, shape and bytes, in name order): the base's identity when
    no source files were hashed (an in-memory model)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _role_of(layer_name: str, arch: Architecture) -> str:
    return next(role for role, path in arch.roles.items() if layer_name.endswith("." + path))


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _save_tokenizer(tokenizer, out: Path) -> list[str]:
    """Copy the tokenizer beside the graph; the runtime reads tokenizer.json with `tokenizers` alone."""
    if tokenizer is None:
        return []
    before = set(os.listdir(out))
    tokenizer.save_pretrained(str(out))
    files = sorted(set(os.listdir(out)) - before)
    if "tokenizer.json" not in files:
        raise ExportError("the tokenizer has no fast (tokenizer.json) form; zo-edge's runtime needs one")
    # tokenizer.json is complete on its own; the slow sentencepiece model (98 MB for SmolLM2's GGUF) is dead weight
    for slow in ("tokenizer.model", "spiece.model"):
        if slow in files:
            (out / slow).unlink()
            files.remove(slow)
    return files
