"""The training-forward graph: swap ported linears into an HF model, add the loss head, trace to ONNX.

Per-row loss head, as emitted::

    hidden [B,T,d] ─▶ [:, :-1] ─▶ reshape [B(T-1), d] ─▶ Gather(idx) ─▶ Gemm(E, transB) ─▶ logits_transform ─▶ [N,V]
    loss_mask·attn[:,1:]·attn[:,:-1] ─▶ NonZero ─▶ idx [N]           │
    input_ids[:, 1:] ─▶ Gather(idx) ─▶ targets [N] ──────────────────┴─▶ logsumexp - logit[target] = nll [N]
    idx // (T-1) = row [N] ─▶ ScatterElements(add) ─▶ row_nll [B], row_count [B]

Candidate scoring (``candidate_ids`` [C]; C = 0 gathers no columns and returns [B, 0]), on the same logits and the
same logsumexp as the NLL::

    logits [N,V] ─▶ Gather(candidate_ids, axis=1) ─▶ [N,C] ─▶ Sub(logsumexp [N,1]) = log p(candidate) [N,C]
    row [N] ─▶ Unsqueeze ─▶ Expand [N,C] ───────────────────────┴─▶ ScatterElements(add) ─▶ row_candidate_logp [B,C]

One gather of C columns instead of a [N, V] log-softmax: on SmolLM2 (V = 49152) that is nothing next to the head.
With the one-row layout (prompt + one target token) each row has exactly one loss position, so row b's values are
the candidates' log-probabilities right after its prompt: a single-token classification example in one row.

``logits_transform`` is the architecture's hook (identity unless a family declares one, e.g. Gemma-2's soft cap).
The LM head runs only at the N effective loss positions (on SmolLM2 a full-sequence head is about a fifth of the
forward). Requiring the predicting position to be real too matters: a row whose query is padding attends to nothing
real, and the traced graph may differ from torch there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from export.architectures.base import Architecture
from export.ports import PortContext, PortedLinear, feeding
from runtime import contract

__all__ = ["PortLayout", "TrainingForward", "install_ports", "loss_positions", "position_ids_from_mask", "row_losses"]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: the first real token gets position 0 (what HF generate does); padding gets 0.

    Not ``.clamp(min=0)``: that traces to an int64 ``Clip`` with no max, which OpenVINO's execution provider
    (onnxruntime-openvino 1.24) evaluates as clip to [0, 0], so every position was 0 and RoPE was off there (issue
    #17). Masking by multiplication uses only CumSum/Sub/Mul, which every provider computes exactly.
    """
    return (torch.cumsum(attention_mask, dim=1) - 1) * attention_mask


def loss_positions(attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, row) of the effective loss positions: flat indices into ``hidden[:, :-1]`` of the positions whose
    next token is a real, loss-masked target (the predicting position real too), and the row of each."""
    effective = loss_mask[:, 1:] * attention_mask[:, 1:] * attention_mask[:, :-1]
    idx = torch.nonzero(effective.reshape(-1)).reshape(-1)
    return idx, torch.div(idx, attention_mask.shape[1] - 1, rounding_mode="floor")


def row_losses(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None,
    logits_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    candidate_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Per-row summed NLL and token counts over the effective loss positions (see the module diagram); with
    ``candidate_ids`` [C] also the per-row summed log-probabilities of those tokens, [B, C]."""
    batch, _, dim = hidden.shape
    idx, row = loss_positions(attention_mask, loss_mask)
    h = hidden[:, :-1].reshape(-1, dim).index_select(0, idx)
    logits = torch.nn.functional.linear(h, head_weight, head_bias)
    if logits_transform is not None:
        logits = logits_transform(logits)
    targets = input_ids[:, 1:].reshape(-1).index_select(0, idx)
    lse = torch.logsumexp(logits, dim=-1)
    nll = lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)
    zeros = torch.zeros(batch, dtype=hidden.dtype)
    row_nll = zeros.scatter_add(0, row, nll)
    row_count = zeros.scatter_add(0, row, torch.ones_like(nll))
    if candidate_ids is None:
        return row_nll, row_count
    cand = logits.index_select(1, candidate_ids) - lse.unsqueeze(1)  # [N, C]
    per_row = torch.zeros(batch, candidate_ids.shape[0], dtype=hidden.dtype)
    row_candidate_logp = per_row.scatter_add(0, row.unsqueeze(1).expand_as(cand), cand)
    return row_nll, row_count, row_candidate_logp


@dataclass
class PortLayout:
    """Names and order of the graph's port inputs and probe outputs (the order torch.onnx.export sees), for the
    port families ``ports`` (``ExportConfig.ports``; a family left out has no names here and no node in the graph)."""

    linears: list[PortedLinear]
    groups: dict[str, int]  # group -> d_in
    ports: frozenset[str] = frozenset(contract.PORT_FAMILIES)

    def input_names(self) -> list[str]:
        names = []
        for m in self.linears:
            if contract.PORTS_LOWRANK in self.ports:
                names += [contract.port_p(m.name), contract.port_q(m.name)]
            if contract.PORTS_NOISE in self.ports:
                names.append(contract.port_noise(m.name))
        if contract.PORTS_PROBE in self.ports:
            for g in self.groups:
                names += [contract.probe_omega(g), contract.probe_sketch_omega(g), contract.probe_act_rows(g)]
        return names

    def output_names(self) -> list[str]:
        if contract.PORTS_PROBE not in self.ports:
            return []
        names = []
        for g in self.groups:
            names += [contract.probe_basis(g), contract.probe_gram(g), contract.probe_sketch(g), contract.probe_act(g)]
        return names


def install_ports(
    model: nn.Module,
    arch: Architecture,
    roles: list[str],
    basis_rank: int,
    ports: frozenset[str] = frozenset(contract.PORT_FAMILIES),
) -> PortLayout:
    """Replace every targeted linear of ``model`` by a PortedLinear, in place; returns the port layout (of the
    families ``ports``: the targeted linears and their groups are the same whichever families are kept)."""
    blocks = model.get_submodule(arch.layers_path)
    linears: list[PortedLinear] = []
    groups: dict[str, int] = {}
    for i, block in enumerate(blocks):
        prefix = f"{arch.layers_path}.{i}"
        for role in roles:
            path = arch.roles[role]
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            old = getattr(parent, attr)
            weight = old.weight.t() if arch.weight_layout == contract.LAYOUT_OUT_IN else old.weight  # -> [d_in, d_out]
            group = f"{prefix}.{arch.group_of_role(role)}"
            leader = group not in groups
            new = PortedLinear(
                weight, old.bias, name=f"{prefix}.{path}", group=group, leader=leader, basis_rank=basis_rank
            )
            if leader:
                groups[group] = new.d_in
            setattr(parent, attr, new)
            linears.append(new)
    return PortLayout(linears=linears, groups=groups, ports=ports)


class TrainingForward(nn.Module):
    """What gets traced: (ids, masks, probe rows, candidate ids, ports...) -> (row_nll, row_count,
    row_candidate_logp, probe outputs...)."""

    def __init__(self, model: nn.Module, arch: Architecture, layout: PortLayout, power_iters: int) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.layout = layout
        self.power_iters = power_iters
        self._port_names = layout.input_names()

    def forward(self, input_ids, attention_mask, loss_mask, probe_rows, candidate_ids, *ports):
        return self.outputs(input_ids, attention_mask, loss_mask, probe_rows, candidate_ids, ports)

    def hidden(self, input_ids, attention_mask, hidden_in=None):
        """Final hidden states [B, T, d]; export/split.py's suffix graph overrides this to enter at a block."""
        return self.arch.hidden_states(self.model, input_ids, attention_mask, position_ids_from_mask(attention_mask))

    def outputs(self, input_ids, attention_mask, loss_mask, probe_rows, candidate_ids, ports, hidden_in=None):
        """The traced outputs: loss head over ``hidden(...)`` run with the ports fed, then the probe outputs."""
        inputs = dict(zip(self._port_names, ports, strict=True))
        ctx = PortContext(inputs, input_ids, probe_rows, self.power_iters, self.layout.ports)
        with feeding(ctx):
            hidden = self.hidden(input_ids, attention_mask, hidden_in)
        losses = row_losses(
            hidden,
            input_ids,
            attention_mask,
            loss_mask,
            self.arch.lm_head_weight(self.model),
            self.arch.lm_head_bias(self.model),
            self.arch.logits_transform,
            candidate_ids,
        )
        return (*losses, *(ctx.outputs[n] for n in self.layout.output_names()))
