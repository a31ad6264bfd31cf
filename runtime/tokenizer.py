"""Device-side tokenizer: ``tokenizer.json`` read with the ``tokenizers`` library, nothing else.

runtime/ must run where torch and transformers are not installed, so this wraps the Rust tokenizer directly. The
special-token ids are not guessed from the file: the exporter writes them into the manifest (``tokenizer_meta``) and
they are passed in, because a tokenizer.json alone does not say which token pads or starts a sequence.

    tok = Tokenizer.from_manifest_dict("artifacts/smollm2", {"pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2})
    tok.encode(" great")  # no special tokens added; callers decide about BOS

Chat templates (``ChatTemplate``): an instruct model's folder carries its Jinja template (``chat_template.jinja``,
or ``chat_template`` in ``tokenizer_config.json``), which is rendered with ``jinja2`` in a sandbox, the way
transformers renders it (trim_blocks, lstrip_blocks, loopcontrols, ``raise_exception``), so any model's template
works, not only ChatML. ``jinja2`` is a small pure-Python core dependency; runtime still never imports transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer

from runtime.errors import ZoEdgeError

__all__ = ["CHAT_TEMPLATE_FILE", "TOKENIZER_FILE", "ChatTemplate", "Tokenizer", "TokenizerError"]

TOKENIZER_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 saves the template here
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # older saves keep it under "chat_template"


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


class ChatTemplate:
    """A model folder's chat template, rendered like ``transformers``' ``apply_chat_template(tokenize=False)``.

    ``special`` holds the special-token strings a template may name (``bos_token``, ``eos_token``, ...), read from
    the folder's tokenizer_config.json / special_tokens_map.json.
    """

    def __init__(self, source: str, special: dict[str, str] | None = None) -> None:
        from jinja2.exceptions import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TokenizerError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise TokenizerError(f"the chat template does not parse ({e}); fix chat_template.jinja") from None
        self.source = source
        self.special = dict(special or {})

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate | None:
        """The folder's template, or None when its tokenizer has none (a base model)."""
        folder = Path(folder)
        config = _read_json(folder / TOKENIZER_CONFIG_FILE)
        if (folder / CHAT_TEMPLATE_FILE).is_file():
            source = (folder / CHAT_TEMPLATE_FILE).read_text()
        else:
            source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: the default one, as transformers picks it
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if not isinstance(source, str) or not source.strip():
            return None
        special = {}
        for key, value in {**_read_json(folder / "special_tokens_map.json"), **config}.items():
            if key.endswith("_token"):
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    special[key] = value
        return cls(source, special)

    def render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` ([{"role": "user", "content": ...}, ...]), ending with the assistant
        turn's opening when ``add_generation_prompt``."""
        from jinja2.exceptions import TemplateError

        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.special
            )
        except TemplateError as e:
            raise TokenizerError(f"the chat template failed on these messages ({e})") from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}
