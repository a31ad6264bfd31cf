"""Counter-based randomness: every random tensor is a pure function of (seed, step, layer, purpose, ...).

Zeroth-order methods never store a perturbation: MeZO regenerates z for the +eps pass, the -eps pass and the update
from the same key (Malladi et al., 2023, "Fine-Tuning Language Models with Just Forward Passes", Alg. 1), and a
resumed run regenerates step t's z from (seed, t, layer) instead of reading it from a checkpoint. So a stream must
depend on its key and nothing else: not on the process, the machine, the order of earlier draws, or ``PYTHONHASHSEED``.

How a key becomes a stream::

    blake2b-128( canonical bytes of (seed, *keys) )  ->  Philox-4x64 key (128 bits), counter = 0
    np.random.Generator(Philox(key=...))             ->  standard_normal / integers / ...

Philox (Salmon et al., 2011, "Parallel random numbers: as easy as 1, 2, 3") is a counter-based generator: distinct
keys give statistically independent streams, with no seeding pass as ``SeedSequence`` would need. Strings are
hashed through blake2b, never Python's salted ``hash()``. Ints and strings are tagged in the encoding, so
``stream(0, 1)`` and ``stream(0, "1")`` differ, as do ``stream(0, 1, 2)`` and ``stream(0, 12)``.

The numbers drawn are those of numpy's ``Generator`` algorithms (ziggurat for normals), which numpy keeps stable in
practice but does not promise across major versions; pin numpy within a run that must resume bit-exactly.

Run the tests with ``python -m pytest tests/runtime/test_rng.py -q``.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["CHUNK", "fill", "gaussian", "key_of", "orthonormal", "stream"]

_DOMAIN = b"zo-edge/rng/v1"


def _encode(item: int | str) -> bytes:
    """Canonical, self-delimiting bytes of one key item: a type tag, a length, then the payload."""
    if isinstance(item, bool | np.bool_):
        raise TypeError(f"rng key items must be int or str, got bool {item!r}")
    if isinstance(item, int | np.integer):
        value = int(item)
        payload = value.to_bytes((value.bit_length() + 8) // 8 or 1, "little", signed=True)
        tag = b"i"
    elif isinstance(item, str):
        payload = item.encode("utf-8")
        tag = b"s"
    else:
        raise TypeError(f"rng key items must be int or str, got {type(item).__name__} {item!r}")
    return tag + len(payload).to_bytes(8, "little") + payload


def key_of(seed: int, *keys: int | str) -> int:
    """The 128-bit Philox key for ``(seed, *keys)``: blake2b-128 of their canonical encoding, as an int."""
    h = hashlib.blake2b(digest_size=16, person=b"zo-edge-philox")
    h.update(_DOMAIN)
    h.update(_encode(seed))
    for k in keys:
        h.update(_encode(k))
    return int.from_bytes(h.digest(), "little")


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """A fresh generator for ``(seed, *keys)``, e.g. ``stream(seed, step, "model.layers.3.q_proj", "z")``.

    Same arguments, same numbers: on any machine, in any process, after a resume. Different arguments give
    independent streams (Philox with distinct keys).
    """
    return np.random.Generator(np.random.Philox(key=key_of(seed, *keys)))


def gaussian(
    seed: int,
    shape: int | tuple[int, ...],
    *keys: int | str,
    dtype: np.dtype | type = np.float32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Standard normal draws of ``shape`` from ``stream(seed, *keys)``.

    float32 and float64 are drawn natively (numpy's float32 ziggurat for float32, so no float64 temporary); any
    other float dtype is drawn in float32 and cast. With ``out`` (C-contiguous, float32/float64, of ``shape``) the
    numbers are written into it and it is returned: the same values as without ``out``.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
    rng = stream(seed, *keys)
    if out is not None:
        assert out.shape == shape, f"gaussian: out has shape {out.shape}, expected {shape}"
        assert out.dtype in (np.float32, np.float64), f"gaussian: out must be float32/float64, got {out.dtype}"
        assert out.flags.c_contiguous, "gaussian: out must be C-contiguous"
        rng.standard_normal(dtype=out.dtype, out=out)
        return out
    if dtype in (np.float32, np.float64):
        return rng.standard_normal(shape, dtype=dtype)
    assert np.issubdtype(dtype, np.floating), f"gaussian: dtype must be a float type, got {dtype}"
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def orthonormal(seed: int, rows: int, cols: int, *keys: int | str, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A deterministic random matrix with orthonormal columns (rows >= cols) or orthonormal rows (rows < cols).

    For rows >= cols: G ~ N(0, 1)^{rows x cols} (float64, from ``stream(seed, *keys)``), G = QR (reduced), and the
    result is Q · diag(sign(diag R)), with sign(0) := +1. The sign fix makes the factorisation unique, so the output
    does not depend on the LAPACK build's sign convention, and makes Q Haar-distributed (Mezzadri, 2007, "How to
    generate random matrices from the classical compact groups"). For rows < cols the transpose of the
    (cols x rows) construction is returned, so Q Qᵀ = I. Computed in float64, then cast to ``dtype``.
    """
    assert rows >= 1 and cols >= 1, f"orthonormal: rows and cols must be >= 1, got {rows}x{cols}"
    tall, short = max(rows, cols), min(rows, cols)
    g = stream(seed, *keys).standard_normal((tall, short))
    q, r = np.linalg.qr(g, mode="reduced")
    signs = np.sign(np.diagonal(r))
    signs[signs == 0] = 1.0
    q *= signs[None, :]
    if rows < cols:
        q = q.T
    return np.ascontiguousarray(q, dtype=dtype)


# --- parallel fills for model-sized draws (MeZO's z) ----------------------------------------------------------------
#: elements per independently keyed chunk: fixed, so the numbers never depend on the thread count or machine
CHUNK = 1 << 18
_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="zo-rng")
    return _POOL


def fill(out: np.ndarray, seed: int, *keys: int | str, dist: str = "gaussian", first_chunk: int = 0) -> np.ndarray:
    """Fill ``out`` (C-contiguous float32) with N(0, 1) or ±1 draws; chunk i from ``stream(seed, *keys, first_chunk
    + i)``.

    ``first_chunk``: ``out`` is a slab of a longer draw that starts at element ``first_chunk * CHUNK``; it receives
    exactly the values of those positions of the whole draw (MeZO draws a table-sized z slab by slab this way, so a
    16 MiB scratch replaces a table-sized one and the numbers do not change).

    Why chunks: drawing 135M normals with one Philox stream is single-threaded (~11.5 ns per value here), which made
    sampling 63% of a MeZO step. numpy's generators release the GIL while filling, so independently keyed chunks
    fill in parallel on every core; the chunk size is a constant, so the values are the same on any machine.
    Rademacher (±1, the classic SPSA choice; same E[z zᵀ] = I) is drawn from raw random bytes and is ~5x cheaper.
    """
    assert out.dtype == np.float32 and out.flags.c_contiguous, "fill: out must be C-contiguous float32"
    assert first_chunk >= 0, f"fill: first_chunk must be >= 0, got {first_chunk}"
    flat = out.reshape(-1)
    n = flat.size

    def work(i: int) -> None:
        part = flat[i * CHUNK : min((i + 1) * CHUNK, n)]
        g = stream(seed, *keys, first_chunk + i)
        if dist == "gaussian":
            g.standard_normal(dtype=np.float32, out=part)
        elif dist == "rademacher":
            bits = np.unpackbits(np.frombuffer(g.bytes((part.size + 7) // 8), dtype=np.uint8))[: part.size]
            np.multiply(bits, 2, out=part, casting="unsafe")
            part -= 1.0
        else:
            raise ValueError(f"unknown distribution {dist!r}; choose gaussian or rademacher")

    chunks = range((n + CHUNK - 1) // CHUNK)
    if len(chunks) <= 1:
        for i in chunks:
            work(i)
    else:
        list(_pool().map(work, chunks))
    return out
