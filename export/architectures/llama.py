"""The Llama family (Llama, SmolLM2, Qwen2, Qwen3, Mistral): pre-norm blocks with q/k/v/o and a gated MLP."""

from __future__ import annotations

from export.architectures.base import Architecture, register_architecture


@register_architecture("llama", "qwen2", "qwen3", "mistral")
class Llama(Architecture):
    name = "llama"
    layers_path = "model.layers"
    roles = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    }
    groups = {"attn_in": ("q", "k", "v"), "attn_out": ("o",), "mlp_in": ("gate", "up"), "mlp_out": ("down",)}
    weight_layout = "out_in"
    embed_path = "model.embed_tokens"
    lm_head_path = "lm_head"

    def tiny_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
        )
