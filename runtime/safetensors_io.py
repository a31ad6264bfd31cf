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
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["DTYPES", "read_safetensors_writable", "safetensors_chunks"]

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
    """Every tensor of a safetensors file as a writable, C-contiguous view of ONE buffer read from the file."""
    with open(Path(path), "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
        header.pop("__metadata__", None)
        buf = bytearray(max((v["data_offsets"][1] for v in header.values()), default=0))
        fh.readinto(memoryview(buf))
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = _NUMPY[info["dtype"]]
        count = (end - start) // dtype.itemsize
        if count == 0:
            out[name] = np.zeros(info["shape"], dtype)
            continue
        out[name] = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(info["shape"])
    return out
