"""Fixtures of the onnxruntime-genai format tests: the torch-free runner, a tiny Llama with a real tokenizer.

    make test-genai                                   # installs what they need, then runs them
    .venv/bin/python -m pytest tests/genai -q -m "not slow"

Two environments, as ``make test-genai`` sets them up: the folder is *built* in this (the main) one, whose torch and
transformers run onnxruntime-genai's model builder (the wheel installed with --no-deps), and *run* in the torch-free
``.venv-genai`` (onnxruntime-genai + onnxruntime + numpy only) through ``run_genai.py``: what a device has.
Without either, the tests skip and say which is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_genai.py")


@pytest.fixture(scope="session")
def genai_run():
    """``genai_run(request: dict) -> dict``: run_genai.py in the torch-free environment (ZO_EDGE_GENAI_PYTHON or
    .venv-genai/bin/python); skips when that environment or the builder here is missing."""
    python = Path(os.environ.get("ZO_EDGE_GENAI_PYTHON", ROOT / ".venv-genai" / "bin" / "python"))
    if not python.is_file():
        pytest.skip(f"needs the torch-free onnxruntime-genai environment {python} (run `make test-genai`)")
    if importlib.util.find_spec("onnxruntime_genai") is None or importlib.util.find_spec("peft") is None:
        pytest.skip("needs onnxruntime-genai's builder and peft in this environment (run `make test-genai`)")

    def run(request: dict, tmp: Path) -> dict:
        path = tmp / "genai_request.json"
        path.write_text(json.dumps(request))
        proc = subprocess.run([str(python), str(RUNNER), str(path)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"run_genai.py failed:\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


VOCAB = 512


def _word_tokenizer(vocab: int):
    """A word-level tokenizer ("w0".."wN", <s> = 1, </s> = 2): the builder saves a tokenizer beside the model and
    genai's config takes bos/eos from it; the tests feed token ids. SmolLM2's own (from its GGUF) takes a minute
    to parse on a loaded 2-core machine and makes the head 49152 wide."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def without_final_eos():
    """``f(torch tokens, prompt, eos ids)``: torch's greedy sequence as genai reports it (genai ends on an EOS
    without appending it, see run_genai.py)."""

    def strip(tokens: list[int], prompt: list[int], eos: list[int]) -> list[int]:
        return tokens[:-1] if len(tokens) > len(prompt) and tokens[-1] in eos else tokens

    return strip


@dataclass
class GenaiTiny:
    dir: Path  # zo-edge fp32 export (with a tokenizer: the builder and genai need one)
    int4_dir: Path  # the same model exported INT4 (block 32)
    reference: object  # the untouched torch model of those exports


@pytest.fixture(scope="session")
def genai_tiny(tmp_path_factory) -> GenaiTiny:
    """A tiny random Llama whose weights make greedy tokens vary (std 0.02 init repeats one token), head size 16
    (onnxruntime's CPU GroupQueryAttention, which the builder emits, refuses head sizes that are not multiples of
    16: the shared tiny config has 8), exported with a word-level tokenizer of its own vocabulary."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from export.architectures import get_architecture
    from export.config import ExportConfig
    from export.exporter import export_model

    tok = _word_tokenizer(VOCAB)
    cfg = get_architecture("llama").tiny_config("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=96)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * (1.2 / p.shape[-1] ** 0.5))  # ~ unit-scale activations
    reference = copy.deepcopy(model)
    root = tmp_path_factory.mktemp("genai-tiny")
    export_model(copy.deepcopy(model), tok, root / "int4", ExportConfig(int4=True), force=True)
    export_model(model, tok, root / "fp32", ExportConfig(), force=True)
    return GenaiTiny(root / "fp32", root / "int4", reference)
