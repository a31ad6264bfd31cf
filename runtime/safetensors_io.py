"""safetensors files written from, and read into, numpy arrays without a second copy of the data.

``safetensors.numpy.save`` builds the whole file as one ``bytes`` object and ``load_file`` returns read-only arrays
(which callers then copy to update in place), so saving or loading a full-weight checkpoint of a 135M model costs an
extra 0.5 GB at its peak: on a device that trains at inference memory, that extra copy is the peak. Here the
writer streams the header and then each array's own buffer to the file, and the reader fills one writable buffer
straight from the file and returns views of it.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, an N-byte JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` padded with spaces to a multiple of 8, then the data.
Files written here load with ``safetensors.numpy.load_file`` and vice versa (tests/runtime/test_checkpoint.py).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtime.errors import ZoEdgeError

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "SafetensorsError", "read_safetensors_writable", "safetensors_chunks"]

#: safetensors dtype names of the numpy dtypes it can hold
DTYPES: dict[np.dtype, str] = {
    np.dtype(t): name
    for t, name in (
        (np.float64, "F64"),
        (np.float32, "F32"),
        (np.float16, "F16"),
        (np.int64, "I64"),
        (np.int32, "I32"),
        (np.int16, "I16"),
        (np.int8, "I8"),
        (np.uint64, "U64"),
        (np.uint32, "U32"),
        (np.uint16, "U16"),
        (np.uint8, "U8"),
        (np.bool_, "BOOL"),
    )
}
_NUMPY = {name: dtype for dtype, name in DTYPES.items()}
#: the header of a real checkpoint is a few KB per hundred tensors; the safetensors library caps it at 100 MB too
MAX_HEADER_BYTES = 100 * 2**20


class SafetensorsError(ZoEdgeError, ValueError):
    """A safetensors file that is truncated, or whose header lies about its contents (one line naming the file)."""


def safetensors_chunks(arrays: Mapping[str, np.ndarray]) -> list[bytes | memoryview]:
    """The file as a list of buffers: the length, the header, then each array's own memory (a copy only for a
    non-contiguous array). Raises KeyError for a dtype safetensors cannot hold. Names are sorted, as safetensors
    does."""
    names = sorted(arrays)
    header: dict[str, dict] = {}
    data: list[memoryview] = []
    offset = 0
    for name in names:
        a = arrays[name]
        dtype = DTYPES[a.dtype]  # KeyError: not storable
        if not a.flags.c_contiguous:
            a = a.copy(order="C")
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        data.append(memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(b""))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little"), text, *data]


def read_safetensors_writable(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a writable, C-contiguous view of ONE buffer read from the file.

    The file is checked before a byte of data is allocated: the header length against the file size and
    ``MAX_HEADER_BYTES``, the header's schema, and every tensor's ``data_offsets`` (inside the data section, sized
    exactly dtype x shape, no two overlapping, the data section fully used). A truncated file would otherwise load
    with zeros for the missing bytes, and a lying header could ask for a terabyte. Any such file raises
    ``SafetensorsError`` naming it.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header = _read_header(fh, size, path)
        data_len = size - 8 - header.pop("__len__")
        specs = _check_tensors(header, data_len, path)
        buf = bytearray(data_len)
        if fh.readinto(memoryview(buf)) != data_len:
            raise SafetensorsError(f"{path}: the file shrank while it was read; copy it again")
    out = {}
    for name, (dtype, shape, start, end) in specs.items():
        count = (end - start) // dtype.itemsize
        if count == 0:
            out[name] = np.zeros(shape, dtype)
            continue
        out[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(shape)
    return out


def _bad(path: Path, problem: str) -> SafetensorsError:
    return SafetensorsError(f"{path}: {problem}; the file is damaged or not a safetensors file, re-create it")


def _read_header(fh, size: int, path: Path) -> dict:
    """The JSON header as a dict (plus ``__len__``: its byte length), after the length checks."""
    if size < 8:
        raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(fh.read(8), "little")
    if header_len > MAX_HEADER_BYTES:
        raise _bad(path, f"header length {header_len} is over the {MAX_HEADER_BYTES} byte cap")
    if header_len > size - 8:
        raise _bad(path, f"header length {header_len} is beyond the file's {size} bytes (truncated?)")
    raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(path, "the header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise _bad(path, f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _bad(path, "__metadata__ must map names to strings")
    header["__len__"] = header_len
    return header


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_tensors(header: dict, data_len: int, path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
    """name -> (dtype, shape, begin, end) with every bound checked (see ``read_safetensors_writable``)."""
    specs: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(path, f"tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype = _NUMPY.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise _bad(path, f"tensor {name!r} has dtype {info['dtype']!r}, not one of {', '.join(_NUMPY)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= 64 and all(_is_int(d) and d >= 0 for d in shape)):
            raise _bad(path, f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise _bad(path, f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _bad(path, f"tensor {name!r} spans bytes {begin}..{end}, outside the {data_len}-byte data section")
        nbytes = dtype.itemsize * math.prod(shape)
        if end - begin != nbytes:
            raise _bad(path, f"tensor {name!r} is {shape} {info['dtype']} ({nbytes} bytes) but spans {end - begin}")
        specs[name] = (dtype, tuple(shape), begin, end)
    # the data section must be covered exactly once: no overlap, no gap, nothing after (as safetensors requires)
    at = 0
    for name, (_, _, begin, end) in sorted(specs.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != at:
            problem = "overlaps the previous tensor" if begin < at else f"leaves a gap at byte {at}"
            raise _bad(path, f"tensor {name!r} at bytes {begin}..{end} {problem}")
        at = end
    if at != data_len:
        raise _bad(path, f"the tensors cover {at} of the {data_len} data bytes")
    return specs
