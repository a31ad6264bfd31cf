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

    def tiny_config(self, model_type: str = "llama"):
        """Tiny random configs of each registered type, with its real HF class (Qwen2's q/k/v biases, Qwen3's q/k
        norms and explicit head_dim, Mistral's sliding window off), so the parity suite tests each family."""
        from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

        common = dict(
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
        configs = {
            "llama": lambda: LlamaConfig(**common),
            "qwen2": lambda: Qwen2Config(**common, use_sliding_window=False),
            "qwen3": lambda: Qwen3Config(**common, head_dim=8, use_sliding_window=False),
            "mistral": lambda: MistralConfig(**common, sliding_window=None),
        }
        return configs[model_type]()
