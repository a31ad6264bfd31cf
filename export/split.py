"""Prefix and suffix graphs at a block boundary S, for layer-selective training with a frozen-prefix cache.

A run that trains only blocks >= S (``zo-edge train --layers top:6``) never changes what blocks < S compute, so the
runtime computes their output once (runtime/prefix_cache.py) and runs only the suffix per ± pass::

    prefix_S.onnx:  input_ids, attention_mask ─▶ embed ─▶ blocks[0:S] ─▶ hidden_out [B, T, d]
    suffix_S.onnx:  hidden_in [B, T, d], input_ids, attention_mask, loss_mask, probe_rows, candidate_ids,
                    ports of blocks S.. ─▶ blocks[S:] (PortedLinear) ─▶ final norm ─▶ the full graph's loss head
                    ─▶ row_nll, row_count, row_candidate_logp, probes of blocks S..

S = n (the number of blocks) is the head's split: the prefix is the whole stack and the suffix only the final norm
and the loss head, so a ``--layers head`` run (the final norm's gain, every block frozen) costs one prefix pass per
training example for the whole run and next to nothing per ± pass. Beside that pair the head's split also gets
``candidates_n.onnx`` (``CandidateHeadForward``): the final norm and only the C candidates' rows of the LM head,
for the one-row classification passes that are all a ``--layers head`` step makes (their softmax over the
candidates does not need the vocabulary's log-sum-exp, which is 28M of a SmolLM2 row's 28.3M head MACs).

Both graphs read the model's parameters as ``param::`` inputs, the same names and values as ``model.onnx`` (so one
``params.safetensors`` feeds all three, bound zero-copy from the same numpy buffers); ``input_ids`` enter the suffix
only for the loss targets. Positions come from the attention mask in both halves exactly as in the full graph, and
the suffix rebuilds the same additive causal mask, so prefix ∘ suffix = the full forward (tests/export/test_split.py
checks it against torch and against model.onnx). Families declare support with ``Architecture.supports_splits``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.architectures.base import Architecture
from export.graph import PortLayout, TrainingForward, loss_positions, position_ids_from_mask
from runtime import contract

__all__ = ["CandidateHeadForward", "PrefixForward", "SuffixForward", "suffix_layout"]


class PrefixForward(nn.Module):
    """(input_ids, attention_mask) -> the residual stream entering block ``start`` (no ports: frozen blocks)."""

    def __init__(self, model: nn.Module, arch: Architecture, start: int) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.start = start

    def forward(self, input_ids, attention_mask):
        hidden = self.arch.embed(self.model, input_ids)
        return self.arch.run_blocks(
            self.model, hidden, attention_mask, position_ids_from_mask(attention_mask), 0, self.start
        )


class SuffixForward(TrainingForward):
    """``TrainingForward`` entered at block ``start`` with given hidden states (see the module diagram)."""

    def __init__(self, model: nn.Module, arch: Architecture, layout: PortLayout, power_iters: int, start: int):
        super().__init__(model, arch, layout, power_iters)
        self.start = start

    def hidden(self, input_ids, attention_mask, hidden_in):
        hidden = self.arch.run_blocks(
            self.model, hidden_in, attention_mask, position_ids_from_mask(attention_mask), self.start, None
        )
        return self.arch.final_norm(self.model, hidden)

    def forward(self, hidden_in, input_ids, attention_mask, loss_mask, probe_rows, candidate_ids, *ports):
        return self.outputs(input_ids, attention_mask, loss_mask, probe_rows, candidate_ids, ports, hidden_in)


class CandidateHeadForward(nn.Module):
    """The candidates' head at the head's split (runtime/contract.py ``candidate_head_file``): the final norm and
    the C candidates' rows of the LM head at the loss positions, summed per row. Without the vocabulary-wide
    log-sum-exp a ``--layers head`` pass costs C x d MACs a row instead of V x d (SmolLM2: 2 x 576 vs 49152 x 576),
    so a step's queries are nearly free once the prefix cache holds the training set."""

    def __init__(self, model: nn.Module, arch: Architecture) -> None:
        super().__init__()
        self.model = model  # the exporter's parameter-name prefix (``model.``)
        self.arch = arch

    def forward(self, hidden_in, attention_mask, loss_mask, candidate_ids):
        batch, _, dim = hidden_in.shape
        idx, row = loss_positions(attention_mask, loss_mask)
        h = self.arch.final_norm(self.model, hidden_in[:, :-1].reshape(-1, dim).index_select(0, idx))
        bias = self.arch.lm_head_bias(self.model)
        logits = torch.nn.functional.linear(
            h,
            self.arch.lm_head_weight(self.model).index_select(0, candidate_ids),
            None if bias is None else bias.index_select(0, candidate_ids),
        )
        logits = self.arch.logits_transform(logits)
        per_row = torch.zeros(batch, candidate_ids.shape[0], dtype=hidden_in.dtype)
        return per_row.scatter_add(0, row.unsqueeze(1).expand_as(logits), logits)


def suffix_layout(layout: PortLayout, start: int) -> PortLayout:
    """The ports of blocks >= ``start`` only (the suffix graph has no others), of the same families."""
    from runtime.layers import block_of

    linears = [m for m in layout.linears if block_of(m.name) >= start]
    groups = {g: d for g, d in layout.groups.items() if block_of(g) >= start}
    return PortLayout(linears=linears, groups=groups, ports=layout.ports)


# --- writing the pair ------------------------------------------------------------------------------------------
def resolve_splits(spec: str, n_layers: int, arch: Architecture, int4: bool = False) -> list[int]:
    """Block boundaries to export: "auto" = the top quarter's (S = n - max(1, n // 4)), the top block's (S = n - 1,
    for ``--layers top:1,head``, the best recipe measured: benchmarks/RESULTS.md §7) and the head's (S = n: the
    suffix is the final norm and the loss head alone, for ``--layers head``) where the family supports splits,
    "none", or a comma list of boundaries in 1..n.

    INT4 exports get the same graphs, quantized as model.onnx is; "auto" writes only the head's there (what the
    head recipe runs). An INT4 prefix graph holds its blocks' codes itself (fp32 split graphs share
    params.safetensors), so every split costs up to one more model on disk: 401 vs 106 MiB for SmolLM2 with the
    three fp32 splits, against 203-244 MiB with the head's alone."""
    from export.config import ExportConfigError

    spec = spec.strip().lower()
    if spec == "none" or (spec == "auto" and (not arch.supports_splits or n_layers < 2)):
        return []
    if spec == "auto":
        return [n_layers] if int4 else sorted({n_layers - max(1, n_layers // 4), n_layers - 1, n_layers})
    if not arch.supports_splits:
        raise ExportConfigError(f"--splits: {arch.name} models have no split graphs yet (Llama family only); omit it")
    try:
        splits = sorted({int(x) for x in spec.split(",")})
    except ValueError:
        raise ExportConfigError(f"--splits {spec!r}: use auto, none or block boundaries like 20,24") from None
    bad = [s for s in splits if not 1 <= s <= n_layers]
    if bad:
        raise ExportConfigError(f"--splits {bad[0]}: a boundary must be in 1..{n_layers} ({n_layers}: the head's)")
    return splits


class _Finisher:
    """What every split graph goes through after its trace: params lifted to ``param::`` inputs, then for an INT4
    export the same quantization as model.onnx (export/quantize.py: MatMulNBits from the same float weights, so the
    same codes; with ``--int4-embedding`` the embedding's Gather or the head's Gemm, whichever the graph holds),
    and a check that every float input it keeps is one ``params.safetensors`` holds (``saved``)."""

    def __init__(self, wrapper: TrainingForward, cfg, saved: dict[str, np.ndarray]) -> None:
        self.arch, self.layout, self.cfg, self.saved = wrapper.arch, wrapper.layout, cfg, saved

    def __call__(self, path: Path, module: nn.Module, *, gemm_head: bool = False, table: str = "") -> None:
        """``gemm_head``: the graph ends in the full LM head (the suffix). ``table``: which tied table it reads for
        ``--int4-embedding`` ("embed": the prefix's Gather; "head": the suffix's Gemm, or the candidates' head's
        Gather of the label words' rows)."""
        from export.exporter import _head_param_key, _head_to_gemm, _lift_params, _save_graph
        from export.quantize import quantize_int4

        g = onnx.load(str(path))
        arrays, _ = _lift_params(g, self.arch, self.layout, module)
        embed_key = next((k for k in arrays if k.startswith(self.arch.embed_path)), None)
        head_key = _head_param_key(module.model, self.arch, arrays) if table == "head" else embed_key
        if gemm_head:
            _head_to_gemm(g, contract.param_name(head_key))
        floats = set(arrays)
        if self.cfg.int4:
            key = {"embed": embed_key, "head": head_key}.get(table)
            embedding = None
            if self.cfg.int4_embedding and key is not None:
                embedding = (contract.param_name(key), contract.param_name(key))
            floats = quantize_int4(
                g,
                arrays,
                self.cfg.block_size,
                accuracy_level=self.cfg.accuracy_level,
                embedding=embedding,
                expect={"Gather": int(not gemm_head), "Gemm": int(gemm_head)},
            )
        unsaved = sorted(floats - set(self.saved))
        if unsaved:
            from export.exporter import ExportError

            raise ExportError(f"{path.name} reads {unsaved[0]}, which params.safetensors does not hold")
        _save_graph(g, path)


def write_split_graphs(
    wrapper: TrainingForward, cfg, folder: Path, splits: list[int], saved: dict[str, np.ndarray]
) -> None:
    """Trace prefix_S.onnx and suffix_S.onnx for every S into ``folder`` (params lifted to ``param::`` inputs;
    ``saved``: the arrays params.safetensors holds, which every float input of theirs must be one of)."""
    from export.exporter import _dummy_inputs, trace_to_onnx

    finish = _Finisher(wrapper, cfg, saved)
    model, arch, layout = wrapper.model, wrapper.arch, wrapper.layout
    args, names, dyn = _dummy_inputs(model, layout, cfg.basis_rank)
    ids, attn = args[0], args[1]
    token_axes = {0: "batch", 1: "seq"}
    for start in splits:
        prefix_path = folder / contract.prefix_graph_file(start)
        prefix = PrefixForward(model, arch, start)
        trace_to_onnx(
            prefix,
            (ids, attn),
            prefix_path,
            [contract.INPUT_IDS, contract.INPUT_ATTENTION_MASK],
            [contract.OUTPUT_HIDDEN],
            {
                contract.INPUT_IDS: token_axes,
                contract.INPUT_ATTENTION_MASK: token_axes,
                contract.OUTPUT_HIDDEN: token_axes,
            },
            cfg.opset,
        )
        finish(prefix_path, prefix, table="embed")

        sub = suffix_layout(layout, start)
        s_args, s_names, s_dyn = _dummy_inputs(model, sub, cfg.basis_rank)
        hidden = torch.randn(
            ids.shape[0], ids.shape[1], model.config.hidden_size, generator=torch.Generator().manual_seed(1)
        )
        s_dyn[contract.INPUT_HIDDEN] = token_axes
        suffix = SuffixForward(model, arch, sub, cfg.power_iters, start)
        suffix_path = folder / contract.suffix_graph_file(start)
        trace_to_onnx(
            suffix,
            (hidden, *s_args),
            suffix_path,
            [contract.INPUT_HIDDEN, *s_names],
            [
                contract.OUTPUT_ROW_NLL,
                contract.OUTPUT_ROW_COUNT,
                contract.OUTPUT_ROW_CANDIDATE_LOGP,
                *sub.output_names(),
            ],
            s_dyn,
            cfg.opset,
        )
        finish(suffix_path, suffix, gemm_head=True, table="head")
    if len(model.get_submodule(arch.layers_path)) in splits:
        write_candidate_head(model, arch, cfg.opset, folder, finish)


def write_candidate_head(model: nn.Module, arch: Architecture, opset: int, folder: Path, finish: _Finisher) -> None:
    """Trace ``candidate_head_file(n)`` (``CandidateHeadForward``), then ``finish`` it as the pair's graphs."""
    from export.exporter import _dummy_inputs, trace_to_onnx

    args, _, _ = _dummy_inputs(model, PortLayout(linears=[], groups={}), 1)  # the head has no ports
    ids, attn, loss, _, candidate_ids = args[:5]
    hidden = torch.randn(*ids.shape, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    token_axes = {0: "batch", 1: "seq"}
    path = folder / contract.candidate_head_file(len(model.get_submodule(arch.layers_path)))
    head = CandidateHeadForward(model, arch)
    trace_to_onnx(
        head,
        (hidden, attn, loss, candidate_ids),
        path,
        [contract.INPUT_HIDDEN, contract.INPUT_ATTENTION_MASK, contract.INPUT_LOSS_MASK, contract.INPUT_CANDIDATE_IDS],
        [contract.OUTPUT_ROW_CANDIDATE_LOGIT],
        {
            contract.INPUT_HIDDEN: token_axes,
            contract.INPUT_ATTENTION_MASK: token_axes,
            contract.INPUT_LOSS_MASK: token_axes,
            contract.INPUT_CANDIDATE_IDS: {0: "candidates"},
            contract.OUTPUT_ROW_CANDIDATE_LOGIT: {0: "batch", 1: "candidates"},
        },
        opset,
    )
    finish(path, head, table="head")
