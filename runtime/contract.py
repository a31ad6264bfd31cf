"""The on-disk contract between export/ (build side) and runtime/ (device side): port names and the manifest.

Stdlib only: export/ imports this module too, and must not pull in onnxruntime or numpy through it.

The training-forward graph (``model.onnx``) of an exported model
-----------------------------------------------------------------
Inputs (B = batch, T = sequence, both dynamic):

* ``input_ids`` int64 [B, T]; ``attention_mask`` int64 [B, T] (left padding works: positions come from its cumsum);
* ``loss_mask`` int64 [B, T]: 1 where token t is a *target*, predicted from position t-1. The graph additionally drops
  targets whose own or whose predicting position is padding, so a careless mask never scores a pad;
* every float tensor (fp32: all; INT4: all but the quantized linears), named ``param_name(hf_name)``
  (``param::model.layers.0...``), with its values in ``params.safetensors``: the runtime binds these numpy arrays
  zero-copy and updates them in place.
  Targeted linear weights are stored **[d_in, d_out]** (``LAYOUT_IN_OUT``: the layout MatMul consumes, so no
  per-forward transpose and INT4 quantization applies directly); ``zo-edge merge`` restores the family's HF layout
  (``LAYOUT_OUT_IN`` = HF [d_out, d_in] for nn.Linear; GPT-2's Conv1D is in_out in HF too);
* per targeted linear layer ``l``: ``port_p(l)`` float [d_in, r] and ``port_q(l)`` float [d_out, r], r dynamic
  (r = 0 disables the port), adding ``(x @ P) @ Qᵀ`` to the layer output, i.e. ΔW = Q Pᵀ in HF orientation;
  ``port_noise(l)`` float, broadcastable to the output [B, T, d_out] (``[1, 1, 1]`` zeros when unused): Zoop's
  output perturbation;
* ``candidate_ids`` int64 [C] (C dynamic; manifest feature ``FEATURE_CANDIDATE_SCORING``): token ids whose
  log-probabilities ``row_candidate_logp`` returns at every loss position; C = 0 switches it off at near-zero cost
  (a gather of no columns);
The per-layer and per-group ports below come in three *port families* (``PORT_FAMILIES``), and an export may
leave families out (``zo-edge export --ports``; ``Manifest.ports`` lists those the graph has, an old manifest
without the field has all): ``PORTS_LOWRANK`` = the P/Q ports, ``PORTS_NOISE`` = the noise ports, ``PORTS_PROBE`` =
``probe_rows`` and every per-group probe input and output. What a method needs is its ``ports`` declaration
(runtime/method.py); a method whose family is missing is refused before any forward (``check_export``).

* ``probe_rows`` int64 [M]: flat indices (b*T + t) of the tokens the activation probes look at; M = 0 switches every
  basis/sketch computation off at near-zero cost (they run on empty tensors). This is the "switch" that lets one
  graph serve passes with and without bases: onnxruntime computes every output whether or not it is fetched;
* per activation group ``g`` (linears that read the same input, e.g. q/k/v): ``probe_omega(g)`` float
  [d_in, basis_rank] power-iteration start vectors; ``probe_sketch_omega(g)`` float [d_in, s] (s dynamic, 0 = off);
  ``probe_act_rows(g)`` int64 [Ma]: flat token indices whose raw input rows are returned (0 = off).

Outputs:

* ``row_nll`` float [B]: per-row *summed* negative log-likelihood over the effective loss positions;
* ``row_count`` float [B]: number of effective loss positions per row; the LM head runs only at those positions;
* ``row_candidate_logp`` float [B, C] (with ``candidate_ids``): per row, the sum over its effective loss positions of
  log_softmax(logits)[candidate_ids]. A classification example whose label words are single tokens is then ONE row
  (prompt + any one target token: the loss position is the first token after the prompt) instead of one row per
  candidate: every candidate's log-likelihood comes from that same position's logits;
* per group: ``probe_basis(g)`` [d_in, basis_rank]: K power iterations with Gram-Schmidt on Xᵀ X over the probe
  rows, orthonormal columns; ``probe_gram(g)`` [basis_rank, basis_rank] = (X V)ᵀ (X V), from which the runtime's
  Rayleigh-Ritz step orders the directions (an r x r eigh, done in numpy because ONNX has no eig op);
  ``probe_sketch(g)`` [d_in, s] = Xᵀ (X Ω); ``probe_act(g)`` [Ma, d_in].

Trained state on disk (checkpoints and ``zo-edge merge``'s ``adapter.safetensors``)
-----------------------------------------------------------------------------------
One naming scheme: ``adapter_q_name(l)`` / ``adapter_p_name(l)`` hold layer ``l``'s adapter ΔW = Q Pᵀ (HF
orientation, the ports' factor order), ``checkpoint_param_name(k)`` the trained value of bound parameter ``k``; the
``parse_*`` functions invert them. A checkpoint's meta records ``META_FORMAT_VERSION`` (``CHECKPOINT_FORMAT_VERSION``)
and ``META_WEIGHTS_SHA256`` (the base's ``Manifest.weights_sha256``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runtime.errors import ZoEdgeError
from runtime.paths import inside, is_plain_name

__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_INFO_FILE",
    "CHECKPOINT_FORMAT_VERSION",
    "FEATURES",
    "FEATURE_CANDIDATE_HEAD",
    "FEATURE_CANDIDATE_SCORING",
    "FEATURE_FUSED_ATTENTION",
    "FEATURE_INT4_EMBEDDING",
    "FEATURE_MASKED_POSITIONS",
    "FORMAT_VERSION",
    "GRAPH_FILE",
    "INPUT_ATTENTION_MASK",
    "INPUT_CANDIDATE_IDS",
    "INPUT_HIDDEN",
    "INPUT_IDS",
    "INPUT_LOSS_MASK",
    "INPUT_PROBE_ROWS",
    "KIND_BIAS",
    "KIND_EMBEDDING",
    "KIND_LINEAR",
    "KIND_LM_HEAD",
    "KIND_NORM",
    "KIND_OTHER",
    "LAYOUT_HF",
    "LAYOUT_IN_OUT",
    "LAYOUT_OUT_IN",
    "MANIFEST_FILE",
    "META_FORMAT_VERSION",
    "META_WEIGHTS_SHA256",
    "OUTPUT_HIDDEN",
    "OUTPUT_ROW_CANDIDATE_LOGIT",
    "OUTPUT_ROW_CANDIDATE_LOGP",
    "OUTPUT_ROW_COUNT",
    "OUTPUT_ROW_NLL",
    "PARAMS_FILE",
    "PORTS_LOWRANK",
    "PORTS_NOISE",
    "PORTS_PROBE",
    "PORT_FAMILIES",
    "GroupSpec",
    "LinearSpec",
    "Manifest",
    "ManifestError",
    "ParamSpec",
    "adapter_p_name",
    "adapter_q_name",
    "candidate_head_file",
    "check_manifest_dict",
    "checkpoint_param_name",
    "param_name",
    "parse_adapter_name",
    "parse_checkpoint_param_name",
    "port_noise",
    "port_p",
    "port_q",
    "ports_missing",
    "prefix_graph_file",
    "probe_act",
    "probe_act_rows",
    "probe_basis",
    "probe_gram",
    "probe_omega",
    "probe_sketch",
    "probe_sketch_omega",
    "suffix_graph_file",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
GRAPH_FILE = "model.onnx"
PARAMS_FILE = "params.safetensors"

INPUT_IDS = "input_ids"
INPUT_ATTENTION_MASK = "attention_mask"
INPUT_LOSS_MASK = "loss_mask"
INPUT_PROBE_ROWS = "probe_rows"
INPUT_CANDIDATE_IDS = "candidate_ids"
OUTPUT_ROW_NLL = "row_nll"
OUTPUT_ROW_COUNT = "row_count"
OUTPUT_ROW_CANDIDATE_LOGP = "row_candidate_logp"
# Split graphs (export/split.py, runtime/prefix_cache.py): at block boundary S, prefix_S.onnx maps
# (input_ids, attention_mask) to OUTPUT_HIDDEN, the residual stream entering block S [B, T, d]; suffix_S.onnx takes
# it as INPUT_HIDDEN beside the full graph's inputs (ports of blocks >= S only) and has the full graph's outputs.
INPUT_HIDDEN = "hidden_in"
OUTPUT_HIDDEN = "hidden_out"


def prefix_graph_file(split: int) -> str:
    return f"prefix_{split}.onnx"


def suffix_graph_file(split: int) -> str:
    return f"suffix_{split}.onnx"


# The candidates' head (FEATURE_CANDIDATE_HEAD), at the head's split S = n only: hidden_in [B, T, d] (the prefix's
# output, the whole stack), attention_mask, loss_mask, candidate_ids ─▶ final norm ─▶ the C candidates' rows of the
# LM head ─▶ OUTPUT_ROW_CANDIDATE_LOGIT [B, C]. No vocabulary-wide log-sum-exp (28M of a row's 28.3M head MACs on
# SmolLM2), so the logits are log p(candidate) plus a per-row constant: exact for what is invariant to it (softmax
# over the candidates, argmax), which is all a one-row classification objective or prediction reads.
OUTPUT_ROW_CANDIDATE_LOGIT = "row_candidate_logit"


def candidate_head_file(split: int) -> str:
    return f"candidates_{split}.onnx"


# Optional graph capabilities, listed in ``Manifest.features`` by the export that has them. A feature is additive
# (new inputs/outputs; the old ones unchanged), so an export without it still loads and runs the old way: the
# runtime checks ``Manifest.has`` before using one, instead of bumping FORMAT_VERSION and refusing old exports.
FEATURE_CANDIDATE_SCORING = "candidate_scoring"  # input candidate_ids, output row_candidate_logp
# Positions are (cumsum(mask) - 1) * mask, not clamp(min=0): onnxruntime-openvino computes an int64 Clip without a
# max as clip to [0, 0], so older graphs ran with every position 0 (RoPE off) there (issue #17). The runtime refuses
# an export without this feature on OpenVINO.
FEATURE_MASKED_POSITIONS = "masked_positions"
FEATURES = (FEATURE_CANDIDATE_SCORING, FEATURE_MASKED_POSITIONS)  # what this export writes and this runtime knows
# Written only by the export options named; the runtime knows them all.
# ``--attention fused``: attention is onnxruntime's com.microsoft::GroupQueryAttention (CPU and CUDA kernels only);
# the runtime refuses such an export on a provider without it (OpenVINO) instead of failing inside onnxruntime.
FEATURE_FUSED_ATTENTION = "fused_attention"
# ``--int4-embedding``: the token embedding is GatherBlockQuantized and the LM head MatMulNBits (no float table)
FEATURE_INT4_EMBEDDING = "int4_embedding"
# ``candidate_head_file(n)`` exists (an fp32 export whose splits include the head's, n)
FEATURE_CANDIDATE_HEAD = "candidate_head"


# Port families (``zo-edge export --ports``): which of the ports below the graph has. Leaving a family out removes
# its inputs (and outputs) from every graph of the export, and the work they cost: an unused port is still an Add
# (P/Q: two rank-0 MatMuls and an Add; noise: an Add) per targeted linear per forward.
PORTS_LOWRANK = "lowrank"  # port_p / port_q per targeted linear: the low-rank methods' perturbations and adapters
PORTS_NOISE = "noise"  # port_noise per targeted linear: Zoop's output perturbation
PORTS_PROBE = "probe"  # probe_rows + per group probe_omega / probe_sketch_omega / probe_act_rows and their outputs
PORT_FAMILIES = (PORTS_LOWRANK, PORTS_NOISE, PORTS_PROBE)  # every family, in the order manifests list them


def ports_missing(who: str, missing: list[str] | set[str] | frozenset[str], have: list[str], where: str) -> str:
    """The one-line refusal of ``who`` (a method, or a run's trained adapters) on an export ``where`` whose
    ``Manifest.ports`` (``have``) lack the families ``missing``, naming the export flag that adds them."""
    need = [f for f in PORT_FAMILIES if f in missing]
    add = ",".join(f for f in PORT_FAMILIES if f in set(have) | set(missing))
    return (
        f"{who} needs the {', '.join(need)} port{'s' if len(need) == 1 else ' families'}, which {where} was "
        f"exported without (--ports {','.join(have) or 'none'}); re-export it with `zo-edge export --ports {add}` "
        "(or --ports all, the default)"
    )


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


# --- parameter kinds and weight orientations (manifest ParamSpec; export/architectures/base.py declares them) -----
KIND_LINEAR = "linear"  # weight of a linear layer (a role of the architecture)
KIND_BIAS = "bias"
KIND_NORM = "norm"
KIND_EMBEDDING = "embedding"  # token (and learned position) embeddings; a tied LM head is the token embedding
KIND_LM_HEAD = "lm_head"  # an untied LM head's weight
KIND_OTHER = "other"
LAYOUT_IN_OUT = "in_out"  # "[d_in, d_out] storage": what MatMul consumes; every targeted linear weight is bound so
LAYOUT_OUT_IN = "out_in"  # "HF [d_out, d_in]": nn.Linear's weight (GPT-2's Conv1D stores in_out in HF already)
LAYOUT_HF = "hf"  # exactly as in the HF state dict (every bound tensor that is not a targeted linear weight)


# --- names of trained-state arrays: checkpoints (arrays.safetensors) and merge's adapter.safetensors ------------
# One scheme for every file that holds trained state, so a checkpoint's adapter and a merged adapter file name the
# same tensor the same way. A layer's adapter is ΔW = Q Pᵀ in HF orientation [d_out, d_in], with Q [d_out, k] and
# P [d_in, k] (the factor order of the P/Q ports). Layer ids and HF keys never contain "::", so parsing is exact.
CHECKPOINT_FORMAT_VERSION = 1  # of a checkpoint's meta.json; meta without the key predates it
META_FORMAT_VERSION = "format_version"  # meta key: CHECKPOINT_FORMAT_VERSION of the writer
META_WEIGHTS_SHA256 = "weights_sha256"  # meta key: the base's Manifest.weights_sha256, so a run knows its base
ADAPTER_FILE = "adapter.safetensors"  # zo-edge merge: the trained adapters alone, named by adapter_q/p_name
ADAPTER_INFO_FILE = "adapter.json"  # zo-edge merge: which base (weights_sha256) the adapters belong to

_ADAPTER_PREFIX = {"q": "adapter.q::", "p": "adapter.p::"}
_CHECKPOINT_PARAM_PREFIX = "param/"


def adapter_q_name(layer: str) -> str:
    """Array holding the Q factor [d_out, k] of ``layer``'s adapter (ΔW = Q Pᵀ)."""
    return f"{_ADAPTER_PREFIX['q']}{layer}"


def adapter_p_name(layer: str) -> str:
    """Array holding the P factor [d_in, k] of ``layer``'s adapter (ΔW = Q Pᵀ)."""
    return f"{_ADAPTER_PREFIX['p']}{layer}"


def parse_adapter_name(key: str) -> tuple[str, Literal["q", "p"]] | None:
    """``(layer, "q" | "p")`` for a name made by ``adapter_q_name``/``adapter_p_name``; None for any other array."""
    for factor, prefix in _ADAPTER_PREFIX.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return key[len(prefix) :], factor  # type: ignore[return-value]
    return None


def checkpoint_param_name(hf_name: str) -> str:
    """Checkpoint array holding the trained value of the bound parameter ``hf_name`` (methods that change weights)."""
    return f"{_CHECKPOINT_PARAM_PREFIX}{hf_name}"


def parse_checkpoint_param_name(key: str) -> str | None:
    """The HF key of a name made by ``checkpoint_param_name``; None for any other array."""
    if key.startswith(_CHECKPOINT_PARAM_PREFIX) and len(key) > len(_CHECKPOINT_PARAM_PREFIX):
        return key[len(_CHECKPOINT_PARAM_PREFIX) :]
    return None


# --- manifest ----------------------------------------------------------------------------------------------------
class ManifestError(ZoEdgeError, ValueError):
    """A model folder whose manifest is missing, unreadable or from another format version."""


@dataclass
class ParamSpec:
    """A tensor bound as a graph input: every parameter of an fp32 export; of an INT4 export the float ones (norms,
    biases, a float embedding), the quantized linear weights being MatMulNBits initializers."""

    name: str  # HF state-dict key; the graph input is param_name(name)
    shape: list[int]
    kind: str  # KIND_*: "linear" | "bias" | "norm" | "embedding" | "lm_head" | "other"
    layout: str = LAYOUT_HF  # LAYOUT_IN_OUT for targeted linear weights (stored [d_in, d_out]), else LAYOUT_HF


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
    # sha256 of the source weight files (export_source), or of the exported float params (an in-memory model): the
    # base's identity, recorded in every checkpoint's meta (META_WEIGHTS_SHA256) and in merge's adapter.json
    weights_sha256: str
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
    # optional capabilities of the graph (FEATURE_*); a manifest written before this field has none
    features: list[str] = field(default_factory=list)
    # block boundaries S with a prefix_S.onnx / suffix_S.onnx pair (layer-selective training); [] = none
    splits: list[int] = field(default_factory=list)
    # the port families every graph of the export has (PORT_FAMILIES order; ``zo-edge export --ports``); a manifest
    # written before this field has them all, which is what the exporter wrote then
    ports: list[str] = field(default_factory=lambda: list(PORT_FAMILIES))

    def has(self, feature: str) -> bool:
        """Whether the graph has the optional capability ``feature`` (a ``FEATURE_*`` name)."""
        return feature in self.features

    def has_ports(self, family: str) -> bool:
        """Whether the graphs have the ports of ``family`` (a ``PORTS_*`` name)."""
        return family in self.ports

    # -- (de)serialisation ----------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MANIFEST_FILE) -> Manifest:
        """A Manifest from its JSON object, after ``check_manifest_dict`` (schema, versions, bounds): a damaged or
        hostile manifest is one ``ManifestError`` line naming ``where``, never a TypeError or a huge allocation."""
        check_manifest_dict(d, where)
        d = dict(d)
        d["params"] = [ParamSpec(**p) for p in d.get("params", [])]
        d["linears"] = [LinearSpec(**p) for p in d.get("linears", [])]
        d["groups"] = [GroupSpec(**p) for p in d.get("groups", [])]
        return cls(**d)

    @classmethod
    def load(cls, model_dir: str | Path) -> Manifest:
        """Read and check ``model_dir/manifest.json``: its schema (``check_manifest_dict``) and that every file it
        names (tokenizer files) is a plain name inside ``model_dir``, symlinks included (``runtime.paths``)."""
        path = Path(model_dir) / MANIFEST_FILE
        if not Path(model_dir).is_dir():
            raise ManifestError(
                f"model folder {model_dir} does not exist; create it with `zo-edge export MODEL --out DIR`"
            )
        if not path.is_file():
            raise ManifestError(
                f"{model_dir} has no {MANIFEST_FILE}: it is not a zo-edge export; run `zo-edge export`"
            )
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is over {MAX_MANIFEST_BYTES >> 20} MiB, not a manifest; re-export the model")
        try:
            data = json.loads(path.read_text("utf-8"), parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            raise ManifestError(f"{path} is not valid JSON ({e}); re-export the model with --force") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} holds a JSON {type(data).__name__}, not an object; re-export the model")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{path} has format version {version}, this zo-edge reads {FORMAT_VERSION}; re-export with --force"
            )
        manifest = cls.from_dict(data, str(path))
        for name in manifest.tokenizer_files:
            inside(model_dir, name, what=f"{path} tokenizer_files")
        return manifest


# --- manifest schema: what Manifest.from_dict accepts ------------------------------------------------------------
# Bounds far above any model zo-edge can train on a device, far below what would make a hostile manifest allocate
# terabytes (the runtime allocates [d_in, basis_rank] probe inputs per group and zero-rank ports per layer).
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_DIM = 2**18  # d_in / d_out of a linear layer, an activation group's width (Llama-405B's widest is 53248)
MAX_VOCAB = 2**22
MAX_TENSOR_ELEMENTS = 2**34  # one bound tensor (a 4M-vocab x 4096 embedding is 2**34)
MAX_BASIS_RANK = 256
MAX_POWER_ITERS = 64
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
DTYPES = ("fp32", "int4")
KINDS = (KIND_LINEAR, KIND_BIAS, KIND_NORM, KIND_EMBEDDING, KIND_LM_HEAD, KIND_OTHER)
LAYOUTS = (LAYOUT_IN_OUT, LAYOUT_OUT_IN, LAYOUT_HF)
#: hf_config sizes that ``zo-edge merge`` builds a torch model from: bounded like the manifest's own dimensions
_HF_SIZES = (
    "hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner", "ffn_dim", "word_embed_proj_dim",
)  # fmt: skip


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a manifest")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Schema:
    """Collects the first problem of a manifest dict as one ManifestError line naming the file and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: {key} {problem}; the model folder is damaged, re-export it with --force")

    def keys(self, d: Any, cls: type, key: str) -> None:
        if not isinstance(d, dict):
            raise self.fail(key, f"must be an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing, unknown = sorted(required - set(d)), sorted(set(d) - names)
        if missing:
            raise self.fail(key, f"lacks {', '.join(missing)}")
        if unknown:
            raise self.fail(key, f"has unknown key(s) {', '.join(map(repr, unknown[:5]))}")

    def integer(self, x: Any, key: str, low: int, high: int, *, none: bool = False) -> None:
        if x is None and none:
            return
        if not _is_int(x) or not low <= x <= high:
            null = " or null" if none else ""
            raise self.fail(key, f"must be an integer in {low}..{high}{null}, got {x!r}")

    def string(self, x: Any, key: str, *, none: bool = False, choices: tuple[str, ...] = ()) -> None:
        if x is None and none:
            return
        if not isinstance(x, str) or (choices and x not in choices):
            want = f"one of {', '.join(choices)}" if choices else "a string"
            raise self.fail(key, f"must be {want}, got {x!r}")

    def array(self, x: Any, key: str) -> list:
        if not isinstance(x, list):
            raise self.fail(key, f"must be a list, got {type(x).__name__}")
        return x


def check_manifest_dict(d: Any, where: str = MANIFEST_FILE) -> None:
    """Raise ManifestError (one line naming ``where`` and the key) unless ``d`` is a manifest this runtime reads:
    exactly the known keys, each of its type, dimensions within bounds, and consistent cross-references (every
    linear's weight a param of shape [d_in, d_out], every group's layers real linears of its width)."""
    v = _Schema(where)
    v.keys(d, Manifest, "the manifest")
    v.integer(d["format_version"], "format_version", FORMAT_VERSION, FORMAT_VERSION)
    for key in ("architecture", "model_type", "source", "weights_sha256"):
        v.string(d[key], key)
    v.string(d["dtype"], "dtype", choices=DTYPES)
    if d["dtype"] == "int4":
        if d["int4_block_size"] not in INT4_BLOCK_SIZES:
            raise v.fail("int4_block_size", f"must be one of {INT4_BLOCK_SIZES} for an int4 export")
    else:
        v.integer(d["int4_block_size"], "int4_block_size", 1, 1024, none=True)
    v.integer(d["basis_rank"], "basis_rank", 1, MAX_BASIS_RANK)
    v.integer(d["power_iters"], "power_iters", 0, MAX_POWER_ITERS)
    v.integer(d["vocab_size"], "vocab_size", 1, MAX_VOCAB)
    v.integer(d["pad_token_id"], "pad_token_id", 0, d["vocab_size"] - 1)
    v.integer(d["bos_token_id"], "bos_token_id", 0, d["vocab_size"] - 1, none=True)
    v.integer(d["eos_token_id"], "eos_token_id", 0, d["vocab_size"] - 1, none=True)
    for i, name in enumerate(v.array(d["tokenizer_files"], "tokenizer_files")):
        if not is_plain_name(name) or name.startswith("."):
            raise v.fail(f"tokenizer_files[{i}]", f"must be a plain file name inside the folder, got {name!r}")
    hf = d["hf_config"]
    if not isinstance(hf, dict):
        raise v.fail("hf_config", f"must be an object, got {type(hf).__name__}")
    for key in _HF_SIZES:
        if key in hf and hf[key] is not None:
            v.integer(hf[key], f"hf_config.{key}", 1, MAX_VOCAB if key == "vocab_size" else MAX_DIM)
    secs = d.get("export_seconds", 0.0)
    if not (isinstance(secs, int | float) and not isinstance(secs, bool) and 0 <= secs < 1e9):
        raise v.fail("export_seconds", f"must be a number >= 0, got {secs!r}")
    for i, f in enumerate(v.array(d.get("features", []), "features")):
        v.string(f, f"features[{i}]")
    splits = v.array(d.get("splits", []), "splits")
    for i, s in enumerate(splits):
        v.integer(s, f"splits[{i}]", 1, 4096)
    if len(set(splits)) != len(splits):
        raise v.fail("splits", f"lists a block twice: {splits}")
    ports = v.array(d.get("ports", list(PORT_FAMILIES)), "ports")
    for i, f in enumerate(ports):
        v.string(f, f"ports[{i}]", choices=PORT_FAMILIES)
    if len(set(ports)) != len(ports):
        raise v.fail("ports", f"lists a family twice: {ports}")

    params: dict[str, list[int]] = {}
    for i, p in enumerate(v.array(d.get("params", []), "params")):
        key = f"params[{i}]"
        v.keys(p, ParamSpec, key)
        v.string(p["name"], f"{key}.name")
        if p["name"] in params:
            raise v.fail(f"{key}.name", f"{p['name']!r} is listed twice")
        shape = v.array(p["shape"], f"{key}.shape")
        if len(shape) > 8:
            raise v.fail(f"{key}.shape", f"has {len(shape)} dimensions")
        numel = 1
        for j, dim in enumerate(shape):
            v.integer(dim, f"{key}.shape[{j}]", 0, MAX_TENSOR_ELEMENTS)
            numel *= dim
        if numel > MAX_TENSOR_ELEMENTS:
            raise v.fail(f"{key}.shape", f"{shape} holds {numel} elements, over the {MAX_TENSOR_ELEMENTS} bound")
        v.string(p["kind"], f"{key}.kind", choices=KINDS)
        v.string(p.get("layout", LAYOUT_HF), f"{key}.layout", choices=LAYOUTS)
        params[p["name"]] = shape
    if d["dtype"] == "fp32" and not params:
        raise v.fail("params", "is empty, but an fp32 export binds its weights")

    linears: dict[str, int] = {}
    for i, lin in enumerate(v.array(d.get("linears", []), "linears")):
        key = f"linears[{i}]"
        v.keys(lin, LinearSpec, key)
        for k in ("name", "role", "group"):
            v.string(lin[k], f"{key}.{k}")
        if lin["name"] in linears:
            raise v.fail(f"{key}.name", f"{lin['name']!r} is listed twice")
        v.integer(lin["d_in"], f"{key}.d_in", 1, MAX_DIM)
        v.integer(lin["d_out"], f"{key}.d_out", 1, MAX_DIM)
        for k in ("weight", "bias"):
            v.string(lin.get(k), f"{key}.{k}", none=True)
        w = lin["weight"]
        if w is not None and params.get(w) != [lin["d_in"], lin["d_out"]]:
            raise v.fail(
                f"{key}.weight", f"{w!r} must be a param of shape [d_in, d_out] = {[lin['d_in'], lin['d_out']]}"
            )
        b = lin.get("bias")
        if b is not None and params.get(b) != [lin["d_out"]]:
            raise v.fail(f"{key}.bias", f"{b!r} must be a param of shape [d_out] = [{lin['d_out']}]")
        linears[lin["name"]] = lin["d_in"]

    groups: set[str] = set()
    for i, g in enumerate(v.array(d.get("groups", []), "groups")):
        key = f"groups[{i}]"
        v.keys(g, GroupSpec, key)
        v.string(g["name"], f"{key}.name")
        if g["name"] in groups:
            raise v.fail(f"{key}.name", f"{g['name']!r} is listed twice")
        v.integer(g["d_in"], f"{key}.d_in", 1, MAX_DIM)
        for j, layer in enumerate(v.array(g["layers"], f"{key}.layers")):
            if linears.get(layer) != g["d_in"]:
                raise v.fail(f"{key}.layers[{j}]", f"{layer!r} must be a linear with d_in = {g['d_in']}")
        groups.add(g["name"])
    for i, lin in enumerate(d.get("linears", [])):
        if lin["group"] not in groups:
            raise v.fail(f"linears[{i}].group", f"{lin['group']!r} is not a group of the manifest")
