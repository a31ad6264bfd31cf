"""GPT-2: fused qkv Conv1D layers, stored [d_in, d_out] already (peft's fan_in_fan_out), learned positions."""

from __future__ import annotations

from export.architectures.base import Architecture, register_architecture


@register_architecture("gpt2")
class GPT2(Architecture):
    name = "gpt2"
    layers_path = "transformer.h"
    roles = {"qkv": "attn.c_attn", "o": "attn.c_proj", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}
    groups = {"attn_in": ("qkv",), "attn_out": ("o",), "mlp_in": ("fc1",), "mlp_out": ("fc2",)}
    weight_layout = "in_out"
    embed_path = "transformer.wte"
    lm_head_path = "lm_head"

    def tiny_config(self, model_type: str | None = None):
        from transformers import GPT2Config

        return GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=128, tie_word_embeddings=True)
