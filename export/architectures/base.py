"""Architecture declarations: what differs between model families, as class attributes, plus the registry.

An architecture is mostly data (optimum's model_configs.py, genai's 10-line llama.py): where the blocks are, which
module plays which role, which roles read the same input, the weight layout, the kind of every parameter, the
constant buffers, the tracing workarounds, and a tiny config for the tests. The generic exporter (export/graph.py,
export/exporter.py) and ``zo-edge merge`` do everything else. Override a hook (``hidden_states``,
``logits_transform``...) only when declaration cannot say it.

Orientation vocabulary (the same words everywhere in export/ and in the manifest, ``runtime.contract.LAYOUT_*``):

* ``"in_out"`` = **[d_in, d_out] storage**: what MatMul consumes. Every targeted linear weight is exported like this
  (``PortedLinear``), whatever the family; GPT-2's Conv1D already stores its weight so in HF (peft's
  ``fan_in_fan_out``);
* ``"out_in"`` = **HF [d_out, d_in]**: ``nn.Linear``'s weight (Llama, OPT...);
* ``"hf"`` (manifest ``ParamSpec.layout`` only) = exactly as in the HF state dict (norms, biases, embeddings,
  untargeted linears).

``Architecture.weight_layout`` says which of in_out/out_in the family's HF modules use; a ΔW = Q Pᵀ is always meant
in HF [d_out, d_in] orientation (the ports' convention), so it is transposed for an in_out family.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from export.architectures.fused_attention import FUSED_ATTENTION, key_padding_bias
from export.config import ExportConfigError
from runtime import contract
from runtime.errors import ZoEdgeError

__all__ = [
    "ALL_ROLES",
    "READY_4D_MASK",
    "Architecture",
    "TracePatch",
    "UnsupportedArchitectureError",
    "additive_causal_mask",
    "block_attention_mask",
    "get_architecture",
    "register_architecture",
    "registered_architectures",
    "tiny_cases",
    "transformers_version",
    "uses_fused_attention",
]

_REGISTRY: dict[str, type[Architecture]] = {}

ALL_ROLES = "all"


class UnsupportedArchitectureError(ZoEdgeError, ValueError):
    """A model family zo-edge cannot export (the message lists the supported ones)."""


def register_architecture(*model_types: str):
    """Class decorator: register an Architecture for the given HF ``config.model_type`` values."""

    def wrap(cls: type[Architecture]) -> type[Architecture]:
        cls.model_types = tuple(model_types)
        for t in model_types:
            _REGISTRY[t] = cls
        return cls

    return wrap


def registered_architectures() -> dict[str, type[Architecture]]:
    return dict(_REGISTRY)


def tiny_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every tiny test model: case -> (model_type, tiny-config overrides). One case per registered model type, plus
    each family's ``tiny_variants`` (e.g. "llama-untied"), so the parity suite covers every export path."""
    cases: dict[str, tuple[str, dict[str, Any]]] = {t: (t, {}) for t in sorted(_REGISTRY)}
    for cls in dict.fromkeys(_REGISTRY.values()):
        for case, (model_type, overrides) in cls.tiny_variants.items():
            assert case not in cases, f"tiny case {case!r} is declared twice"
            cases[case] = (model_type, dict(overrides))
    return cases


def get_architecture(model_type: str) -> Architecture:
    try:
        return _REGISTRY[model_type]()
    except KeyError:
        supported = ", ".join(sorted(_REGISTRY))
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported by zo-edge export; supported: {supported}"
        ) from None


def additive_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] additive mask (0 where allowed, dtype-min elsewhere): causal and key padding.

    Built from aranges of the mask itself, so T stays dynamic in the graph. Query rows that are padding see only
    masked keys and get a uniform softmax (finite min, no NaN); the loss head never reads them. Used by the
    ``READY_4D_MASK`` trace patch.
    """
    pos = torch.cumsum(torch.ones_like(attention_mask[0]), dim=0) - 1  # [T]
    causal = pos.unsqueeze(0) <= pos.unsqueeze(1)  # [T, T]: key j <= query i
    allowed = causal.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(2)
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


def uses_fused_attention(model: nn.Module) -> bool:
    """Whether ``model`` runs ``--attention fused`` (the exporter set its attention implementation to it)."""
    return getattr(model.config, "_attn_implementation", None) == FUSED_ATTENTION


def block_attention_mask(model: nn.Module, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4D mask every block gets: ``additive_causal_mask`` for eager attention, ``key_padding_bias`` (no causal
    part: GroupQueryAttention adds it) for fused attention."""
    if uses_fused_attention(model):
        return key_padding_bias(attention_mask, dtype)
    return additive_causal_mask(attention_mask, dtype)


# --- trace patches ---------------------------------------------------------------------------------------------
def transformers_version() -> tuple[int, ...]:
    """The installed transformers version as a comparable tuple, e.g. (4, 57, 6)."""
    import transformers

    return _version_tuple(transformers.__version__)


def _version_tuple(version: str) -> tuple[int, ...]:
    """ "4.57.6" -> (4, 57, 6); "4.58.0.dev0" -> (4, 58, 0): the leading numeric parts only."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


@dataclass(frozen=True)
class TracePatch:
    """One tracing workaround (optimum's ModelPatcher): what it does, why, for which transformers versions.

    ``apply(model)`` returns a context manager that patches on enter and restores every patched attribute on exit.
    It is entered only while tracing, and only if the installed transformers is in [min_version, max_version).
    """

    name: str
    why: str
    apply: Callable[[nn.Module], contextlib.AbstractContextManager]
    min_version: tuple[int, ...] = ()  # inclusive; () = any
    max_version: tuple[int, ...] | None = None  # exclusive; None = no upper bound

    def applies(self, version: tuple[int, ...]) -> bool:
        return version >= self.min_version and (self.max_version is None or version < self.max_version)


@contextlib.contextmanager
def _ready_4d_mask(model: nn.Module) -> Iterator[None]:
    """While active, the CausalLM's base model gets ``additive_causal_mask(mask)`` instead of a 2D mask."""
    base = getattr(model, model.base_model_prefix)
    had_own = "forward" in vars(base)
    original = base.forward

    def forward(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = block_attention_mask(model, attention_mask, model.dtype)
        return original(*args, attention_mask=attention_mask, **kwargs)

    base.forward = forward
    try:
        yield
    finally:
        if had_own:
            base.forward = original
        else:
            del base.forward


#: transformers >= 4.53 builds its attention masks with torch.vmap (masking_utils), which the TorchScript ONNX
#: exporter cannot trace ("unordered_map::at"). A ready 4D mask is returned untouched by every family's mask code,
#: so the base model is handed one (built from aranges of the 2D mask: T stays dynamic). Older versions build
#: traceable masks themselves.
READY_4D_MASK = TracePatch(
    name="ready-4d-attention-mask",
    why="transformers >= 4.53 builds masks with torch.vmap, which torch.onnx (TorchScript) cannot trace",
    apply=_ready_4d_mask,
    min_version=(4, 53),
)


class Architecture:
    """Declaration of one model family. Subclasses set the attributes; hooks have generic defaults."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: registry key written into the manifest
    name: ClassVar[str] = ""
    #: dotted path from the CausalLM to the ModuleList of blocks
    layers_path: ClassVar[str] = "model.layers"
    #: role -> dotted path inside one block
    roles: ClassVar[dict[str, str]] = {}
    #: activation group -> roles that read the same input tensor (the first one computes the group's probes)
    groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: how the HF modules of the roles store their weight: contract.LAYOUT_OUT_IN ("HF [d_out, d_in]", nn.Linear)
    #: or contract.LAYOUT_IN_OUT ("[d_in, d_out] storage", GPT-2's Conv1D, peft's fan_in_fan_out)
    weight_layout: ClassVar[str] = contract.LAYOUT_OUT_IN
    #: dotted path of the input embedding and of the LM head (the head shares the embedding when tied)
    embed_path: ClassVar[str] = "model.embed_tokens"
    lm_head_path: ClassVar[str] = "lm_head"
    #: kind of each bound parameter (manifest ParamSpec.kind, what MeZO's ``kinds`` selects): (fnmatch pattern on
    #: the HF state-dict key, kind), first match wins. The weights of the roles come first, as "linear", without
    #: being listed; a key no pattern matches is "other" (the parity suite fails for any tiny-model parameter that
    #: ends up there, so a new family must declare them all).
    param_kinds: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: fnmatch patterns of tensors that are constants, not parameters (rotary inv_freq, mask buffers): the exporter
    #: keeps them in the graph instead of binding them, and merge does not miss them (the HF model rebuilds them)
    constant_buffers: ClassVar[tuple[str, ...]] = ()
    #: tracing workarounds, entered (if their version gate holds) only while torch.onnx.export runs
    trace_patches: ClassVar[tuple[TracePatch, ...]] = (READY_4D_MASK,)
    #: whether ``--attention fused`` (export/architectures/fused_attention.py) fits the family's attention module:
    #: it must call transformers' attention interface with q/k/v after RoPE
    supports_fused_attention: ClassVar[bool] = False
    #: extra tiny test cases for export paths the plain tiny config does not take: case -> (model_type, overrides)
    tiny_variants: ClassVar[dict[str, tuple[str, dict[str, Any]]]] = {}

    # -- hooks ------------------------------------------------------------------------------------------------
    def hidden_states(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states [B, T, d] (after the final norm) of the CausalLM's base model.

        The plain 2D mask goes in; while tracing, ``READY_4D_MASK`` hands the base model a 4D one instead."""
        base = getattr(model, model.base_model_prefix)
        out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    # --- entering / leaving the block stack (export/split.py: prefix and suffix graphs) ----------------------
    #: whether ``embed``/``run_blocks``/``final_norm`` are implemented: layer-selective training's split graphs
    supports_splits: ClassVar[bool] = False

    def embed(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, d]: the residual stream entering block 0."""
        return model.get_input_embeddings()(input_ids)

    def run_blocks(
        self,
        model: nn.Module,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        start: int,
        stop: int | None,
    ) -> torch.Tensor:
        """The residual stream after blocks[start:stop] given the stream entering block ``start``."""
        raise NotImplementedError(f"{self.name}: layer splits are not declared (supports_splits = False)")

    def final_norm(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: layer splits are not declared (supports_splits = False)")

    def fused_attention_problem(self, config: Any) -> str:
        """Why ``--attention fused`` cannot export a model of this config ("" when it can)."""
        if not self.supports_fused_attention:
            return f"{self.name} models are exported with eager attention only (supports_fused_attention = False)"
        return ""

    def logits_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """Map the LM head's output [N, V] to the logits the loss uses; identity here. E.g. Gemma-2's final soft
        cap is ``cap * tanh(logits / cap)``. Traced into the graph, after the head's Gemm."""
        return logits

    def lm_head_weight(self, model: nn.Module) -> torch.Tensor:
        """[vocab, d] weight of the LM head: the embedding itself when tied, so it is stored once."""
        return model.get_output_embeddings().weight

    def lm_head_bias(self, model: nn.Module) -> torch.Tensor | None:
        return getattr(model.get_output_embeddings(), "bias", None)

    @contextlib.contextmanager
    def patched_for_tracing(self, model: nn.Module) -> Iterator[list[str]]:
        """Enter every declared ``trace_patches`` entry whose version gate holds; all are restored on exit.

        Yields the names of the patches applied (in declaration order)."""
        version = transformers_version()
        with contextlib.ExitStack() as stack:
            applied = []
            for patch in self.trace_patches:
                if patch.applies(version):
                    stack.enter_context(patch.apply(model))
                    applied.append(patch.name)
            yield applied

    def tiny_config(self, model_type: str | None = None, **overrides: Any) -> Any:
        """A tiny random config of this family (of ``model_type``, for families registered under several), with
        ``overrides`` replacing config fields (e.g. ``tie_word_embeddings=False``)."""
        raise NotImplementedError(f"{type(self).__name__} has no tiny_config(); the parity suite needs one")

    # -- derived ---------------------------------------------------------------------------------------------
    def param_kind(self, key: str) -> str:
        """Kind of the HF state-dict key ``key``: "linear" for the roles' weights, else ``param_kinds``, else
        "other"."""
        for path in self.roles.values():
            if fnmatch.fnmatchcase(key, f"{self.layers_path}.*.{path}.weight"):
                return contract.KIND_LINEAR
        for pattern, kind in self.param_kinds:
            if fnmatch.fnmatchcase(key, pattern):
                return kind
        return contract.KIND_OTHER

    def is_constant_buffer(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.constant_buffers)

    def resolve_roles(self, targets: str | list[str]) -> list[str]:
        if targets == ALL_ROLES or targets == [ALL_ROLES]:
            return list(self.roles)
        wanted = targets.split(",") if isinstance(targets, str) else list(targets)
        unknown = [t for t in wanted if t not in self.roles]
        if unknown:
            raise ExportConfigError(
                f"unknown target role(s) {unknown} for {self.name}; choose from {', '.join(self.roles)} or 'all'"
            )
        return [r for r in self.roles if r in wanted]

    def group_of_role(self, role: str) -> str:
        for group, roles in self.groups.items():
            if role in roles:
                return group
        raise KeyError(f"{self.name}: role {role} is in no activation group")
