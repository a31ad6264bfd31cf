"""OPT, the model of the MeZO, Zoop and SubZero papers: q/k/v/out_proj attention and an fc1/fc2 MLP with biases."""

from __future__ import annotations

from export.architectures.base import Architecture, register_architecture
from runtime import contract


@register_architecture("opt")
class OPT(Architecture):
    name = "opt"
    layers_path = "model.decoder.layers"
    roles = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.out_proj",
        "fc1": "fc1",
        "fc2": "fc2",
    }
    groups = {"attn_in": ("q", "k", "v"), "attn_out": ("o",), "mlp_in": ("fc1",), "mlp_out": ("fc2",)}
    weight_layout = contract.LAYOUT_OUT_IN
    embed_path = "model.decoder.embed_tokens"
    lm_head_path = "lm_head"
    param_kinds = (
        ("model.decoder.embed_tokens.weight", contract.KIND_EMBEDDING),
        ("model.decoder.embed_positions.weight", contract.KIND_EMBEDDING),  # learned positions
        ("model.decoder.project_in.weight", contract.KIND_LINEAR),  # where word_embed_proj_dim != hidden_size
        ("model.decoder.project_out.weight", contract.KIND_LINEAR),
        ("lm_head.weight", contract.KIND_LM_HEAD),
        ("*.bias", contract.KIND_BIAS),
        ("*layer_norm.weight", contract.KIND_NORM),  # self_attn_layer_norm, final_layer_norm
    )

    def tiny_config(self, model_type: str | None = None, **overrides):
        from transformers import OPTConfig

        kw = dict(
            vocab_size=97,
            hidden_size=32,
            ffn_dim=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=32,
            tie_word_embeddings=True,
        )
        return OPTConfig(**{**kw, **overrides})
