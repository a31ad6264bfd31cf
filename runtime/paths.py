"""Path containment: every path read from a file must stay inside the folder that file describes.

Stdlib only (runtime/contract.py and export/ use it too). A model folder's manifest names its tokenizer files, an
ONNX graph names its external-data files, a run folder's ``latest`` names a checkpoint folder: each of these is data
that a downloaded (or hostile) folder controls. ``inside(root, name, what=...)`` is the one check they all go
through: the name must be relative, and the path it resolves to (symlinks followed, ``..`` collapsed) must lie in
``root`` resolved the same way. Otherwise it raises ``UnsafePathError`` (a ``ZoEdgeError``: one line naming the
file that holds the name), so ``zo-edge merge`` never copies ``../../etc/passwd`` out of a model folder nor writes
one outside ``--out``.

    from runtime.paths import inside
    src = inside(model_dir, name, what=f"{model_dir}/manifest.json tokenizer_files")
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from runtime.errors import ZoEdgeError

__all__ = ["UnsafePathError", "inside", "is_plain_name"]


class UnsafePathError(ZoEdgeError, ValueError):
    """A path taken from a file points outside the folder it must stay in (absolute, ``..`` or a symlink)."""


def is_plain_name(name: object) -> bool:
    """True for a single, non-hidden path component such as ``tokenizer.json`` (no separator, not ``.``/``..``)."""
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and os.sep not in name
        and (os.altsep is None or os.altsep not in name)
    )


def inside(root: str | os.PathLike, name: str | os.PathLike, *, what: str) -> Path:
    """``root / name`` if it resolves inside ``root`` (symlinks included), else ``UnsafePathError``.

    Args:
        root: the folder the name must stay in (a model folder, a run folder, an output folder).
        name: the relative path as read from a file (it need not exist yet: resolution is non-strict).
        what: where ``name`` came from, for the message, e.g. ``"artifacts/m/manifest.json tokenizer_files"``.

    Returns the joined (not resolved) path, so callers keep the names the user sees.
    """
    if not isinstance(name, str | os.PathLike) or not str(name) or "\x00" in str(name):
        raise UnsafePathError(f"{what}: {name!r} is not a file name; the folder is damaged, re-create it")
    pure = PurePath(name)
    if pure.is_absolute() or pure.anchor or ".." in pure.parts:
        raise UnsafePathError(
            f"{what}: {str(name)!r} points outside {root} (absolute or '..'); refusing to read or write it"
        )
    base = Path(root)
    joined = base / pure
    real_root = os.path.realpath(base)
    real = os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise UnsafePathError(
            f"{what}: {str(name)!r} resolves to {real}, outside {root} (a symlink); refusing to read or write it"
        )
    return joined
