"""Atomic checkpoints: a folder of arrays (safetensors) plus a JSON meta, which a crash can never leave half-written.

A checkpoint is what nanochat's ``checkpoint_manager.py`` saves (weights, and a meta with config, loop state and data
position), written the way a database writes a commit record, because a phone or laptop may lose power mid-save::

    run_dir/
      .tmp-ckpt_00000300-<pid>-<rand>/    1. build here: arrays.safetensors, meta.json, each fsync'ed
      ckpt_00000300/                      2. rename(tmp -> final), then fsync(run_dir)
      latest                              3. "ckpt_00000300\\n": tmp file + fsync + os.replace + fsync(run_dir)
      ckpt_00000200/                      4. prune: folders beyond `keep` are renamed to .trash-* and then deleted
      best/                               save_named(): same steps 1-2, no pointer, never pruned

A reader trusts ``latest`` only if it names a complete folder (both files present, meta parses); otherwise it takes
the complete ``ckpt_<step>`` folder with the highest step. Folders starting with ``.`` are never read. Whatever
instant the writer dies at, the previous checkpoint or the new one is found whole: rename is atomic on POSIX and on
NTFS, and step 4 runs only once step 3 is durable. One narrow exception: re-saving an existing name (``best``, or a
step saved again after a resume) moves the old folder to ``.trash-*`` just before renaming the new one in, so a crash
between those two renames leaves that name absent (the old copy survives, hidden); ``latest_checkpoint`` then falls
back to the newest other complete step. Leftovers of dead writers are deleted at the next ``save_checkpoint``.

Arrays are safetensors (bit-exact), streamed from and read into the arrays' own buffers (``runtime.safetensors_io``:
no extra copy of a full-weight checkpoint at save or load); a dict holding a dtype safetensors cannot store (e.g.
object arrays) falls back to ``arrays.npz``. Meta is JSON; ``save_checkpoint`` adds ``"step"`` to it.

Run the tests with ``python -m pytest tests/runtime/test_checkpoint.py -q``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from runtime.atomic import (  # atomic_write_* are re-exported: runtime/loop.py writes config.json with them
    WRITE_ERRNOS,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_leftovers,
    fsync_dir,
    tmp_sibling,
    write_file,
)
from runtime.atomic import data_chunks as _chunks  # noqa: F401  (the crash tests tear writes through it)
from runtime.contract import CHECKPOINT_FORMAT_VERSION, META_FORMAT_VERSION, META_WEIGHTS_SHA256
from runtime.errors import ZoEdgeError
from runtime.paths import inside
from runtime.safetensors_io import read_safetensors_writable, safetensors_chunks

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "NoCheckpointError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_meta",
    "checkpoint_name",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_trained_checkpoint",
    "save_checkpoint",
    "save_named",
]


class NoCheckpointError(ZoEdgeError, FileNotFoundError):
    """A run folder (or checkpoint path) without a complete checkpoint: the user names the wrong folder."""


class CheckpointError(ZoEdgeError, ValueError):
    """A checkpoint whose meta or arrays are damaged (or were edited): refused before anything trains on them."""


class CheckpointWriteError(ZoEdgeError, OSError):
    """A save that failed for lack of space or permission; the previous checkpoint is untouched."""


ARRAYS_FILE = "arrays.safetensors"
ARRAYS_FALLBACK = "arrays.npz"
META_FILE = "meta.json"
LATEST_FILE = "latest"
_CKPT_RE = re.compile(r"^ckpt_(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """``ckpt_<step:08d>``: zero-padded so that names sort like steps."""
    assert step >= 0, f"checkpoint step must be >= 0, got {step}"
    return f"ckpt_{step:08d}"


# --- durable file primitives (runtime.atomic) --------------------------------------------------------------------


def _write_file(path: Path, data: bytes | list[bytes | memoryview]) -> None:
    """Every byte of a checkpoint (arrays, meta, the ``latest`` pointer) is written through this one function, so the
    crash tests can tear exactly one write by replacing it."""
    write_file(path, data)


# --- serialisation ------------------------------------------------------------------------------------------------


def _arrays_bytes(arrays: dict[str, np.ndarray]) -> tuple[str, bytes | list[bytes | memoryview]]:
    """(file name, contents) of the arrays: safetensors, streamed from the arrays' own buffers (no copy of the
    model, ``runtime.safetensors_io``), when it can hold every dtype; else a .npz."""
    for k, v in arrays.items():
        assert isinstance(k, str), f"checkpoint array names must be str, got {k!r}"
        assert isinstance(v, np.ndarray), f"checkpoint array {k!r} is a {type(v).__name__}, not a numpy array"
    try:
        return ARRAYS_FILE, safetensors_chunks(arrays)
    except KeyError:  # a dtype safetensors does not know (object, str, complex, ...): keep the data anyway.
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return ARRAYS_FALLBACK, buf.getvalue()


def _build_folder(final: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write the checkpoint into a temp sibling of ``final`` and rename it into place. Returns ``final``."""
    fname, data = _arrays_bytes(arrays)
    meta_text = json.dumps(meta, indent=2, allow_nan=True) + "\n"  # fail on unserialisable meta before any write
    tmp = tmp_sibling(final)
    tmp.mkdir(parents=True)
    try:
        _write_file(tmp / fname, data)
        _write_file(tmp / META_FILE, meta_text.encode("utf-8"))  # meta last: its presence marks a complete folder
        fsync_dir(tmp)
        old = None
        if final.exists():  # re-saving a name (e.g. `best`, or a step after a resume): move the old one aside first
            old = tmp_sibling(final, "trash")
            os.rename(final, old)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _discard(folder: Path) -> None:
    """Remove a checkpoint folder: first an atomic rename to a hidden name (so it vanishes whole), then delete."""
    trash = tmp_sibling(folder, "trash")
    os.rename(folder, trash)
    fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(run_dir: Path) -> None:
    """Delete hidden temp/trash files and folders left by writers that died (their pid no longer runs)."""
    clean_leftovers(run_dir)


# --- save ---------------------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike, step: int, arrays: dict[str, np.ndarray], meta: dict, keep: int = 2
) -> Path:
    """Save ``run_dir/ckpt_<step:08d>/`` atomically, point ``latest`` at it, then prune to the newest ``keep``.

    ``meta`` must be JSON-serialisable; ``"step": step`` is added (an existing ``meta["step"]`` must equal ``step``).
    Pruning keeps the ``keep`` highest-step ``ckpt_*`` folders and always the one just written; it runs only after
    ``latest`` is durably replaced, so a crash at any point leaves a loadable checkpoint. Returns the folder.
    """
    assert keep >= 1, f"keep must be >= 1, got {keep}"
    assert isinstance(meta, dict), f"checkpoint meta must be a dict, got {type(meta).__name__}"
    assert meta.get("step", step) == step, f"meta['step'] = {meta.get('step')} but saving step {step}"
    run_dir = Path(run_dir)
    with _explained(run_dir, arrays):
        run_dir.mkdir(parents=True, exist_ok=True)
        final = _build_folder(run_dir / checkpoint_name(step), arrays, {**meta, "step": step})
        atomic_write_bytes(run_dir / LATEST_FILE, (final.name + "\n").encode("utf-8"), write=_write_file)
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != final:
            _discard(old)
    _clean_leftovers(run_dir)
    return final


def save_named(run_dir: str | os.PathLike, name: str, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Save ``run_dir/<name>/`` (e.g. ``best``) atomically, replacing any previous one; ``latest`` is not touched.

    Named checkpoints are never pruned. ``name`` must be a plain folder name that is not ``ckpt_*``, ``latest``, or
    hidden.
    """
    assert name and "/" not in name and os.sep not in name, f"checkpoint name must be a plain folder name: {name!r}"
    assert not name.startswith(".") and name != LATEST_FILE, f"checkpoint name {name!r} is reserved"
    assert not _CKPT_RE.match(name), f"checkpoint name {name!r} clashes with step checkpoints; use save_checkpoint"
    assert isinstance(meta, dict), f"checkpoint meta must be a dict, got {type(meta).__name__}"
    run_dir = Path(run_dir)
    with _explained(run_dir, arrays):
        run_dir.mkdir(parents=True, exist_ok=True)
        return _build_folder(run_dir / name, arrays, dict(meta))


class _explained:
    """Turn a failed write (disk full, read-only or foreign folder) into one CheckpointWriteError line that says
    how many bytes the checkpoint needs and how many are free; other exceptions pass through unchanged. The
    folder-building protocol has already removed its temp folder by then, so the previous checkpoint is intact."""

    def __init__(self, run_dir: Path, arrays: dict[str, np.ndarray]) -> None:
        self.run_dir, self.arrays = run_dir, arrays

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ, exc, tb) -> bool:
        if exc is None or not isinstance(exc, OSError) or isinstance(exc, ZoEdgeError):
            return False
        if exc.errno not in WRITE_ERRNOS:
            return False
        need = sum(a.nbytes for a in self.arrays.values()) + 64 * 1024
        try:
            free = f"{shutil.disk_usage(_existing(self.run_dir)).free / 2**20:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        why = os.strerror(exc.errno).lower()
        raise CheckpointWriteError(
            f"cannot save a checkpoint in {self.run_dir} ({why}): it needs about {need / 2**20:.1f} MiB "
            f"({free}); the previous checkpoint is kept. Free space or fix the folder's permissions, then --resume",
        ) from None


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --- find and load ------------------------------------------------------------------------------------------------


def is_complete(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds an arrays file and a meta.json that parses as a JSON object."""
    folder = Path(folder)
    if not folder.is_dir() or folder.name.startswith("."):
        return False
    if not ((folder / ARRAYS_FILE).is_file() or (folder / ARRAYS_FALLBACK).is_file()):
        return False
    try:
        return isinstance(json.loads((folder / META_FILE).read_text("utf-8")), dict)
    except (OSError, ValueError):
        return False


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete ``ckpt_<step>`` folders of ``run_dir``, oldest step first. Hidden temp/trash folders are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``latest`` names if it is complete, else the newest complete ``ckpt_*``; None if none."""
    run_dir = Path(run_dir)
    try:
        name = (run_dir / LATEST_FILE).read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if name and "/" not in name and not name.startswith(".") and is_complete(run_dir / name):
        return inside(run_dir, name, what=f"{run_dir} checkpoint")  # a symlinked ckpt_* must not lead out
    found = list_checkpoints(run_dir)
    return inside(run_dir, found[-1].name, what=f"{run_dir} checkpoint") if found else None


def load_checkpoint(path_or_run_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Load ``(arrays, meta)`` from a checkpoint folder, or from the latest checkpoint of a run directory.

    Arrays come back bit-exact (dtype, shape, bytes) and writable (no file mapping is kept open).
    """
    path = Path(path_or_run_dir)
    if not is_complete(path):
        found = latest_checkpoint(path)
        if found is None:
            raise NoCheckpointError(f"no complete checkpoint at {path} (neither a checkpoint folder nor a run dir)")
        inside(path, found.name, what=f"{path} checkpoint")  # a symlinked ckpt_* must not lead out of the run
        path = found
    for name in (META_FILE, ARRAYS_FILE, ARRAYS_FALLBACK):
        inside(path, name, what=f"{path} checkpoint file")
    meta = json.loads((path / META_FILE).read_text("utf-8"))
    check_meta(meta, path / META_FILE)
    if (path / ARRAYS_FILE).is_file():
        arrays = read_safetensors_writable(path / ARRAYS_FILE)  # one writable buffer, no second copy
    else:
        with np.load(path / ARRAYS_FALLBACK, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # np.load decodes into fresh, writable arrays
    return arrays, meta


def load_trained_checkpoint(
    run_dir: str | os.PathLike, which: str = "best"
) -> tuple[dict[str, np.ndarray], dict, Path]:
    """(arrays, meta, path) of a run's ``best`` checkpoint (falling back to the latest), or of its latest.

    The one place that decides which checkpoint "the trained model" is: eval, merge and the demo all use it.
    """
    run_dir = Path(run_dir)
    path = inside(run_dir, "best", what=f"{run_dir} checkpoint") if which == "best" else None
    path = path if path is not None and is_complete(path) else None
    path = path or latest_checkpoint(run_dir)
    if path is None:
        raise NoCheckpointError(f"{run_dir} has no checkpoint; train first (zo-edge train --out {run_dir})")
    arrays, meta = load_checkpoint(path)
    for name, a in arrays.items():  # eval, merge and the demo must never score or deploy NaN weights
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise CheckpointError(f"{path}: {name} holds NaN/inf; this checkpoint is damaged, use another one")
    return arrays, meta, path


# --- meta schema --------------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _position(x: Any) -> bool:
    """A data-iterator position: a non-negative int, a string tag, or a list of non-negative ints."""
    if isinstance(x, str):
        return True
    if isinstance(x, list):
        return all(_is_int(v) and v >= 0 for v in x)
    return _is_int(x) and x >= 0


def check_meta(meta: Any, where: str | Path) -> None:
    """Refuse a checkpoint meta that zo-edge did not write: ``CheckpointError`` naming the file and the key.

    Checks the types of every key the loop, eval and merge read (step >= 0, the format version, the base's hash,
    the method name, the best score, the config) and the data iterator's position (every count >= 0), so a meta
    edited by hand or by an attacker cannot make resume train from a negative offset or crash on a wrong type.
    Whether the run belongs to this model (hash, format version value) is checked by its reader against the model.
    """

    def bad(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{where}: {key} {problem}; the checkpoint is damaged, delete it to use an older one")

    if not isinstance(meta, dict):
        raise bad("meta", f"is a {type(meta).__name__}, not an object")
    step = meta.get("step", 0)  # a named checkpoint (best) may lack it; a ckpt_<step> folder must match its name
    if not _is_int(step) or step < 0:
        raise bad("step", f"must be an integer >= 0, got {step!r}")
    m = _CKPT_RE.match(Path(where).parent.name)
    if m and meta.get("step") != int(m.group(1)):
        raise bad("step", f"is {meta.get('step')!r} but the folder is {Path(where).parent.name}")
    version = meta.get(META_FORMAT_VERSION, CHECKPOINT_FORMAT_VERSION)
    if not _is_int(version):
        raise bad(META_FORMAT_VERSION, f"must be an integer, got {version!r}")
    for key in (META_WEIGHTS_SHA256, "method"):
        if key in meta and not isinstance(meta[key], str):
            raise bad(key, f"must be a string, got {meta[key]!r}")
    if "best" in meta:
        best = meta["best"]
        if not (isinstance(best, int | float) and not isinstance(best, bool)) or math.isnan(best) or best == math.inf:
            raise bad("best", f"must be a number (or -Infinity), got {best!r}")
    if "config" in meta and not isinstance(meta["config"], dict):
        raise bad("config", f"must be an object, got {type(meta['config']).__name__}")
    if "data" in meta:
        data = meta["data"]
        if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
            raise bad("data", f"must be an object, got {type(data).__name__}")
        for key, value in data.items():
            if not _position(value):
                raise bad(f"data.{key}", f"must be a count >= 0 (or a list of them), got {value!r}")
