"""The output formats of ``zo-edge merge RUN --format NAME[,NAME...]``: one registry, format name -> writer.

    zo-edge merge runs/rt --out runs/rt-merged --format peft,gguf      # or --format peft --format gguf

A format is one function registered where it is defined, the way architectures and methods are::

    @register_format("peft", help="LoRA adapter for transformers + peft (peft/)")
    def write_peft(ctx: MergeContext, out: Path) -> list[str]: ...

``ctx`` (``export.merge.MergeContext``) holds what the run trained (adapters, changed weights), the model folder
and its manifest, and the shared products a writer may need (the merged HF state dict, a merged or base HF folder,
the LoRA factors); ``out`` is the (temporary) output folder, which becomes ``--out`` only when every requested
format has been written. A writer returns the names it wrote there, for the command's summary line.

Every module of this package is imported by ``registered_formats()``, so adding a format is one file here (the
onnxruntime-genai folder lives in ``genai_folder.py``); zo-edge's own formats ``adapter``, ``hf`` and ``onnx`` are
registered in ``export.merge``. Writers import their heavy packages (torch, gguf, peft) inside the function: the
registry is read by ``zo-edge merge --help`` too.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.errors import ZoEdgeError

if TYPE_CHECKING:
    from export.merge import MergeContext

__all__ = ["Format", "FormatError", "parse_formats", "register_format", "registered_formats"]


class FormatError(ZoEdgeError, ValueError):
    """An unknown ``--format`` name, or a format the run's trained state cannot be written in."""


Writer = Callable[["MergeContext", Path], list[str]]


@dataclass(frozen=True)
class Format:
    name: str
    write: Writer
    help: str
    #: written by a plain ``zo-edge merge`` (no --format): today's outputs, so nothing a user relies on changes
    default: bool = False


_FORMATS: dict[str, Format] = {}


def register_format(name: str, *, help: str, default: bool = False) -> Callable[[Writer], Writer]:
    """Register ``fn`` as the writer of ``--format name`` (a second registration of one name is a bug)."""

    def deco(fn: Writer) -> Writer:
        assert name not in _FORMATS, f"merge format {name!r} is registered twice ({_FORMATS.get(name)})"
        assert name == name.strip().lower() and "," not in name, f"format name {name!r}: lower case, no commas"
        _FORMATS[name] = Format(name, fn, help, default)
        return fn

    return deco


def registered_formats() -> dict[str, Format]:
    """name -> Format, in registration order: export.merge's own, then every module of this package."""
    importlib.import_module("export.merge")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return dict(_FORMATS)


def parse_formats(values: list[str] | None, *, onnx: bool = True) -> list[str]:
    """``--format`` values (each a comma list; repeatable) -> format names in registry order, checked.

    None (no ``--format``): the default formats, without ``onnx`` when ``onnx`` is False (``--no-onnx``).
    """
    known = registered_formats()
    if not values:
        return [n for n, f in known.items() if f.default and (onnx or n != "onnx")]
    wanted = {v.strip().lower() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(wanted - set(known))
    if unknown or not wanted:
        raise FormatError(
            f"unknown --format {', '.join(unknown) or '(empty)'}: choose from {', '.join(known)} (comma list)"
        )
    if not onnx and "onnx" in wanted:
        raise FormatError("--no-onnx contradicts --format onnx: drop one of them")
    return [n for n in known if n in wanted]
