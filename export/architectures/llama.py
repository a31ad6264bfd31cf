"""The Llama family (Llama, SmolLM2, Qwen2, Qwen3, Mistral): pre-norm blocks with q/k/v/o and a gated MLP."""

from __future__ import annotations

from export.architectures.base import Architecture, block_attention_mask, register_architecture
from runtime import contract


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
    weight_layout = contract.LAYOUT_OUT_IN
    embed_path = "model.embed_tokens"
    lm_head_path = "lm_head"
    param_kinds = (
        ("model.embed_tokens.weight", contract.KIND_EMBEDDING),
        ("lm_head.weight", contract.KIND_LM_HEAD),
        ("*.bias", contract.KIND_BIAS),  # Qwen2's q/k/v biases
        ("*norm.weight", contract.KIND_NORM),  # input/post_attention_layernorm, model.norm, Qwen3 q/k_norm
    )
    constant_buffers = ("*rotary_emb.inv_freq",)
    # SmolLM2 and the tiny configs tie their head; Llama-3-8B, Mistral-7B and Qwen2-7B do not: test that path too
    tiny_variants = {"llama-untied": ("llama", {"tie_word_embeddings": False})}

    supports_splits = True
    supports_fused_attention = True

    def run_blocks(self, model, hidden, attention_mask, position_ids, start, stop):
        """What LlamaModel.forward does between its embedding and its final norm, for blocks[start:stop]: the
        rotary embeddings of the positions and the same 4D mask the traced full graph gets (``block_attention_mask``:
        eager or fused attention)."""
        base = model.model
        mask = block_attention_mask(model, attention_mask, hidden.dtype)
        rope = base.rotary_emb(hidden, position_ids)
        for block in base.layers[start:stop]:
            out = block(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rope)
            hidden = out[0] if isinstance(out, tuple) else out  # transformers < 4.54 returned a tuple
        return hidden

    def fused_attention_problem(self, config) -> str:
        """GroupQueryAttention here is full causal attention: a sliding window (Mistral's, Qwen2's sliding layers)
        would be silently dropped, so such configs stay eager."""
        sliding = "sliding_attention" in (getattr(config, "layer_types", None) or [])
        if sliding or (config.model_type == "mistral" and getattr(config, "sliding_window", None)):
            return "this config uses sliding-window attention, which the fused export does not implement"
        return super().fused_attention_problem(config)

    def final_norm(self, model, hidden):
        return model.model.norm(hidden)

    def tiny_config(self, model_type: str = "llama", **overrides):
        """Tiny random configs of each registered type, with its real HF class (Qwen2's q/k/v biases, Qwen3's q/k
        norms and explicit head_dim, Mistral's sliding window off), so the parity suite tests each family.
        ``overrides`` replace config fields (the suite's untied-head case: ``tie_word_embeddings=False``)."""
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
        common.update(overrides)
        configs = {
            "llama": lambda: LlamaConfig(**common),
            "qwen2": lambda: Qwen2Config(**common, use_sliding_window=False),
            "qwen3": lambda: Qwen3Config(**common, head_dim=8, use_sliding_window=False),
            "mistral": lambda: MistralConfig(**common, sliding_window=None),
        }
        return configs[model_type]()
