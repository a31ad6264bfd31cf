"""``--format genai`` on the real SmolLM2-135M after a 5-step ZO-Act run, checked by the real onnxruntime-genai (slow).

    ZO_EDGE_GENAI_REAL_MODEL=artifacts/shared-smollm2 .venv/bin/python -m pytest tests/genai -q -m slow

The model is ZO_EDGE_GENAI_REAL_MODEL (an fp32 export) or the suite's own fp32 export (``real_model_dirs``). The run
trains ZO-Act for 5 steps (lr 0.05, so that ΔW = C Aᵀ moves the logits beyond float noise); its latest checkpoint
(the best on dev can be step 0, C = 0) is merged with
``--format genai,hf``. Greedy generation of two chat prompts in genai, adapter active, equals torch ``generate`` on
the merged HF model; adapter off, torch on the base (the merged weights minus the run's ΔW, from its checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from export.formats.genai_folder import ADAPTER_FILE, GENAI_DIR
from export.merge import merge_run
from runtime import checkpoint, contract
from zo_edge.cli import main

pytestmark = pytest.mark.slow
NEW_TOKENS = 12
QUESTIONS = ["Is this review positive or negative? A warm, funny and moving film.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def real_fp32(request) -> Path:
    path = os.environ.get("ZO_EDGE_GENAI_REAL_MODEL")
    return Path(path) if path else request.getfixturevalue("real_model_dirs")["fp32"]["dir"]


def _greedy(model, prompts: list[list[int]], max_length: int):
    """Torch greedy tokens (``max_length`` counts the prompt, as genai's does) and last-position prompt logits."""
    import torch

    tokens, logits = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            logits.append(model(input_ids=ids).logits[0, -1].numpy())
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_length=max_length)
            tokens.append(out[0].tolist())
    return tokens, logits


def test_zo_act_run_in_genai_matches_merged_and_base(genai_run, real_fp32, without_final_eos, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    argv = ["train", "--model", str(real_fp32), "--method", "zo-act", "--steps", "5", "--batch-size", "4"]
    argv += ["--k", "4", "--dev-k", "2", "--eval-examples", "4", "--lr", "0.05", "--out", str(run)]
    assert main(argv) == 0
    out = merge_run(run, tmp_path / "merged", which="latest", formats=["genai", "hf"])  # best may be step 0

    tok = AutoTokenizer.from_pretrained(out / "hf")
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True) for q in QUESTIONS
    ]
    longest = max(len(p) for p in prompts)
    request = {
        "folder": str(out / GENAI_DIR),
        "adapters": {"run": str(out / GENAI_DIR / ADAPTER_FILE)},
        "active": [None, "run"],
        "prompts": prompts,
        "max_length": longest + NEW_TOKENS,
    }
    got = genai_run(request, tmp_path)
    import torch

    merged = AutoModelForCausalLM.from_pretrained(out / "hf").float().eval()
    refs = {"run": _greedy(merged, prompts, longest + NEW_TOKENS)}
    arrays, _, _ = checkpoint.load_trained_checkpoint(run, "latest")
    state = merged.state_dict()
    for key, value in arrays.items():
        parsed = contract.parse_adapter_name(key)
        if parsed and parsed[1] == "q":
            p = arrays[contract.adapter_p_name(parsed[0])]
            w = state[f"{parsed[0]}.weight"]
            w -= torch.from_numpy((value.astype(np.float64) @ p.astype(np.float64).T).astype(np.float32))
    refs[""] = _greedy(merged, prompts, longest + NEW_TOKENS)  # the same module, its weights now the base's
    for name, (tokens, logits) in refs.items():
        for i in range(len(prompts)):
            want = without_final_eos(tokens[i], prompts[i], got["eos"])
            assert got[name]["tokens"][i] == want, f"adapter {name or 'off'}, prompt {i}: {got[name]['tokens']}"
            np.testing.assert_allclose(got[name]["logits"][i], logits[i], rtol=1e-3, atol=2e-3)
    moved = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(refs["run"][1], refs[""][1], strict=True))
    assert moved > 1e-2, f"5 ZO-Act steps moved the logits by only {moved:.2g}: the comparison would be vacuous"
