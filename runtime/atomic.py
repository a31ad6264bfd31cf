"""Durable, atomic writes of files and folders: a reader (or a crash) never sees a half-written output.

Stdlib only (export/ and zo_edge/ import it too). Two tools:

* files: ``atomic_write_bytes/text/json(path, ...)`` replace one file (temp sibling + fsync + ``os.replace`` +
  fsync of the folder);
* folders: ``atomic_folder(dest, force=...)`` is a context manager that yields an empty hidden temp sibling to build
  the output in, and swaps it in only when the ``with`` body succeeds::

      from runtime.atomic import atomic_folder

      with atomic_folder(out_dir, force=args.force) as tmp:   # FolderExistsError (one line, names --force) if
          (tmp / "model.onnx").write_bytes(...)               # out_dir is a non-empty folder and not force
          ...                                                  # write everything into tmp, never into out_dir
      # here out_dir holds exactly what the body wrote

  The protocol, drawn::

      parent/
        .tmp-<name>-<pid>-<rand>/     1. the body builds here
                                      2. on success: fsync every file and folder inside
        .trash-<name>-<pid>-<rand>/   3. if <name> exists (force): rename <name> -> .trash-*   (old kept whole)
        <name>/                       4. rename .tmp-* -> <name>, fsync(parent)
                                      5. delete .trash-*  (only now, after the new output is in place)

  If the body raises (or the process dies), ``<name>`` is untouched and the temp sibling is removed (after a kill,
  by the next ``atomic_folder`` on the same name: leftovers carry their writer's pid and are deleted once that
  process is gone). A crash between steps 3 and 4 leaves ``<name>`` absent with the old copy hidden in .trash-*.

Use ``check_replaceable(dest, force=...)`` to fail on an existing output *before* expensive work (loading a model).
``runtime.checkpoint`` builds its checkpoint folders from the same primitives (``write_file``, ``fsync_dir``,
``tmp_sibling``) with its own crash semantics.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runtime.errors import ZoEdgeError

__all__ = [
    "WRITE_ERRNOS",
    "FolderExistsError",
    "WriteError",
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_replaceable",
    "clean_leftovers",
    "data_chunks",
    "fsync_dir",
    "fsync_tree",
    "pid_alive",
    "tmp_sibling",
    "write_file",
]

Data = bytes | list[bytes | memoryview]

#: hidden names made by tmp_sibling(): ".tmp-<name>-<pid>-<hex>" or ".trash-<name>-<pid>-<hex>"
_LEFTOVER_RE = re.compile(r"^\.(?:tmp|trash)-(.*)-(\d+)-[0-9a-f]+$")


class FolderExistsError(ZoEdgeError, FileExistsError):
    """The output folder already holds something and ``--force`` was not given (or it is a file)."""


class WriteError(ZoEdgeError, OSError):
    """A write refused by the disk or the folder (full, read-only, no permission): the old file is kept."""


#: errno values that mean "this folder cannot take the write" (the user's disk or permissions, not a zo-edge bug)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


# --- files ----------------------------------------------------------------------------------------------------------


def data_chunks(data: Data) -> list[bytes | memoryview]:
    """``data`` as the list of buffers ``write_file`` writes in order."""
    return [data] if isinstance(data, bytes | bytearray) else data


def write_file(path: Path, data: Data) -> None:
    """Write ``data`` (bytes, or a list of buffers written one after the other) to a new file and fsync it, so its
    bytes are on disk before anything refers to them."""
    with open(path, "wb") as f:
        for chunk in data_chunks(data):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory, making the renames/creations inside it durable (a no-op where unsupported, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (bottom-up), e.g. what a library wrote with plain ``open``."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            p = Path(folder) / name
            if p.is_symlink():
                continue
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(folder))


def tmp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden sibling name, unique per process and call, carrying our pid so dead writers' leftovers are known."""
    return path.parent / f".{kind}-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, *, write: Callable[[Path, Data], None] = write_file
) -> Path:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the new one, never a torn one.

    ``write`` writes and fsyncs the temp file (default ``write_file``); ``runtime.checkpoint`` passes its own so that
    every byte of a checkpoint goes through one function its crash tests can tear.
    """
    path = Path(path)
    tmp = tmp_sibling(path)
    try:
        write(tmp, data)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, ZoEdgeError) and e.errno in WRITE_ERRNOS:
            raise WriteError(
                f"cannot write {path} ({os.strerror(e.errno).lower()}; {len(data) if isinstance(data, bytes) else 0}"
                " bytes needed); the previous file is kept. Free space or fix the folder's permissions"
            ) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text`` (tmp file + fsync + os.replace + fsync of the folder)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically replace ``path`` with ``obj`` as indented JSON (e.g. ``run/config.json``)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


# --- leftovers of dead writers ---------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` may still run (unknown counts as alive: never delete a live writer's files)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_leftovers(parent: Path, name: str | None = None) -> None:
    """Delete hidden temp/trash files and folders in ``parent`` left by writers that died (their pid no longer runs);
    only those of ``name`` when given. Our own and live processes' leftovers are kept."""
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _LEFTOVER_RE.match(p.name)
        if not m or (name is not None and m.group(1) != name):
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# --- folders --------------------------------------------------------------------------------------------------------


def check_replaceable(dest: str | os.PathLike, *, force: bool) -> Path:
    """Raise ``FolderExistsError`` unless ``dest`` may be (re)built: absent, an empty folder, or ``force``.

    A file (not a folder) at ``dest`` is refused even with ``force``: replacing a file by a folder is never what an
    ``--out`` meant. Returns ``dest`` as a Path.
    """
    dest = Path(dest)
    if dest.is_file() or (dest.exists() and not dest.is_dir()):
        raise FolderExistsError(f"{dest} is a file, not a folder; choose another --out")
    if dest.is_dir() and not force and any(dest.iterdir()):
        raise FolderExistsError(f"output folder {dest} already exists and is not empty; pass --force to replace it")
    return dest


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Build a folder atomically: yields an empty hidden temp sibling of ``dest``; on success it replaces ``dest``.

    Args:
        dest: the output folder. Its parent is created if needed.
        force: replace an existing non-empty ``dest``. Without it such a ``dest`` raises ``FolderExistsError``
            (a ``ZoEdgeError``: one line naming ``--force``) before the body runs. An empty folder is replaced
            either way.

    On an exception in the body (or a failed swap) ``dest`` is untouched and the temp folder is removed; the old
    ``dest`` is deleted only after the new one is in place (see the module docstring for the steps).
    """
    dest = check_replaceable(dest, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest.parent, dest.name)
    tmp = tmp_sibling(dest)
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        fsync_tree(tmp)
        if dest.exists():
            old = tmp_sibling(dest, "trash")
            os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except BaseException:
            if old is not None:  # put the old output back where it was
                os.rename(old, dest)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
