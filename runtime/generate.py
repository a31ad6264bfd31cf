"""Text generation from a merged model's KV-cache ONNX graph (optimum's text-generation-with-past layout).

    zo-edge generate runs/rt-merged "The movie was" --max-new-tokens 20 [--sample --temperature 0.8 --top-k 50]
    zo-edge generate runs/rt-merged "Is this review positive? A fine film."   # an instruct model: --chat is on

onnxruntime + tokenizers (+ jinja2 for chat templates) only (device side). Inputs found by name: input_ids,
attention_mask, position_ids (if present), past_key_values.{i}.key/value; outputs logits and present.{i}.key/value.

``chat``: an instruct model expects its chat template around the user's text (SmolLM2-Instruct: ChatML turns), so
``generate(prompt, chat=True)`` renders ``[{"role": "user", "content": prompt}]`` with the folder's template
(``runtime.tokenizer.ChatTemplate``) and the assistant turn's opening. Generation stops at the model's end-of-turn
/ EOS ids (``generation_config.json`` and ``config.json`` ``eos_token_id``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.errors import ZoEdgeError
from runtime.providers import resolve_providers
from runtime.tokenizer import ChatTemplate

__all__ = ["GenerateError", "Generator"]


class GenerateError(ZoEdgeError, FileNotFoundError):
    """A folder that holds no merged model to generate with."""


class Generator:
    def __init__(
        self, onnx_dir: str | Path, provider: str = "cpu", *, provider_options: Mapping[str, str] | None = None
    ) -> None:
        """``provider_options``: the first provider's options (``openvino``: ``precision=FP32``), as onnxruntime
        takes them; the cross-provider report pins precision through it."""
        from tokenizers import Tokenizer

        onnx_dir = Path(onnx_dir)
        path = onnx_dir / "model.onnx"
        if not path.is_file():
            raise GenerateError(f"{path} not found: generate needs a merged model (zo-edge merge RUN --out DIR)")
        self.providers = resolve_providers(provider)
        self.provider_options = [dict(provider_options or {})] + [{} for _ in self.providers[1:]]
        self.session = ort.InferenceSession(
            str(path), providers=self.providers, provider_options=self.provider_options
        )
        self.tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
        #: the folder's chat template (None: a base model, prompts go in as they are)
        self.chat_template = ChatTemplate.from_folder(onnx_dir)
        self.eos_token_ids = _eos_ids(onnx_dir)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = sorted(n for n in self.inputs if n.startswith("past_key_values"))

    def _empty_past(self) -> dict[str, np.ndarray]:
        out = {}
        for name in self.past:
            shape = self.inputs[name].shape  # [batch, heads, past, head_dim] with symbolic dims
            out[name] = np.zeros((1, int(shape[1]), 0, int(shape[3])), np.float32)
        return out

    def sequence_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [B, T, V] for unpadded sequences [B, T] in one pass from an empty cache (parity checks)."""
        ids = np.asarray(ids, np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        for name, empty in self._empty_past().items():
            feed[name] = np.repeat(empty, ids.shape[0], axis=0)
        names = [o.name for o in self.session.get_outputs()]
        return self.session.run(["logits"], feed)[0] if "logits" in names else None

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        *,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        seed: int = 0,
        eos_token_id: int | None = None,
        chat: bool = False,
        stop_at_eos: bool = False,
    ) -> str:
        """The continuation of ``prompt`` (``chat``: the assistant's reply to it as a user turn), as text;
        ``stop_at_eos``: stop at the model's own EOS / end-of-turn ids (``eos_token_ids``)."""
        if chat:
            if self.chat_template is None:
                raise GenerateError("this model's tokenizer has no chat template: drop --chat")
            prompt = self.chat_template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return self.tokenizer.decode(
            self.generate_ids(
                ids,
                max_new_tokens,
                sample=sample,
                temperature=temperature,
                top_k=top_k,
                seed=seed,
                eos_token_id=eos_token_id,
                stop_ids=self.eos_token_ids if stop_at_eos else (),
            )
        )

    def generate_ids(
        self,
        ids: list[int],
        max_new_tokens: int = 20,
        *,
        sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        seed: int = 0,
        eos_token_id: int | None = None,
        stop_ids: Collection[int] = (),
    ) -> list[int]:
        """The new token ids after ``ids`` (a prompt already tokenized, BOS included if wanted), through the cache;
        generation ends before ``eos_token_id`` or any of ``stop_ids``."""
        stop = set(stop_ids) | ({eos_token_id} if eos_token_id is not None else set())
        rng = np.random.default_rng(seed)
        past = self._empty_past()
        new: list[int] = []
        step_ids = ids
        total = 0
        for _ in range(max_new_tokens):
            feed = {"input_ids": np.array([step_ids], np.int64)}
            total += len(step_ids)
            feed["attention_mask"] = np.ones((1, total), np.int64)
            if "position_ids" in self.inputs:
                feed["position_ids"] = np.arange(total - len(step_ids), total, dtype=np.int64)[None]
            feed.update(past)
            outs = self.session.run(None, feed)
            names = [o.name for o in self.session.get_outputs()]
            logits = outs[names.index("logits")][0, -1].astype(np.float64)
            past = {
                n.replace("present", "past_key_values"): v for n, v in zip(names, outs, strict=True) if "present" in n
            }
            if sample:
                logits = logits / max(temperature, 1e-6)
                top = np.argpartition(logits, -top_k)[-top_k:]
                p = np.exp(logits[top] - logits[top].max())
                token = int(top[rng.choice(len(top), p=p / p.sum())])
            else:
                token = int(np.argmax(logits))
            if token in stop:
                break
            new.append(token)
            step_ids = [token]
        return new


def _eos_ids(folder: Path) -> tuple[int, ...]:
    """The ids that end a reply: ``eos_token_id`` of generation_config.json and config.json (an int or a list)."""
    import json

    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text()).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return tuple(ids)
