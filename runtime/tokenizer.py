"""Device-side tokenizer: ``tokenizer.json`` read with the ``tokenizers`` library, nothing else.

runtime/ must run where torch and transformers are not installed, so this wraps the Rust tokenizer directly. The
special-token ids are not guessed from the file: the exporter writes them into the manifest (``tokenizer_meta``) and
they are passed in, because a tokenizer.json alone does not say which token pads or starts a sequence.

    tok = Tokenizer.from_manifest_dict("artifacts/smollm2", {"pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2})
    tok.encode(" great")  # no special tokens added; callers decide about BOS
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer

from runtime.errors import ZoEdgeError

__all__ = ["TOKENIZER_FILE", "Tokenizer", "TokenizerError"]

TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ZoEdgeError, ValueError):
    """A tokenizer folder or its special-token ids are unusable; the message says what to fix."""


class Tokenizer:
    """Text <-> token ids for one exported model folder.

    ``encode`` never adds special tokens: batching (zo_edge.batching) prepends BOS itself, so a prompt and its
    label word can be encoded separately and concatenated, the way MeZO scores candidates.
    """

    def __init__(
        self,
        model_dir: str | Path,
        pad_token_id: int,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
    ) -> None:
        path = Path(model_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(
                f"no {TOKENIZER_FILE} in {model_dir}: export the model again or copy its tokenizer there"
            )
        try:
            self._tok = _RustTokenizer.from_file(str(path))
        except Exception as e:  # the Rust error is multi-line and cryptic; keep its first line only
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(f"cannot read {path}: {first}") from e
        vocab = self._tok.get_vocab_size(with_added_tokens=True)
        for name, value in (("pad", pad_token_id), ("bos", bos_token_id), ("eos", eos_token_id)):
            if value is not None and not (isinstance(value, int) and 0 <= value < vocab):
                raise TokenizerError(f"{name}_token_id={value!r} is not a token id of {path} (vocab size {vocab})")
        if pad_token_id is None:
            raise TokenizerError("pad_token_id is required (any id works: padded positions are masked out)")
        self.model_dir = Path(model_dir)
        self._pad, self._bos, self._eos = pad_token_id, bos_token_id, eos_token_id

    @classmethod
    def from_manifest_dict(cls, model_dir: str | Path, d: dict[str, Any]) -> Tokenizer:
        """Build from the manifest's ``tokenizer_meta``; a missing pad id falls back to EOS (pads are masked)."""
        unknown = set(d) - {"pad_token_id", "bos_token_id", "eos_token_id"}
        if unknown:
            raise TokenizerError(f"unknown tokenizer_meta keys {sorted(unknown)}: expected pad/bos/eos_token_id")
        eos = d.get("eos_token_id")
        pad = d.get("pad_token_id", eos)
        if pad is None:
            pad = eos
        if pad is None:
            raise TokenizerError("tokenizer_meta has neither pad_token_id nor eos_token_id: set one in the manifest")
        return cls(model_dir, pad_token_id=pad, bos_token_id=d.get("bos_token_id"), eos_token_id=eos)

    # ---------------------------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over many texts at once (the Rust side parallelises it)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_id(self) -> int | None:
        return self._eos

    def meta(self) -> dict[str, int | None]:
        """The dict ``from_manifest_dict`` reads back, for writing into manifests and checkpoints."""
        return {"pad_token_id": self._pad, "bos_token_id": self._bos, "eos_token_id": self._eos}

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_dir)!r}, vocab={self.vocab_size}, pad={self._pad}, bos={self._bos})"
