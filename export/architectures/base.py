"""Architecture declarations: what differs between model families, as class attributes, plus the registry.

An architecture is mostly data (optimum's model_configs.py, genai's 10-line llama.py): where the blocks are, which
module plays which role, which roles read the same input, the weight layout, and a tiny config for the tests. The
generic exporter (export/graph.py) does everything else. Override a hook only when declaration cannot say it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "ALL_ROLES",
    "Architecture",
    "UnsupportedArchitectureError",
    "additive_causal_mask",
    "get_architecture",
    "register_architecture",
    "registered_architectures",
]

_REGISTRY: dict[str, type[Architecture]] = {}

ALL_ROLES = "all"


class UnsupportedArchitectureError(ValueError):
    pass


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

    Passed to HF models as a ready 4D mask, which transformers returns untouched. Why: transformers >= 4.53 builds
    its masks with torch.vmap, which the TorchScript ONNX exporter cannot trace ("unordered_map::at"). Built from
    aranges of the mask itself, so T stays dynamic in the graph. Query rows that are padding see only masked keys
    and get a uniform softmax (finite min, no NaN); the loss head never reads them.
    """
    pos = torch.cumsum(torch.ones_like(attention_mask[0]), dim=0) - 1  # [T]
    causal = pos.unsqueeze(0) <= pos.unsqueeze(1)  # [T, T]: key j <= query i
    allowed = causal.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(2)
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


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
    #: "out_in" for nn.Linear ([d_out, d_in]); "in_out" for GPT-2's Conv1D (like peft's fan_in_fan_out)
    weight_layout: ClassVar[str] = "out_in"
    #: dotted path of the input embedding and of the LM head (the head shares the embedding when tied)
    embed_path: ClassVar[str] = "model.embed_tokens"
    lm_head_path: ClassVar[str] = "lm_head"

    # -- hooks ------------------------------------------------------------------------------------------------
    def hidden_states(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states [B, T, d] (after the final norm) of the CausalLM's base model."""
        base = getattr(model, model.base_model_prefix)
        mask = additive_causal_mask(attention_mask, model.dtype)
        out = base(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def lm_head_weight(self, model: nn.Module) -> torch.Tensor:
        """[vocab, d] weight of the LM head: the embedding itself when tied, so it is stored once."""
        return model.get_output_embeddings().weight

    def lm_head_bias(self, model: nn.Module) -> torch.Tensor | None:
        return getattr(model.get_output_embeddings(), "bias", None)

    @contextlib.contextmanager
    def trace_patches(self, model: nn.Module) -> Iterator[None]:
        """Tracing workarounds, restored on exit. Each override says why and for which versions."""
        yield

    def tiny_config(self, model_type: str | None = None) -> Any:
        """A tiny random config of this family (of ``model_type``, for families registered under several)."""
        raise NotImplementedError(f"{type(self).__name__} has no tiny_config(); the parity suite needs one")

    # -- derived ---------------------------------------------------------------------------------------------
    def resolve_roles(self, targets: str | list[str]) -> list[str]:
        if targets == ALL_ROLES or targets == [ALL_ROLES]:
            return list(self.roles)
        wanted = targets.split(",") if isinstance(targets, str) else list(targets)
        unknown = [t for t in wanted if t not in self.roles]
        if unknown:
            raise ValueError(
                f"unknown target role(s) {unknown} for {self.name}; choose from {', '.join(self.roles)} or 'all'"
            )
        return [r for r in self.roles if r in wanted]

    def group_of_role(self, role: str) -> str:
        for group, roles in self.groups.items():
            if role in roles:
                return group
        raise KeyError(f"{self.name}: role {role} is in no activation group")
