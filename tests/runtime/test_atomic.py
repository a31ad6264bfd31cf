"""runtime.atomic: a failed build keeps the old output and leaves no temp folder; --force semantics; dead leftovers.

python -m pytest tests/runtime/test_atomic.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import atomic
from runtime.atomic import FolderExistsError, atomic_folder, check_replaceable
from runtime.errors import ZoEdgeError

_ROOT = Path(__file__).resolve().parents[2]


def names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def build(dest: Path, files: dict[str, str], force: bool = False) -> None:
    with atomic_folder(dest, force=force) as tmp:
        assert tmp != dest and tmp.parent == dest.parent and tmp.name.startswith("."), tmp
        assert list(tmp.iterdir()) == [], "the build folder must start empty"
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def test_new_folder(tmp_path):
    dest = tmp_path / "deep" / "out"  # missing parents are created
    build(dest, {"a.txt": "1", "sub/b.txt": "2"})
    assert tree(dest) == {"a.txt": "1", "sub/b.txt": "2"}
    assert names(dest.parent) == ["out"], "temp sibling left behind"


def test_failed_build_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(dest) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert names(tmp_path) == [], "a failed build left a folder or a temp sibling"


def test_failed_forced_build_keeps_the_old_output(tmp_path):
    dest = tmp_path / "out"
    build(dest, {"old.txt": "old", "sub/x.txt": "x"})
    with pytest.raises(KeyboardInterrupt), atomic_folder(dest, force=True) as tmp:  # BaseException too
        (tmp / "new.txt").write_text("new")
        raise KeyboardInterrupt
    assert tree(dest) == {"old.txt": "old", "sub/x.txt": "x"}, "the previous output was touched"
    assert names(tmp_path) == ["out"], "temp or trash sibling left behind"


def test_forced_build_replaces_whole_folder(tmp_path):
    dest = tmp_path / "out"
    build(dest, {"old.txt": "old"})
    build(dest, {"new.txt": "new"}, force=True)
    assert tree(dest) == {"new.txt": "new"}, "old files must not survive a replace"
    assert names(tmp_path) == ["out"]


def test_old_output_present_until_the_new_one_is_complete(tmp_path):
    """Inside the body (the whole build) the old output is still there, whole."""
    dest = tmp_path / "out"
    build(dest, {"old.txt": "old"})
    with atomic_folder(dest, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert tree(dest) == {"old.txt": "old"}
    assert tree(dest) == {"new.txt": "new"}


def test_failed_swap_restores_the_old_output(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    build(dest, {"old.txt": "old"})
    real = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-"):  # the new folder cannot be moved in (e.g. disk error)
            raise OSError("simulated rename failure")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        build(dest, {"new.txt": "new"}, force=True)
    monkeypatch.undo()
    assert tree(dest) == {"old.txt": "old"}
    assert names(tmp_path) == ["out"]


def test_existing_output_without_force(tmp_path):
    dest = tmp_path / "out"
    build(dest, {"mine.txt": "keep"})
    ran = []
    with pytest.raises(FolderExistsError) as e, atomic_folder(dest) as tmp:
        ran.append(tmp)
    msg = str(e.value)
    assert "--force" in msg and str(dest) in msg and "\n" not in msg, msg
    assert isinstance(e.value, ZoEdgeError), "a user error: the CLI prints it as one line"
    assert ran == [], "the body must not run when the output cannot be replaced"
    assert tree(dest) == {"mine.txt": "keep"} and names(tmp_path) == ["out"]
    with pytest.raises(FolderExistsError):
        check_replaceable(dest, force=False)
    assert check_replaceable(dest, force=True) == dest


def test_empty_existing_folder_needs_no_force(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    check_replaceable(dest, force=False)
    build(dest, {"a.txt": "1"})
    assert tree(dest) == {"a.txt": "1"}


def test_a_file_is_never_replaced(tmp_path):
    dest = tmp_path / "out"
    dest.write_text("not a folder")
    for force in (False, True):
        with pytest.raises(FolderExistsError, match="is a file"):
            check_replaceable(dest, force=force)
    assert dest.read_text() == "not a folder"


_DIE_IN_BUILD = """
import os, sys
from runtime.atomic import atomic_folder
with atomic_folder(sys.argv[1], force=True) as tmp:
    (tmp / "half.txt").write_text("x")
    os._exit(1)
"""


def test_dead_writers_leftovers_are_cleaned_by_the_next_build(tmp_path):
    dest = tmp_path / "out"
    build(dest, {"old.txt": "old"})
    env = {**os.environ, "PYTHONPATH": str(_ROOT)}
    proc = subprocess.run([sys.executable, "-c", _DIE_IN_BUILD, str(dest)], env=env, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert tree(dest) == {"old.txt": "old"}, "a killed build touched the old output"
    assert len(names(tmp_path)) == 2, "the killed build should have left its temp folder"
    live = tmp_path / f".tmp-out-{os.getpid()}-abcd1234"  # ours (a live writer's): kept
    live.mkdir()
    other = tmp_path / ".tmp-other-1-abcd1234"  # another output's: not ours to clean
    other.mkdir()
    build(dest, {"new.txt": "new"}, force=True)
    assert tree(dest) == {"new.txt": "new"}
    assert names(tmp_path) == sorted(["out", live.name, other.name])


def test_atomic_write_json_and_text(tmp_path):
    p = tmp_path / "config.json"
    atomic.atomic_write_json(p, {"a": [1, 2]})
    atomic.atomic_write_json(p, {"a": [3]})
    assert json.loads(p.read_text()) == {"a": [3]}
    atomic.atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text("utf-8") == "héllo\n"
    assert names(tmp_path) == ["config.json", "note.txt"], "temp files left behind"


def test_failed_file_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic.atomic_write_text(p, "old")

    def torn(path, data):
        Path(path).write_bytes(data[:1])
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="simulated"):
        atomic.atomic_write_bytes(p, b"new contents", write=torn)
    assert p.read_text() == "old" and names(tmp_path) == ["f.txt"]
