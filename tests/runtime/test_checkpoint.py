"""Tests for runtime/checkpoint.py: bit-exact round trips, and a writer killed at any point never loses a checkpoint.

The crash tests run the save in a subprocess that dies (``os._exit``) at a chosen write/rename, or is SIGKILLed at a
random instant, then check from this process that ``latest_checkpoint`` finds a complete, self-consistent one.

Run with ``python -m pytest tests/runtime/test_checkpoint.py -q``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import checkpoint as ck

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _arrays(step: int, n: int = 64) -> dict[str, np.ndarray]:
    return {
        "w": np.full((n, n), step, np.float32),
        "step": np.array(step, np.int64),
        "ctr": np.array([step, 2**32 - 1], np.uint32),
    }


def _check_consistent(folder: Path) -> int:
    """Load ``folder`` and check arrays and meta belong to the same save; return its step."""
    arrays, meta = ck.load_checkpoint(folder)
    step = meta["step"]
    assert folder.name == ck.checkpoint_name(step), f"{folder.name} holds meta of step {step}"
    assert int(arrays["step"]) == step and np.all(arrays["w"] == step), "arrays and meta of different saves"
    assert meta["tag"] == f"s{step}"
    return step


# --- round trip ---------------------------------------------------------------------------------------------------


def test_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((7, 5)).astype(np.float32)
    f32[0, :3] = [np.nan, -0.0, np.inf]
    arrays = {
        "model.layers.0.q_proj.weight": f32,
        "strided": rng.standard_normal((6, 8)).astype(np.float32)[:, ::2],  # non-contiguous
        "i64": rng.integers(-(2**62), 2**62, size=(3, 4), dtype=np.int64),
        "u32": rng.integers(0, 2**32, size=(9,), dtype=np.uint64).astype(np.uint32),
        "scalar": np.array(12345678901, np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "mask": np.array([True, False]),
    }
    meta = {"config": {"method": "mezo", "lr": 1e-6, "layers": [0, 1, 2], "nested": {"a": None, "b": "é✓"}}, "x": 1.5}
    path = ck.save_checkpoint(tmp_path, 7, arrays, meta)
    assert path == tmp_path / "ckpt_00000007" and (path / "arrays.safetensors").is_file()
    loaded, meta2 = ck.load_checkpoint(path)
    assert meta2 == {**meta, "step": 7}
    assert loaded.keys() == arrays.keys()
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
        assert loaded[k].tobytes() == np.ascontiguousarray(v).tobytes(), f"{k} not bit-exact"
        assert loaded[k].flags.writeable, k
    # A run dir loads its latest checkpoint.
    loaded2, _ = ck.load_checkpoint(tmp_path)
    assert loaded2["i64"].tobytes() == arrays["i64"].tobytes()


def test_safetensors_interop_with_the_reference_library(tmp_path):
    """Our streamed files load with safetensors.numpy, and its files load with our reader (writable views)."""
    from safetensors.numpy import load_file, save_file

    from runtime.safetensors_io import read_safetensors_writable

    rng = np.random.default_rng(1)
    arrays = {
        "b.f32": rng.standard_normal((3, 4)).astype(np.float32),
        "a.i64": np.arange(5, dtype=np.int64),
        "c.f16": rng.standard_normal(7).astype(np.float16),
        "d.bool": np.array([[True, False]]),
        "e.scalar": np.array(3.5, np.float64),
        "f.empty": np.zeros((0, 2), np.float32),
    }
    ck.save_checkpoint(tmp_path, 1, arrays, {})
    theirs = load_file(tmp_path / "ckpt_00000001" / "arrays.safetensors")
    save_file(arrays, tmp_path / "ref.safetensors")
    ours = read_safetensors_writable(tmp_path / "ref.safetensors")
    for got in (theirs, ours):
        assert got.keys() == arrays.keys()
        for k, v in arrays.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape and got[k].tobytes() == v.tobytes(), k
    assert all(v.flags.writeable for v in ours.values())


def test_saving_does_not_copy_the_arrays(tmp_path):
    """A full-weight checkpoint must not hold a second copy of the weights in memory while it is written (the
    reference ``safetensors.numpy.save`` builds the whole file as bytes: +1x the model at the peak)."""
    import tracemalloc

    big = np.ones((4096, 4096), np.float32)  # 64 MiB
    tracemalloc.start()
    try:
        ck.save_checkpoint(tmp_path, 1, {"w": big, "s": np.array(1, np.int64)}, {"tag": "x"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big.nbytes / 8, f"saving allocated {peak / 2**20:.0f} MiB for a {big.nbytes / 2**20:.0f} MiB array"
    loaded, _ = ck.load_checkpoint(tmp_path)
    assert np.array_equal(loaded["w"], big)


def test_npz_fallback_for_dtypes_safetensors_lacks(tmp_path):
    arrays = {"c": np.array([1 + 2j, 3 - 4j], np.complex128), "f": np.ones(3, np.float32)}
    path = ck.save_checkpoint(tmp_path, 1, arrays, {})
    assert (path / "arrays.npz").is_file() and not (path / "arrays.safetensors").exists()
    loaded, _ = ck.load_checkpoint(path)
    assert loaded["c"].tobytes() == arrays["c"].tobytes() and loaded["c"].dtype == np.complex128
    assert all(v.flags.writeable for v in loaded.values()), "loaded arrays must be writable (resume updates them)"


def test_bad_meta_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        ck.save_checkpoint(tmp_path, 1, _arrays(1), {"bad": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AssertionError):
        ck.save_checkpoint(tmp_path, 1, _arrays(1), {"step": 2})


def test_keep_pruning_and_latest(tmp_path):
    for s in range(1, 6):
        ck.save_checkpoint(tmp_path, s * 100, _arrays(s * 100), {"tag": f"s{s * 100}"}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt_00000400", "ckpt_00000500", "latest"], names
    assert (tmp_path / "latest").read_text().strip() == "ckpt_00000500"
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000500"
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt_00000400", "ckpt_00000500"]
    # Re-saving an existing step (resume) replaces it in place.
    ck.save_checkpoint(tmp_path, 500, _arrays(500), {"tag": "s500", "again": True}, keep=2)
    assert ck.load_checkpoint(tmp_path)[1]["again"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_save_named_best(tmp_path):
    ck.save_checkpoint(tmp_path, 1, _arrays(1), {"tag": "s1"}, keep=1)
    best = ck.save_named(tmp_path, "best", _arrays(1), {"acc": 0.5})
    ck.save_checkpoint(tmp_path, 2, _arrays(2), {"tag": "s2"}, keep=1)
    ck.save_named(tmp_path, "best", _arrays(2), {"acc": 0.7})
    assert best == tmp_path / "best"
    assert ck.load_checkpoint(best)[1] == {"acc": 0.7}
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "ckpt_00000002", "latest"]
    for bad in ("latest", ".x", "ckpt_00000003", "a/b", ""):
        with pytest.raises(AssertionError):
            ck.save_named(tmp_path, bad, {}, {})


def test_temp_leftovers_and_broken_pointer_ignored(tmp_path):
    ck.save_checkpoint(tmp_path, 1, _arrays(1), {"tag": "s1"})
    pid = _dead_pid()
    leftover = tmp_path / f".tmp-ckpt_00000009-{pid}-abcd1234"
    leftover.mkdir()
    (leftover / "arrays.safetensors").write_bytes(b"half")
    (tmp_path / f".tmp-latest-{pid}-abcd1234").write_text("ckpt_00000009")
    broken = tmp_path / "ckpt_00000010"  # no meta.json: e.g. copied by hand, half-way
    broken.mkdir()
    (broken / "arrays.safetensors").write_bytes(b"x")
    (tmp_path / "latest").write_text("ckpt_00000010\n")
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000001"
    (tmp_path / "latest").write_text(".tmp-ckpt_00000009-1-abcd1234\n")
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000001"
    (tmp_path / "latest").unlink()
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000001"
    (broken / "meta.json").write_text("{not json")
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000001"
    # The next save deletes dead writers' leftovers; a live writer's (ours) would be kept.
    live = tmp_path / f".tmp-ckpt_00000011-{os.getpid()}-00ff00ff"
    live.mkdir()
    ck.save_checkpoint(tmp_path, 2, _arrays(2), {"tag": "s2"}, keep=5)
    assert not leftover.exists() and not (tmp_path / f".tmp-latest-{pid}-abcd1234").exists() and live.exists()


def test_empty_run_dir(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
    assert ck.latest_checkpoint(tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ck.load_checkpoint(tmp_path)


def test_atomic_write_json_and_text(tmp_path):
    p = tmp_path / "config.json"
    ck.atomic_write_json(p, {"a": [1, 2], "b": {"c": "d"}})
    ck.atomic_write_json(p, {"a": [3]})
    assert json.loads(p.read_text()) == {"a": [3]}
    ck.atomic_write_text(tmp_path / "note.txt", "héllo\n")
    assert (tmp_path / "note.txt").read_text("utf-8") == "héllo\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["config.json", "note.txt"], "temp files left behind"


# --- crashes ------------------------------------------------------------------------------------------------------

_CRASH_CHILD = """
import os, shutil, sys
import numpy as np
from runtime import checkpoint as ck

run_dir, point = sys.argv[1], sys.argv[2]
def arrays(step):
    return {"w": np.full((256, 256), step, np.float32), "step": np.array(step, np.int64)}
ck.save_checkpoint(run_dir, 1, arrays(1), {"tag": "s1"}, keep=1)

kind, _, nth = point.partition(":")
calls = {"n": 0}
def hit():
    calls["n"] += 1
    return calls["n"] == int(nth or 1)

if kind == "write":  # die half-way through the nth file write
    real = ck._write_file
    def write(path, data):
        if hit():
            blob = b"".join(map(bytes, ck._chunks(data)))  # the arrays file is streamed as chunks
            with open(path, "wb") as f:
                f.write(blob[: len(blob) // 2])
            os._exit(1)
        real(path, data)
    ck._write_file = write
elif kind in ("rename", "replace", "after_replace"):
    name = "replace" if kind == "after_replace" else kind
    real = getattr(os, name)
    def op(src, dst):
        if kind == "after_replace":
            real(src, dst)
            os._exit(1)
        if hit():
            os._exit(1)
        real(src, dst)
    setattr(os, name, op)
elif kind == "rmtree":  # die while deleting the pruned checkpoint (after its rename to .trash-*)
    shutil.rmtree = lambda *a, **k: os._exit(1)

ck.save_checkpoint(run_dir, 2, arrays(2), {"tag": "s2"}, keep=1)
os._exit(3)
"""

# kill point -> steps the reader may legitimately find
_CRASH_POINTS = {
    "write:1": {1},  # arrays file of step 2, torn
    "write:2": {1},  # meta.json of step 2, torn
    "write:3": {1},  # tmp file of the `latest` pointer, torn
    "rename:1": {1},  # before the temp folder becomes ckpt_00000002
    "replace:1": {1, 2},  # before `latest` is replaced: it still names step 1, which is still there
    "after_replace": {2},  # after `latest` moved on, before pruning
    "rename:2": {2},  # before the pruned step-1 folder is renamed to .trash-*
    "rmtree": {2},  # while deleting the .trash-* folder
}


@pytest.mark.parametrize("point", sorted(_CRASH_POINTS))
def test_crash_during_save_keeps_a_checkpoint(tmp_path, point):
    proc = subprocess.run(
        [sys.executable, "-c", _CRASH_CHILD, str(tmp_path), point], env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 1, f"crash point {point} not reached (rc={proc.returncode}): {proc.stderr}"
    found = ck.latest_checkpoint(tmp_path)
    assert found is not None, f"no checkpoint after a crash at {point}"
    arrays, meta = ck.load_checkpoint(found)
    assert meta["step"] in _CRASH_POINTS[point], f"crash at {point}: found step {meta['step']}"
    assert int(arrays["step"]) == meta["step"] and np.all(arrays["w"] == meta["step"])
    assert ck.load_checkpoint(tmp_path)[1]["step"] == meta["step"]
    # The run can go on: the next save succeeds and cleans the dead writer's leftovers.
    ck.save_checkpoint(tmp_path, 3, {"w": np.zeros(1, np.float32)}, {}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000003", "latest"]


_LOOP_CHILD = """
import sys
import numpy as np
from runtime import checkpoint as ck
run_dir = sys.argv[1]
for step in range(1, 10**6):
    w = np.full((512, 1024), step, np.float32)  # 2 MB per save
    ck.save_checkpoint(run_dir, step, {"w": w, "step": np.array(step, np.int64)}, {"tag": f"s{step}"}, keep=2)
"""


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.29])
def test_sigkill_at_random_instant(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", _LOOP_CHILD, str(tmp_path)], env=_env())
    try:
        deadline = time.monotonic() + 30
        while ck.latest_checkpoint(tmp_path) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the saving child died or never saved"
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    found = ck.latest_checkpoint(tmp_path)
    assert found is not None
    step = _check_consistent(found)
    assert step >= 1
    assert all(_check_consistent(p) >= 1 for p in ck.list_checkpoints(tmp_path))


def test_runtime_does_not_import_torch():
    code = "import sys, runtime.checkpoint, runtime.rng; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
