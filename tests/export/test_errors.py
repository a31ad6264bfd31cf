"""Export failures: each is one line saying what to fix, and none leaves a folder (or a temporary sibling) behind.

python -m pytest tests/export/test_errors.py -q
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import export.exporter
import export.source
from export.architectures import UnsupportedArchitectureError
from export.config import ExportConfig
from export.exporter import export_model, export_source
from export.source import SourceError
from runtime import contract
from runtime.errors import ZoEdgeError


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, f"error is not one line: {msg!r}"
    return msg


def leftovers(parent, name: str) -> list[str]:
    """Anything in ``parent`` that belongs to an export to ``parent/name``: the folder, or a hidden temp/trash
    sibling of runtime.atomic (``.tmp-<name>-<pid>-<hex>``, ``.trash-<name>-...``)."""
    return sorted(
        p.name for p in parent.iterdir() if p.name == name or p.name.startswith((f".tmp-{name}-", f".trash-{name}-"))
    )


def tiny_causal(config) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


# --- sources ---------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(SourceError) as e:
        export_source(str(tmp_path / "no-such-model"), tmp_path / "out")
    assert "not found" in one_line(e) and "smollm2-135m" in str(e.value), "should list the aliases"
    assert not (tmp_path / "out").exists()


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(SourceError) as e:
        export_source(str(f), tmp_path / "out")
    assert ".gguf" in one_line(e)


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(SourceError) as e:
        export_source(str(tmp_path / "m"), tmp_path / "out")
    assert "config.json" in one_line(e)


def test_gguf_without_gguf_package(tmp_path, monkeypatch):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(SourceError) as e:
        export_source(str(f), tmp_path / "out")
    assert "pip install gguf" in one_line(e)
    with pytest.raises(SourceError) as e:  # the alias is a GGUF too
        export.source.resolve_source("smollm2-135m")
    assert "gguf" in one_line(e)
    assert not (tmp_path / "out").exists()


# --- architectures ---------------------------------------------------------------------------------------------
def _bert():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        is_decoder=True,
    )


def _bloom():
    from transformers import BloomConfig

    return BloomConfig(vocab_size=97, hidden_size=32, n_layer=1, n_head=2)


@pytest.mark.parametrize("make_config", [_bert, _bloom], ids=["bert", "bloom"])
def test_unsupported_architecture(tmp_path, make_config):
    config = make_config()
    with pytest.raises(UnsupportedArchitectureError) as e:
        export_model(tiny_causal(config), None, tmp_path / "out", ExportConfig())
    msg = one_line(e)
    assert repr(config.model_type) in msg and "llama" in msg and "gpt2" in msg, msg
    assert leftovers(tmp_path, "out") == []


def test_unsupported_architecture_folder_fails_before_loading(tmp_path):
    """A HF folder (no tokenizer) of an unsupported family: the one-line error, not a tokenizer crash."""
    tiny_causal(_bloom()).save_pretrained(tmp_path / "bloom")
    with pytest.raises(UnsupportedArchitectureError) as e:
        export_source(str(tmp_path / "bloom"), tmp_path / "out")
    assert "'bloom'" in one_line(e)
    assert leftovers(tmp_path, "out") == []


def test_bad_target_role(tmp_path, tiny):
    model = tiny.build_tiny_model("llama")
    with pytest.raises(ValueError) as e:
        export_model(model, None, tmp_path / "out", ExportConfig(targets="q,attn"))
    msg = one_line(e)
    assert "'attn'" in msg and "gate" in msg and "'all'" in msg, msg
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize(
    ("kwargs", "flag"), [({"block_size": 48}, "--block-size"), ({"basis_rank": 0}, "--basis-rank")]
)
def test_bad_export_config(kwargs, flag):
    with pytest.raises(ValueError) as e:
        ExportConfig(**kwargs)
    assert flag in one_line(e)


# --- the output folder -----------------------------------------------------------------------------------------
def test_existing_output_without_force(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for call in (
        lambda: export_model(tiny.build_tiny_model("llama"), None, out, ExportConfig()),
        lambda: export_source(str(tmp_path / "whatever"), out),  # checked before the source is even resolved
    ):
        with pytest.raises(ZoEdgeError) as e:  # one line at the CLI
            call()
        assert "--force" in one_line(e)
    assert (out / "keep.txt").read_text() == "mine"
    assert leftovers(tmp_path, "out") == ["out"]


def test_failure_leaves_no_folder(tmp_path, tiny, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(export.exporter, "_save_graph", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(tiny.build_tiny_model("llama"), None, tmp_path / "out", ExportConfig())
    assert leftovers(tmp_path, "out") == [], "a failed export left files behind"


def test_failure_with_force_keeps_the_old_folder(tmp_path, tiny, monkeypatch):
    out = tmp_path / "out"
    export_model(tiny.build_tiny_model("llama"), None, out, ExportConfig())
    before = sorted(p.name for p in out.iterdir())
    manifest = (out / contract.MANIFEST_FILE).read_text()

    def boom(*a, **k):
        raise RuntimeError("killed mid-export (simulated)")

    monkeypatch.setattr(export.exporter, "quantize_int4", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_model(tiny.build_tiny_model("llama"), None, out, ExportConfig(int4=True), force=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / contract.MANIFEST_FILE).read_text() == manifest, "the previous export was touched"
    assert leftovers(tmp_path, "out") == ["out"]


def test_every_export_error_is_a_user_error():
    """The CLI prints ZoEdgeError subclasses as one line (exit 2); anything else is a bug with its traceback."""
    from export.config import ExportConfigError
    from export.exporter import ExportError
    from export.merge import MergeError
    from runtime.atomic import FolderExistsError

    for cls in (SourceError, UnsupportedArchitectureError, ExportConfigError, ExportError, MergeError):
        assert issubclass(cls, ZoEdgeError), cls
    assert issubclass(FolderExistsError, ZoEdgeError) and issubclass(contract.ManifestError, ZoEdgeError)
