"""GPT-2: fused qkv Conv1D layers, stored [d_in, d_out] already (peft's fan_in_fan_out), learned positions."""

from __future__ import annotations

from export.architectures.base import Architecture, register_architecture
from runtime import contract


@register_architecture("gpt2")
class GPT2(Architecture):
    name = "gpt2"
    layers_path = "transformer.h"
    roles = {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
    groups = {"attn_in": ("qkv",), "attn_out": ("o",), "mlp_in": ("fc1",), "mlp_out": ("fc2",)}
    weight_layout = contract.LAYOUT_IN_OUT  # Conv1D: [d_in, d_out] in HF already
    embed_path = "transformer.wte"
    lm_head_path = "lm_head"
    param_kinds = (
        ("transformer.wte.weight", contract.KIND_EMBEDDING),
        ("transformer.wpe.weight", contract.KIND_EMBEDDING),  # learned positions
        ("lm_head.weight", contract.KIND_LM_HEAD),
        ("*.bias", contract.KIND_BIAS),  # the layer norms' biases too
        ("*.ln_?.weight", contract.KIND_NORM),
        ("transformer.ln_f.weight", contract.KIND_NORM),
    )
    constant_buffers = ("*.attn.bias", "*.attn.masked_bias")  # causal-mask buffers (non-persistent)

    def tiny_config(self, model_type: str | None = None, **overrides):
        from transformers import GPT2Config

        kw = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=128, tie_word_embeddings=True)
        return GPT2Config(**{**kw, **overrides})
