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

import mmap
import os
from pathlib import Path, PurePath

from runtime.errors import ZoEdgeError

__all__ = ["GraphFileError", "UnsafePathError", "check_graph_file", "inside", "is_plain_name", "onnx_external_data"]


class UnsafePathError(ZoEdgeError, ValueError):
    """A path taken from a file points outside the folder it must stay in (absolute, ``..`` or a symlink)."""


class GraphFileError(ZoEdgeError, ValueError):
    """An ONNX graph file that is truncated or not a protobuf ModelProto."""


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


# --- ONNX external data ---------------------------------------------------------------------------------------------
# An ONNX TensorProto may keep its bytes in another file (external_data: {"location": NAME, ...}). onnxruntime 1.32
# refuses a location outside the model's folder, but with a multi-line C++ message, and older versions (we accept
# >= 1.20) do not check. So the graph's locations are read here first, with a minimal protobuf walk (no onnx package
# on the device side): ModelProto.graph(7) / .functions(25) -> GraphProto.node(1) / .initializer(5) /
# .sparse_initializer(15) -> NodeProto.attribute(5) -> AttributeProto.t(5) / .g(6) / .tensors(10) / .graphs(11) /
# .sparse_tensor(22) / .sparse_tensors(23) -> TensorProto.external_data(13) -> StringStringEntryProto key(1) value(2).
_MODEL = {7: "graph", 25: "function"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_FUNCTION = {7: "node"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_KINDS = {"graph": _GRAPH, "function": _FUNCTION, "node": _NODE, "attribute": _ATTRIBUTE, "sparse": _SPARSE}


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the message buf[start:end]; others skipped."""
    i = start
    while i < end:
        tag, i = _varint(buf, i, end)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(buf, i, end)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError("field runs past the end")
            yield tag >> 3, i, i + n
            i += n
        else:
            raise ValueError(f"wire type {wire}")
        if i > end:
            raise ValueError("field runs past the end")


def _tensor_locations(buf: memoryview, start: int, end: int, out: list[str]) -> None:
    for field, s, e in _fields(buf, start, end):
        if field == 13:  # external_data entry
            entry = {k: bytes(buf[a:b]) for k, a, b in _fields(buf, s, e)}
            if entry.get(1) == b"location":
                out.append(entry.get(2, b"").decode("utf-8", "replace"))


def onnx_external_data(path: str | os.PathLike) -> list[str]:
    """Every external-data ``location`` an ONNX file names (initializers, attributes and subgraphs included).

    Raises ``GraphFileError`` (one line naming the file) when the file is not a well-formed protobuf: truncated,
    or not ONNX at all.
    """
    path = Path(path)
    out: list[str] = []
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise GraphFileError(f"{path} is empty; re-export the model with --force")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                stack: list[tuple[dict[int, str], int, int]] = [(_MODEL, 0, size)]
                while stack:
                    kinds, s0, e0 = stack.pop()
                    for field, s, e in _fields(buf, s0, e0):
                        kind = kinds.get(field)
                        if kind == "tensor":
                            _tensor_locations(buf, s, e, out)
                        elif kind is not None:
                            stack.append((_KINDS[kind], s, e))
                if not any(f == 7 for f, _, _ in _fields(buf, 0, size)):
                    raise ValueError("no graph")
            except ValueError as e:
                raise GraphFileError(
                    f"{path} is not a complete ONNX model ({e}); it is truncated or damaged, re-export the model"
                ) from None
            finally:
                buf.release()
    return out


_LOCATIONS: dict[tuple, list[str]] = {}


def check_graph_file(model_dir: str | os.PathLike, graph_file: str) -> Path:
    """The graph ``model_dir/graph_file``, after checking that it and every external-data file it names resolve
    inside ``model_dir`` and that it parses as a protobuf (``GraphFileError`` / ``UnsafePathError`` otherwise)."""
    graph = inside(model_dir, graph_file, what=f"{model_dir} graph file")
    st = os.stat(graph)
    key = (os.path.realpath(graph), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _LOCATIONS:  # a graph is opened by every session (train, eval, each split): parse it once
        _LOCATIONS[key] = onnx_external_data(graph)
    for location in _LOCATIONS[key]:
        inside(graph.parent, location, what=f"{graph} external data")
    return graph
