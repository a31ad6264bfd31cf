"""Layer selection: which transformer blocks a run trains (``--layers``), as a restricted view of the manifest.

    all          every block (the default)
    top:6        the last 6 blocks          bottom:4   the first 4
    12-29        blocks 12..29 (inclusive)  3,5,7      a list; ranges and single blocks may be mixed: "0-3,10"
    head         the final norm only (no block): every block frozen; with others, e.g. "top:2,head"

A method only ever sees ``oracle.manifest``; when a run trains a subset, that manifest is a *view* holding only the
selected blocks' linears, groups and parameters, so every method (perturbations, calibration, updates, optimizer
state) is restricted by construction, with no per-method code. Parameters outside every block (embeddings, the final
norm) are frozen in a restricted run unless it names ``head``: the final norm (the parameters of kind "norm"
outside every block), selected as block index n (one past the last block), so a ``head``-only run is a run whose
lowest trained "block" is n and whose whole stack is a frozen prefix. The embedding is never in ``head``: it is
the model's input, so training it would change the cached prefix (and on tied models the head too). The session
keeps the full manifest: the graph's ports of unselected layers stay at their off defaults.

Why train a subset at all: a ZO estimate's variance grows with the perturbed dimension, and the frozen layers below
the lowest trained one do not depend on the perturbation, so their output can be computed once per batch (or once
per example) instead of once per pass (runtime.prefix_cache).
"""

from __future__ import annotations

import dataclasses
import re

from runtime.contract import KIND_NORM, Manifest
from runtime.errors import ZoEdgeError

__all__ = ["LayerSpecError", "block_of", "n_blocks", "param_block", "parse_layers", "restrict_manifest"]


class LayerSpecError(ZoEdgeError, ValueError):
    """A ``--layers`` value that does not parse or selects no block of this model."""


def block_of(name: str) -> int:
    """The transformer block index of a layer id or parameter key: its first integer path component
    (``model.layers.3.…``, ``transformer.h.3.…``, ``model.decoder.layers.3.…``); -1 outside every block."""
    m = re.search(r"\.(\d+)\.", f".{name}.")
    return int(m.group(1)) if m else -1


def n_blocks(manifest: Manifest) -> int:
    return 1 + max((block_of(s.name) for s in manifest.linears), default=-1)


def parse_layers(spec: str, n: int) -> list[int] | None:
    """Sorted block indices selected by ``spec`` out of ``n`` blocks; None for "all" (no restriction)."""
    spec = spec.strip().lower()
    if spec in ("", "all"):
        return None
    fix = (
        f'use "all", "top:N", "bottom:N", "A-B", "head" or a list like "0-3,10,head" (the model has blocks 0-{n - 1})'
    )
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if part == "head":
            out.add(n)  # the final norm: "block" n, above every block (see the module docstring)
            continue
        m = re.fullmatch(r"(top|bottom):(\d+)", part)
        if m:
            k = int(m.group(2))
            if not 1 <= k <= n:
                raise LayerSpecError(f"--layers {spec}: {m.group(1)}:N needs 1 <= N <= {n}")
            out.update(range(n - k, n) if m.group(1) == "top" else range(k))
            continue
        r = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not r:
            raise LayerSpecError(f"--layers {spec!r} does not parse; {fix}")
        lo, hi = int(r.group(1)), int(r.group(2) if r.group(2) is not None else r.group(1))
        if lo > hi or hi >= n:
            raise LayerSpecError(f"--layers {spec!r}: {part.strip()} is outside blocks 0-{n - 1}; {fix}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def param_block(manifest: Manifest, param) -> int:
    """The selection index of a parameter: its block, n (``head``) for a norm outside every block, else -1."""
    b = block_of(param.name)
    if b < 0 and param.kind == KIND_NORM:
        return n_blocks(manifest)
    return b


def restrict_manifest(manifest: Manifest, blocks: list[int] | None) -> Manifest:
    """The view of ``manifest`` that holds only ``blocks``' linears, groups and parameters (None: unchanged)."""
    if blocks is None:
        return manifest
    keep = set(blocks)
    linears = [s for s in manifest.linears if block_of(s.name) in keep]
    names = {s.name for s in linears}
    groups = [g for g in manifest.groups if any(layer in names for layer in g.layers)]
    params = [p for p in manifest.params if param_block(manifest, p) in keep]
    return dataclasses.replace(manifest, linears=linears, groups=groups, params=params)
