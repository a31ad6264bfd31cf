"""The on-disk contract between export/ (build side) and runtime/ (device side): port names and the manifest.

Stdlib only: export/ imports this module too, and must not pull in onnxruntime or numpy through it.

The training-forward graph (``model.onnx``) of an exported model
-----------------------------------------------------------------
Inputs (B = batch, T = sequence, both dynamic):

* ``input_ids`` int64 [B, T]; ``attention_mask`` int64 [B, T] (left padding works: positions come from its cumsum);
* ``loss_mask`` int64 [B, T]: 1 where token t is a *target*, predicted from position t-1. The graph additionally drops
  targets whose own or whose predicting position is padding, so a careless mask never scores a pad;
* every trainable tensor of the fp32 export, named ``param_name(hf_name)`` (``param::model.layers.0...``), with its
  values in ``params.safetensors``: the runtime binds these numpy arrays zero-copy and updates them in place.
  Linear weights are stored **[d_in, d_out]** (the layout MatMul consumes, so no per-forward transpose and INT4
  quantization applies directly); HF's [d_out, d_in] is restored by ``zo-edge merge``;
* per targeted linear layer ``l``: ``port_p(l)`` float [d_in, r] and ``port_q(l)`` float [d_out, r], r dynamic
  (r = 0 disables the port), adding ``(x @ P) @ Qᵀ`` to the layer output, i.e. ΔW = Q Pᵀ in HF orientation;
  ``port_noise(l)`` float, broadcastable to the output [B, T, d_out] (``[1, 1, 1]`` zeros when unused): Zoop's
  output perturbation;
* ``probe_rows`` int64 [M]: flat indices (b*T + t) of the tokens the activation probes look at; M = 0 switches every
  basis/sketch computation off at near-zero cost (they run on empty tensors). This is the "switch" that lets one
  graph serve passes with and without bases: onnxruntime computes every output whether or not it is fetched;
* per activation group ``g`` (linears that read the same input, e.g. q/k/v): ``probe_omega(g)`` float
  [d_in, basis_rank] power-iteration start vectors; ``probe_sketch_omega(g)`` float [d_in, s] (s dynamic, 0 = off);
  ``probe_act_rows(g)`` int64 [Ma]: flat token indices whose raw input rows are returned (0 = off).

Outputs:

* ``row_nll`` float [B]: per-row *summed* negative log-likelihood over the effective loss positions;
* ``row_count`` float [B]: number of effective loss positions per row; the LM head runs only at those positions;
* per group: ``probe_basis(g)`` [d_in, basis_rank]: K power iterations with Gram-Schmidt on Xᵀ X over the probe
  rows, orthonormal columns; ``probe_gram(g)`` [basis_rank, basis_rank] = (X V)ᵀ (X V), from which the runtime's
  Rayleigh-Ritz step orders the directions (an r x r eigh, done in numpy because ONNX has no eig op);
  ``probe_sketch(g)`` [d_in, s] = Xᵀ (X Ω); ``probe_act(g)`` [Ma, d_in].
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "GRAPH_FILE",
    "INPUT_ATTENTION_MASK",
    "INPUT_IDS",
    "INPUT_LOSS_MASK",
    "INPUT_PROBE_ROWS",
    "MANIFEST_FILE",
    "OUTPUT_ROW_COUNT",
    "OUTPUT_ROW_NLL",
    "PARAMS_FILE",
    "GroupSpec",
    "LinearSpec",
    "Manifest",
    "ManifestError",
    "ParamSpec",
    "param_name",
    "port_noise",
    "port_p",
    "port_q",
    "probe_act",
    "probe_act_rows",
    "probe_basis",
    "probe_gram",
    "probe_omega",
    "probe_sketch",
    "probe_sketch_omega",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.onnx"
PARAMS_FILE = "params.safetensors"

INPUT_IDS = "input_ids"
INPUT_ATTENTION_MASK = "attention_mask"
INPUT_LOSS_MASK = "loss_mask"
INPUT_PROBE_ROWS = "probe_rows"
OUTPUT_ROW_NLL = "row_nll"
OUTPUT_ROW_COUNT = "row_count"


# --- every graph tensor name comes from one of these functions -------------------------------------------------
def param_name(hf_name: str) -> str:
    """Graph input holding the trainable tensor ``hf_name`` (a Hugging Face state-dict key)."""
    return f"param::{hf_name}"


def port_p(layer: str) -> str:
    return f"zo.P::{layer}"


def port_q(layer: str) -> str:
    return f"zo.Q::{layer}"


def port_noise(layer: str) -> str:
    return f"zo.noise::{layer}"


def probe_omega(group: str) -> str:
    return f"probe.omega::{group}"


def probe_sketch_omega(group: str) -> str:
    return f"probe.sketch_omega::{group}"


def probe_act_rows(group: str) -> str:
    return f"probe.act_rows::{group}"


def probe_basis(group: str) -> str:
    return f"probe.basis::{group}"


def probe_gram(group: str) -> str:
    return f"probe.gram::{group}"


def probe_sketch(group: str) -> str:
    return f"probe.sketch::{group}"


def probe_act(group: str) -> str:
    return f"probe.act::{group}"


# --- manifest ----------------------------------------------------------------------------------------------------
class ManifestError(ValueError):
    """A model folder whose manifest is missing, unreadable or from another format version."""


@dataclass
class ParamSpec:
    """A tensor bound as a graph input (fp32 export only; INT4 bases are frozen initializers)."""

    name: str  # HF state-dict key; the graph input is param_name(name)
    shape: list[int]
    kind: str  # "linear" | "bias" | "norm" | "embedding" | "other"
    layout: str = "hf"  # "in_out" for linear weights stored [d_in, d_out]


@dataclass
class LinearSpec:
    """A targeted linear layer: its ports, its activation group, and where its weight lives."""

    name: str  # layer id, e.g. "model.layers.0.self_attn.q_proj"
    role: str  # "q" | "k" | "v" | "o" | "gate" | "up" | "down" | "qkv" | "fc1" | "fc2" ...
    d_in: int
    d_out: int
    group: str  # activation group (layers reading the same input)
    weight: str | None  # HF key of the weight if it is a bound param (fp32), None when frozen in the graph (INT4)
    bias: str | None = None  # HF key of the bias if it is a bound param


@dataclass
class GroupSpec:
    name: str
    d_in: int
    layers: list[str]


@dataclass
class Manifest:
    format_version: int
    architecture: str  # registry key, e.g. "llama"
    model_type: str  # HF config.model_type
    source: str  # what the user passed (path or alias)
    weights_sha256: str  # hash of the source weights, so a run can tell which base it trained
    dtype: str  # "fp32" | "int4"
    int4_block_size: int | None
    basis_rank: int
    power_iters: int
    vocab_size: int
    pad_token_id: int
    bos_token_id: int | None
    eos_token_id: int | None
    tokenizer_files: list[str]
    hf_config: dict[str, Any]
    params: list[ParamSpec] = field(default_factory=list)
    linears: list[LinearSpec] = field(default_factory=list)
    groups: list[GroupSpec] = field(default_factory=list)
    export_seconds: float = 0.0

    # -- (de)serialisation ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["params"] = [ParamSpec(**p) for p in d.get("params", [])]
        d["linears"] = [LinearSpec(**p) for p in d.get("linears", [])]
        d["groups"] = [GroupSpec(**p) for p in d.get("groups", [])]
        return cls(**d)

    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        path = Path(model_dir) / MANIFEST_FILE
        if not Path(model_dir).is_dir():
            raise ManifestError(
                f"model folder {model_dir} does not exist; create it with `zo-edge export MODEL --out DIR`"
            )
        if not path.is_file():
            raise ManifestError(
                f"{model_dir} has no {MANIFEST_FILE}: it is not a zo-edge export; run `zo-edge export`"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON ({e}); re-export the model with --force") from None
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{path} has format version {version}, this zo-edge reads {FORMAT_VERSION}; re-export with --force"
            )
        return cls.from_dict(data)

    # -- lookups ----------------------------------------------------------------------------------------------
    def linear(self, name: str) -> LinearSpec:
        for spec in self.linears:
            if spec.name == name:
                return spec
        raise KeyError(f"no targeted linear named {name!r}")

    def group_of(self, layer: str) -> GroupSpec:
        g = self.linear(layer).group
        return next(x for x in self.groups if x.name == g)
