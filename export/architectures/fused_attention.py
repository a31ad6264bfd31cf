"""Fused attention in the exported graph: onnxruntime's ``com.microsoft::GroupQueryAttention`` (``--attention fused``).

The eager export writes attention as MatMul -> Mul -> Add(mask) -> Softmax -> MatMul on [B, H, T, T] tensors after
repeating K/V to every query head; each of those is a separate [B, H, T, T] buffer in onnxruntime's arena, which is
why peak memory grows with batch x seq² (RESULTS.md §2). GroupQueryAttention computes the same softmax(q kᵀ s + bias)
v in one kernel, reads K/V at their own head count (no repeat) and applies the causal mask itself.

What goes in, per block (RoPE is applied by the HF module before this function, from the positions that
``export.graph.position_ids_from_mask`` computes, so the OpenVINO-safe position form is untouched)::

    q [B,H,T,D] ─▶ transpose/reshape [B,T,H·D] ──┐
    k [B,KV,T,D] ─▶ [B,T,KV·D] ──────────────────┤
    v [B,KV,T,D] ─▶ [B,T,KV·D] ──────────────────┼─▶ com.microsoft::GroupQueryAttention(num_heads=H, kv_num_heads=KV,
    Shape(q)[1]=T ─▶ seqlens_k = T-1 (every row) ┤       scale, causal) ─▶ [B,T,H·D] ─▶ [B,T,H,D] ─▶ o_proj
    (mask-1)·min ─▶ Expand [B,1,T,T] (once) ─────┘   attention_bias: left padding's keys masked

Left padding is carried by ``attention_bias`` (key padding only; the op adds causality), built once per graph by
``key_padding_bias`` and handed to every block; ``seqlens_k`` says every row is T long (GroupQueryAttention's own
lengths assume right padding). The ports and probes live on the q/k/v/o linears around this call, so all of them are
kept. Only onnxruntime has the op: OpenVINO and other providers without com.microsoft kernels are refused by the
runtime from the manifest feature ``fused_attention`` (runtime/session.py).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FUSED_ATTENTION", "fused_attention_forward", "key_padding_bias", "register_fused_attention"]

#: the name under which the function is registered in transformers' ALL_ATTENTION_FUNCTIONS
FUSED_ATTENTION = "zo_edge_gqa"


def key_padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive bias: 0 on real keys, dtype-min on padded keys (no causal part: the op adds it).

    GroupQueryAttention requires the bias's query axis to be T itself (no broadcast), hence the Expand; it is built
    once per graph, 16 MiB at 16 x 512. A padded query row sees only padded keys and gets a finite uniform softmax,
    which the loss head never reads (the same convention as ``additive_causal_mask``).
    """
    bias = (attention_mask.to(dtype) - 1.0) * -torch.finfo(dtype).min  # (m - 1) * |min|: 0 or min
    bias = bias.unsqueeze(1).unsqueeze(2)  # [B, 1, 1, T]
    return bias.expand(-1, -1, attention_mask.shape[1], -1)


class _GroupQueryAttention(torch.autograd.Function):
    """Eager math while tracing (so the shapes and the torch reference are right); one contrib node in ONNX."""

    @staticmethod
    def forward(ctx, q, k, v, bias, num_heads: int, kv_heads: int, scale: float):  # noqa: ARG004
        batch, seq, _ = q.shape
        head_dim = q.shape[-1] // num_heads
        qh = q.reshape(batch, seq, num_heads, head_dim).transpose(1, 2)
        kh = k.reshape(batch, seq, kv_heads, head_dim).transpose(1, 2).repeat_interleave(num_heads // kv_heads, 1)
        vh = v.reshape(batch, seq, kv_heads, head_dim).transpose(1, 2).repeat_interleave(num_heads // kv_heads, 1)
        scores = torch.matmul(qh, kh.transpose(2, 3)) * scale + bias
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
        out = torch.matmul(torch.softmax(scores, dim=-1), vh)
        return out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)

    @staticmethod
    def symbolic(g, q, k, v, bias, num_heads: int, kv_heads: int, scale: float):
        from torch.onnx import symbolic_helper

        shape = g.op("Shape", q)
        seq = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64)), axis_i=0)
        batch = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)), axis_i=0)
        total = g.op("Cast", seq, to_i=6)  # int32 scalar: total_sequence_length = T (the prompt case)
        last = g.op("Sub", total, g.op("Constant", value_t=torch.tensor(1, dtype=torch.int32)))
        seqlens = g.op("Expand", last, batch)  # int32 [B]: seqlens_k = T - 1 for every row
        none = symbolic_helper._optional_input_placeholder_tensor(g)
        out = g.op(
            "com.microsoft::GroupQueryAttention",
            q,
            k,
            v,
            none,  # past_key
            none,  # past_value
            seqlens,
            total,
            none,  # cos_cache (RoPE is applied before, from the mask's positions)
            none,  # sin_cache
            none,  # position_ids
            bias,
            num_heads_i=num_heads,
            kv_num_heads_i=kv_heads,
            scale_f=scale,
        )
        out.setType(q.type())
        return out


def fused_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface signature: q [B,H,T,D], k/v [B,KV,T,D] (after RoPE) -> [B,T,H,D].

    ``attention_mask`` must be ``key_padding_bias`` (the tracing patch and ``Llama.run_blocks`` hand it over);
    a sliding window or dropout is refused rather than silently dropped."""
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("--attention fused does not support sliding-window attention; use eager")
    assert dropout == 0.0, "attention dropout in an exported graph (the model must be in eval mode)"
    assert attention_mask is not None and attention_mask.dim() == 4, "fused attention needs key_padding_bias(...)"
    # Head counts from the config, not from query.shape: while tracing, shape entries are traced values, and a
    # traced int passed to an autograd.Function as a constant fails inside the tracer ("unordered_map::at").
    heads, kv_heads = int(module.config.num_attention_heads), int(module.config.num_key_value_heads)
    head_dim = int(module.head_dim)
    q = query.transpose(1, 2).flatten(2)  # [B, T, H*D]
    k = key.transpose(1, 2).flatten(2)
    v = value.transpose(1, 2).flatten(2)
    out = _GroupQueryAttention.apply(q, k, v, attention_mask, heads, kv_heads, float(scaling))
    return out.unflatten(2, (heads, head_dim)), None


def register_fused_attention() -> None:
    """Register ``fused_attention_forward`` under ``FUSED_ATTENTION`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(FUSED_ATTENTION, fused_attention_forward)
