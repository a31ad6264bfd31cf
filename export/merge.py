"""``zo-edge merge RUN --out DIR [--format adapter,hf,onnx,peft,gguf,...]``: make what a run trained deployable.

Each ``--format`` is one writer in the registry of ``export.formats`` (peft and gguf live there, one module each);
the default (no ``--format``) is what merge always wrote, registered here:

* ``adapter``: the adapter alone (``adapter.safetensors`` with P/Q per layer, ΔW = Q Pᵀ in HF orientation, plus
  ``adapter.json`` naming the base by its weight hash), so several personalisations can share one base.
* ``hf``: the trained weights (folded updates, plus any adapter C Aᵀ / Q Pᵀ folded in) as a Hugging Face folder
  (``hf/``: safetensors + config + tokenizer) that transformers loads;
* ``onnx``: that folder exported with optimum-onnx (``main_export``, task text-generation-with-past) to ``onnx/``,
  which optimum's ORTModelForCausalLM and ``zo-edge generate`` load. INT4 base: folding ΔW into the weights and
  re-quantizing would change the function that was trained. So ``onnx-int4/`` is the base exported with optimum
  from its *dequantized* weights, re-quantized with the same MatMulNBits settings (symmetric re-quantization of
  dequantized blocks reproduces the same codes and scales), with the trained low-rank branch y += (x A) Cᵀ added
  beside each quantized MatMul as float initializers: the function that was trained, at INT4 size, with a KV
  cache. ``hf/`` + ``onnx/`` hold the same function in fp32 (dequantized base + ΔW) for tools that want a plain
  model.

``MergeContext`` is what every writer gets: the trained state and the products writers share (merged state dict,
merged/base HF folders, LoRA factors), each built once. Array names are ``runtime.contract``'s (one scheme for
checkpoints and ``adapter.safetensors``); what differs by family (HF weight layout, buffers the HF model rebuilds)
comes from the ``Architecture`` declaration. The output is built by ``runtime.atomic.atomic_folder``: a failed (even
forced) merge leaves the previous output untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from export.formats import FormatError, register_format
from runtime import checkpoint, contract
from runtime.atomic import atomic_folder, check_replaceable
from runtime.contract import Manifest
from runtime.errors import ZoEdgeError

__all__ = ["MergeContext", "MergeError", "merge_run"]


class MergeError(ZoEdgeError, ValueError):
    """A run folder or checkpoint that cannot be merged (the message says why and what to do)."""


def _adapters(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """layer -> (Q [d_out, k], P [d_in, k]) of every adapter in a checkpoint's arrays (names: runtime.contract)."""
    factors: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        parsed = contract.parse_adapter_name(key)
        if parsed is not None:
            factors.setdefault(parsed[0], {})[parsed[1]] = value
    out = {}
    for layer, qp in sorted(factors.items()):
        if set(qp) != {"q", "p"}:
            raise MergeError(f"the checkpoint holds only the {next(iter(qp))} factor of {layer}'s adapter")
        out[layer] = (qp["q"], qp["p"])
    return out


def _trained_params(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF key -> trained value of every parameter a run changed in place (methods that change the weights)."""
    out = {}
    for key, value in arrays.items():
        name = contract.parse_checkpoint_param_name(key)
        if name is not None:
            out[name] = value
    return out


def _check_base(meta: dict, manifest: Manifest, ckpt: Path, model_dir: Path) -> None:
    """A checkpoint that records its base's hash must have been trained on this model folder's base."""
    recorded = meta.get(contract.META_WEIGHTS_SHA256)
    if recorded and manifest.weights_sha256 and recorded != manifest.weights_sha256:
        raise MergeError(
            f"{ckpt} was trained on another base (weights {recorded[:12]}...) than {model_dir} "
            f"({manifest.weights_sha256[:12]}...); merge it with the model folder it was trained on"
        )


class MergeContext:
    """What every format writer gets (``export.formats``): the run's trained state, its base, and the products
    several writers share, each built once on first use (the merged HF state dict, merged/base HF folders).

    ``adapters``: layer -> (Q [d_out, k], P [d_in, k]), ΔW = Q Pᵀ in HF orientation (runtime.trained_state's one
    factor order; ZO-Act's C Aᵀ is Q = C, P = A). ``trained_params``: HF key -> new value of every tensor the run
    changed in place (MeZO, Zoop, low-rank methods folded into fp32 weights): a dense update.
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        out_dir: Path,
        model_dir: Path,
        manifest: Manifest,
        arrays: dict[str, np.ndarray],
        checkpoint_path: Path,
        formats: list[str],
        scratch: Path,
        gguf_metadata: Path | None = None,
    ) -> None:
        self.run_dir, self.out_dir, self.model_dir = run_dir, out_dir, model_dir
        self.manifest = manifest
        self.arrays = arrays
        self.checkpoint_path = checkpoint_path
        self.formats = formats
        self.scratch = scratch
        self.gguf_metadata = gguf_metadata
        self.adapters = _adapters(arrays)
        self.trained_params = _trained_params(arrays)
        #: one line per thing a writer chose not to write, and why (the CLI prints them)
        self.notes: list[str] = []
        self._state: dict[str, np.ndarray] | None = None
        self._hf: dict[str, Path] = {}

    def merged_state(self) -> dict[str, np.ndarray]:
        """HF state dict (numpy float32, the family's HF layout) of base + trained params + ΔW of every adapter."""
        if self._state is None:
            self._state = _merged_state(self.model_dir, self.manifest, self.arrays, self.adapters)
        return self._state

    def merged_hf(self, out_root: Path) -> Path:
        """The merged model as an HF folder: ``out_root/hf`` when ``hf`` is a requested format, else scratch."""
        if "merged" not in self._hf:
            path = out_root / "hf" if "hf" in self.formats else self.scratch / "hf"
            _write_hf(path, self.model_dir, self.manifest, self.arrays, self.adapters, state=self.merged_state())
            self._hf["merged"] = path
        return self._hf["merged"]

    def base_hf(self, path: Path | None = None) -> Path:
        """The base the run trained on (INT4: dequantized) as an HF folder, at ``path`` or in scratch."""
        if "base" not in self._hf:
            path = path or self.scratch / "base-hf"
            _write_hf(path, self.model_dir, self.manifest, {}, {})
            self._hf["base"] = path
        elif path is not None and path != self._hf["base"]:  # built in scratch by an earlier writer (genai)
            shutil.copytree(self._hf["base"], path)
            self._hf["base"] = path
        return self._hf["base"]

    def lora(self, fmt: str, *, carried: frozenset[str] = frozenset()) -> tuple[int, dict[str, tuple]]:
        """(rank r, layer -> (B [d_out, r], A [r, d_in])) with ΔW = B A exactly, for a LoRA format ``fmt``.

        Layers whose rank is below r are padded with zero columns/rows (exact: they add nothing), so one
        ``lora_alpha = r`` gives every layer the scaling 1 that LoRA consumers compute as alpha / r.
        Refused in one line when the run changed weights densely (no LoRA can hold that) or holds no adapter.
        ``carried``: trained params the format needs no LoRA for (peft's modules_to_save norm gains, or saved
        params the run left unchanged); with some, no adapter is (0, {})."""
        dense = [k for k in self.trained_params if k not in carried]
        if dense:
            raise FormatError(
                f"--format {fmt}: {self.checkpoint_path} changed {len(dense)} weight tensors in place "
                "(a dense update: mezo/zoop, or lozo/subzero/agzo folded into fp32 weights), which no LoRA adapter "
                "can hold; use --format hf or gguf (the merged model), or train zo-act, or lozo/subzero/agzo on an "
                "INT4 export (they train an adapter there)"
            )
        factors = {k: v for k, v in self.adapters.items() if v[0].shape[1] > 0}
        if not factors and carried:
            return 0, {}
        if not factors:
            raise FormatError(f"--format {fmt}: {self.checkpoint_path} holds no adapter; use --format hf")
        rank = max(q.shape[1] for q, _ in factors.values())
        out = {}
        for layer, (q, p) in factors.items():
            b = np.zeros((q.shape[0], rank), np.float32)
            a = np.zeros((rank, p.shape[0]), np.float32)
            b[:, : q.shape[1]] = q
            a[: p.shape[1]] = p.T
            out[layer] = (b, a)
        return rank, out


def merge_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    which: str = "best",
    formats: list[str] | None = None,
    onnx: bool = True,
    force: bool = False,
    gguf_metadata: str | Path | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write ``run_dir``'s trained state into ``out_dir`` in each of ``formats`` (``export.formats``; None: the
    default ones, ``onnx`` False drops the ONNX export). Nothing is left at ``out_dir`` unless all succeed.
    ``notes`` (a list) receives a line for each output a writer skipped, and why."""
    from export.formats import parse_formats, registered_formats

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    names = parse_formats(formats, onnx=onnx)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise MergeError(f"{run_dir} is not a zo-edge run folder (no config.json)")
    try:
        recorded = json.loads(cfg_path.read_text())
        model_dir = Path(recorded["model"])
    except (ValueError, KeyError, TypeError):
        raise MergeError(
            f'{cfg_path} is not a zo-edge run config (unreadable JSON or no "model" entry); pass the run folder '
            "zo-edge train wrote, or restore its config.json"
        ) from None
    manifest = Manifest.load(model_dir)
    check_replaceable(out_dir, force=force)  # before anything is loaded
    arrays, meta, ckpt = checkpoint.load_trained_checkpoint(run_dir, which)
    _check_base(meta, manifest, ckpt, model_dir)
    writers = registered_formats()
    with atomic_folder(out_dir, force=force) as tmp:
        ctx = MergeContext(
            run_dir=run_dir,
            out_dir=out_dir,
            model_dir=model_dir,
            manifest=manifest,
            arrays=arrays,
            checkpoint_path=ckpt,
            formats=names,
            scratch=tmp / ".scratch",
            gguf_metadata=Path(gguf_metadata) if gguf_metadata else None,
        )
        for name in names:
            writers[name].write(ctx, tmp)
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    if notes is not None:
        notes.extend(ctx.notes)
    return out_dir


# --- zo-edge's own formats ----------------------------------------------------------------------------------------
@register_format("adapter", default=True, help="zo-edge's adapter (adapter.safetensors P/Q + adapter.json)")
def _format_adapter(ctx: MergeContext, out: Path) -> list[str]:
    _write_adapter(out, ctx.adapters, ctx.manifest, ctx.checkpoint_path)
    return [contract.ADAPTER_FILE, contract.ADAPTER_INFO_FILE]


@register_format("hf", default=True, help="merged Hugging Face folder (hf/: safetensors, config, tokenizer)")
def _format_hf(ctx: MergeContext, out: Path) -> list[str]:
    ctx.merged_hf(out)
    return ["hf"]


@register_format(
    "onnx", default=True, help="optimum KV-cache ONNX of the merged model (onnx/; INT4 base: also onnx-int4/)"
)
def _format_onnx(ctx: MergeContext, out: Path) -> list[str]:
    _export_onnx(ctx.merged_hf(out), out / "onnx")
    if ctx.manifest.dtype != "int4":
        return ["onnx"]
    base = ctx.base_hf()
    if ctx.trained_params:  # the norms an INT4 run trained are float there: they go in as they are (exact)
        base = ctx.scratch / "trained-base-hf"
        _write_hf(base, ctx.model_dir, ctx.manifest, ctx.arrays, {})
    _int4_with_adapter(base, out / "onnx-int4", ctx.manifest, ctx.adapters)
    return ["onnx", "onnx-int4"]


def _write_adapter(out: Path, adapters, manifest: Manifest, ckpt: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {}
    for layer, (q, p) in adapters.items():
        tensors[contract.adapter_q_name(layer)] = np.ascontiguousarray(q, np.float32)
        tensors[contract.adapter_p_name(layer)] = np.ascontiguousarray(p, np.float32)
    if tensors:
        save_file(tensors, str(out / contract.ADAPTER_FILE))
    info = {
        "base_weights_sha256": manifest.weights_sha256,
        "base_source": manifest.source,
        "base_dtype": manifest.dtype,
        "checkpoint": str(ckpt),
        "layers": sorted(adapters),
        "names": {"q": contract.adapter_q_name("<layer>"), "p": contract.adapter_p_name("<layer>")},
        "formula": "W_hf[layer] += Q @ P.T  (Q [d_out, r], P [d_in, r]; HF [d_out, d_in] orientation)",
    }
    (out / contract.ADAPTER_INFO_FILE).write_text(json.dumps(info, indent=1))


def _merged_state(model_dir: Path, manifest: Manifest, arrays, adapters) -> dict[str, np.ndarray]:
    """Params (folded training updates if the run changed them) + adapters ΔW -> the HF state dict (numpy)."""
    from safetensors.numpy import load_file

    from export.architectures import get_architecture

    arch = get_architecture(manifest.model_type)
    params = load_file(str(model_dir / contract.PARAMS_FILE)) if manifest.params else {}
    if manifest.dtype == "int4":
        params.update(_int4_params(model_dir))
    params.update(_trained_params(arrays))
    # Targeted linear weights are bound as "[d_in, d_out] storage" (fp32: ParamSpec.layout; INT4 dequantizes to the
    # same); ΔW = Q Pᵀ is "HF [d_out, d_in]". Work in [d_out, d_in], then store in the family's HF layout.
    stored_in_out = {f"{s.name}.weight" for s in manifest.linears}
    state = {}
    for key, value in params.items():
        w = value.T if key in stored_in_out else value
        state[key] = np.array(w, dtype=np.float32, copy=True)
    for spec in manifest.linears:
        if spec.name in adapters:
            q, p = adapters[spec.name]
            state[f"{spec.name}.weight"] += q.astype(np.float64) @ p.astype(np.float64).T
    if arch.weight_layout == contract.LAYOUT_IN_OUT:  # GPT-2's Conv1D
        for key in stored_in_out & set(state):
            state[key] = np.ascontiguousarray(state[key].T)
    return state


def _write_hf(out: Path, model_dir: Path, manifest: Manifest, arrays, adapters, state=None) -> None:
    """The merged state (``_merged_state``, or ``state`` when already built) -> an HF folder transformers loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from export.architectures import get_architecture

    arch = get_architecture(manifest.model_type)
    state = _merged_state(model_dir, manifest, arrays, adapters) if state is None else state
    config = AutoConfig.for_model(**manifest.hf_config)
    model = AutoModelForCausalLM.from_config(config)
    torch_state = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}
    missing, unexpected = model.load_state_dict(torch_state, strict=False)
    # What the HF model rebuilds itself: its constant buffers, and a tied head (tie_weights below)
    tied_head = f"{arch.lm_head_path}.weight" if config.tie_word_embeddings else None
    missing = [m for m in missing if m != tied_head and not arch.is_constant_buffer(m)]
    if missing or unexpected:
        raise MergeError(f"merged weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.save_pretrained(str(out), safe_serialization=True)
    for name in manifest.tokenizer_files:
        src = model_dir / name
        if src.is_file():
            shutil.copy2(src, out / name)


def _int4_params(model_dir: Path) -> dict[str, np.ndarray]:
    """The weights an INT4 training graph holds in itself: float initializers (exports before the float tensors
    moved to params.safetensors) + dequantized MatMulNBits / GatherBlockQuantized."""
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


def _node_path(layer: str) -> str:
    """HF module path -> the torch exporter's node scope: model.layers.0.mlp.up_proj -> /model/layers.0/mlp/up_proj"""
    parts: list[str] = []
    for piece in layer.split("."):
        if piece.isdigit() and parts:
            parts[-1] += "." + piece
        else:
            parts.append(piece)
    return "/" + "/".join(parts)


def _int4_with_adapter(base_hf: Path, out: Path, manifest: Manifest, adapters) -> None:
    """optimum KV-cache export of the dequantized base -> MatMulNBits on the targeted linears -> adapter branches.

    Each branch, beside its quantized node::

        x ──MatMulNBits(W4)──▶ y_base ──Add──▶ y
        └──MatMul(A [d_in,r])──MatMul(Cᵀ [r,d_out])──┘
    """
    import logging

    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    fp32 = out.with_name(out.name + ".fp32")
    _export_onnx(base_hf, fp32)
    model = onnx.load(str(fp32 / "model.onnx"))
    matmuls = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    include = []
    for spec in manifest.linears:
        name = _node_path(spec.name) + "/MatMul"
        if name not in matmuls:
            raise MergeError(
                f"no MatMul node {name} in the optimum export ({manifest.architecture} is not supported here)"
            )
        include.append(name)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        model, bits=4, block_size=manifest.int4_block_size or 32, is_symmetric=True, nodes_to_include=include
    )
    q.process()
    model = q.model.model
    by_prefix = {n.name.rsplit("/", 1)[0]: n for n in model.graph.node if n.op_type == "MatMulNBits"}
    new_nodes = []
    for spec in manifest.linears:
        if spec.name not in adapters or adapters[spec.name][0].shape[1] == 0:
            continue
        node = by_prefix[_node_path(spec.name)]
        c, a = adapters[spec.name]
        tag = _node_path(spec.name) + "/zo_adapter"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(a, np.float32), tag + "/A"),
                numpy_helper.from_array(np.ascontiguousarray(c.T, np.float32), tag + "/Ct"),
            ]
        )
        y = node.output[0]
        node.output[0] = tag + "/base_out"
        new_nodes += [
            helper.make_node("MatMul", [node.input[0], tag + "/A"], [tag + "/xa"], name=tag + "/MatMul_A"),
            helper.make_node("MatMul", [tag + "/xa", tag + "/Ct"], [tag + "/delta"], name=tag + "/MatMul_C"),
            helper.make_node("Add", [tag + "/base_out", tag + "/delta"], [y], name=tag + "/Add"),
        ]
    model.graph.node.extend(new_nodes)
    model = _toposort(model)
    onnx.checker.check_model(model)
    out.mkdir(parents=True)
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    for f in fp32.iterdir():
        if not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    shutil.rmtree(fp32)


def _toposort(model):
    """Kahn's algorithm, keeping the original order where possible: the appended branch nodes must come before
    the consumers of the outputs they now produce (ONNX requires topological order)."""
    from collections import deque

    graph = model.graph
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    queue = deque(i for i, p in enumerate(pending) if p == 0)
    order = []
    while queue:
        i = queue.popleft()
        order.append(nodes[i])
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                queue.append(u)
    assert len(order) == len(nodes), "the adapter branches made the graph cyclic"
    del graph.node[:]
    graph.node.extend(order)
    return model


def _export_onnx(hf_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), str(out), task="text-generation-with-past", do_validation=False)
