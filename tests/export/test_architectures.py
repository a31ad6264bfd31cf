"""Architecture declarations and hooks: the logits hook, trace patches (restored, version-gated), param kinds.

    python -m pytest tests/export/test_architectures.py -q

The parity suite (test_parity.py) checks every tiny case against torch; this file checks what a declaration can
change: an overridden ``logits_transform`` (Gemma-2-style soft cap) reaches the exported loss, exactly as torch
computes it, and a trace patch leaves the model as it found it.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from export.architectures import get_architecture
from export.architectures.base import READY_4D_MASK, TracePatch, _version_tuple, transformers_version
from export.architectures.llama import Llama
from export.exporter import export_model
from export.graph import position_ids_from_mask
from runtime.session import GraphSession

SOFT_CAP = 0.5  # small against these tiny models' logits, so the cap changes the loss far beyond the tolerance


class SoftCappedLlama(Llama):
    """Gemma-2's final logit soft-capping, expressed through the hook alone (Gemma-2 uses cap = 30)."""

    def logits_transform(self, logits: torch.Tensor) -> torch.Tensor:
        return SOFT_CAP * torch.tanh(logits / SOFT_CAP)


def _capped_row_losses(model: torch.nn.Module, batch) -> np.ndarray:
    """Independent reference: the HF model's own logits, soft-capped, then masked row sums of -log p (float64)."""
    ids = torch.from_numpy(batch.input_ids)
    attn = torch.from_numpy(batch.attention_mask)
    eff = (torch.from_numpy(batch.loss_mask)[:, 1:] * attn[:, 1:] * attn[:, :-1]).bool()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    capped = SOFT_CAP * torch.tanh(logits[:, :-1].double() / SOFT_CAP)
    nll = -torch.log_softmax(capped, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.where(eff, nll, 0.0).sum(1).numpy()


def test_logits_transform_reaches_the_loss(tiny, tiny_export, tmp_path):
    model = tiny.build_tiny_model("llama")
    reference = tiny.build_tiny_model("llama")  # same seed: the same weights, untouched by the exporter
    export_model(model, None, tmp_path / "capped", architecture=SoftCappedLlama())
    capped = GraphSession(tmp_path / "capped")
    plain = GraphSession(tiny_export("llama").dir)  # the registry's Llama: identity hook
    for seed in (0, 1):
        batch = tiny.make_batch(tiny.VOCAB, seed=seed)
        want = _capped_row_losses(reference, batch)
        got = capped.losses(batch)
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg="soft-capped loss vs torch")
        assert np.abs(got - plain.losses(batch)).max() > 50 * 1e-4 * np.abs(want).max(), "the hook changed nothing"


def test_default_logits_transform_is_identity():
    x = torch.randn(3, 5)
    assert get_architecture("llama").logits_transform(x) is x


# --- trace patches --------------------------------------------------------------------------------------------
def _hidden(arch, model, batch) -> torch.Tensor:
    ids, attn = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        return arch.hidden_states(model, ids, attn, position_ids_from_mask(attn))


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_ready_mask_patch_restores_and_keeps_the_function(tiny, model_type, monkeypatch):
    """Inside the patch the base model gets a 4D additive mask and computes the same hidden states at the real
    tokens as transformers' own 2D-mask path; on exit (also after an error) the model is as it was."""
    arch = get_architecture(model_type)
    model = tiny.build_tiny_model(model_type)
    base = getattr(model, model.base_model_prefix)
    batch = tiny.make_batch(tiny.VOCAB, seed=3)
    real = torch.from_numpy(batch.attention_mask).bool()
    seen: list[int] = []  # rank of the mask the base model's own forward receives
    own = type(base).forward

    def recording(self, *args, attention_mask=None, **kwargs):
        seen.append(attention_mask.dim())
        return own(self, *args, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(type(base), "forward", recording)
    before = _hidden(arch, model, batch)
    with READY_4D_MASK.apply(model):
        assert "forward" in vars(base), "the patch is not active"
        patched = _hidden(arch, model, batch)
    assert "forward" not in vars(base), "the patch was not undone"
    with pytest.raises(RuntimeError, match="inside"), READY_4D_MASK.apply(model):
        raise RuntimeError("inside")
    assert "forward" not in vars(base), "the patch was not undone after an error"
    after = _hidden(arch, model, batch)
    assert seen == [2, 4, 2], f"mask ranks seen by the base model: {seen}"
    torch.testing.assert_close(patched[real], before[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_trace_patches_are_version_gated(tiny):
    model = tiny.build_tiny_model("llama")
    calls: list[str] = []

    def recording(name):
        @contextlib.contextmanager
        def apply(m):
            calls.append(f"enter {name}")
            try:
                yield
            finally:
                calls.append(f"exit {name}")

        return apply

    future = TracePatch("future", "needed only from transformers 99", recording("future"), min_version=(99,))
    past = TracePatch("past", "needed only before transformers 1", recording("past"), max_version=(1,))
    now = TracePatch("now", "always", recording("now"))
    arch = get_architecture("llama")
    arch.trace_patches = (future, now, past)  # on the instance: the class declaration is untouched
    with arch.patched_for_tracing(model) as applied:
        assert applied == ["now"] and calls == ["enter now"]
    assert calls == ["enter now", "exit now"]
    assert get_architecture("llama").trace_patches == (READY_4D_MASK,)
    assert READY_4D_MASK.applies((4, 53)) and READY_4D_MASK.applies((4, 57, 6)) and not READY_4D_MASK.applies((4, 52))
    with get_architecture("llama").patched_for_tracing(model) as applied:
        assert applied == (["ready-4d-attention-mask"] if transformers_version() >= (4, 53) else [])


def test_version_parsing():
    assert _version_tuple("4.57.6") == (4, 57, 6)
    assert _version_tuple("4.58.0.dev0") == (4, 58, 0)
    assert _version_tuple("4.53.0rc1") == (4, 53, 0)
    assert _version_tuple("5") == (5,)
