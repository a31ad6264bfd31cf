"""What the benchmark scripts share: the batches on disk, peak RSS, timing, the JSONL results and the cell runner.

Every benchmark *cell* (one configuration: a plain forward, one method's step, a PyTorch reference) runs in a fresh
subprocess, so its peak RSS (``ru_maxrss``) is its own. The parent builds the batches once from real Rotten Tomatoes
text (``zo_edge.tasks`` + ``lm_batch``) and writes them to an ``.npz`` that every cell, ZO or PyTorch, reads: the
cells never load the dataset or the tokenizer, and all see exactly the same tokens.

A cell prints one JSON line prefixed ``RESULT `` on stdout; ``run_cell`` appends it to a ``results/*.jsonl`` file,
and a cell whose key is already there is skipped unless ``force`` (so an interrupted sweep resumes).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = [
    "BENCH_DIR",
    "RESULTS_DIR",
    "ROOT",
    "cell_main",
    "emit",
    "fmt",
    "load_batches",
    "load_results",
    "machine_info",
    "make_batches",
    "median",
    "method_registry",
    "packed_batch",
    "peak_rss_mb",
    "reset_peak",
    "rt_batches",
    "run_cell",
    "save_batches",
    "spawn_cell",
    "step_ratio",
]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# --- measurement ------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


_LOAD_PEAK: list[float] = []


def reset_peak() -> float:
    """End the load phase: remember the peak RSS so far, then reset the kernel's high-water mark (``clear_refs`` 5,
    Linux >= 4.0; it resets ``ru_maxrss`` too), so that the peak measured afterwards is the steady state's alone.
    Returns the load-phase peak in MiB."""
    peak = peak_rss_mb()
    _LOAD_PEAK.append(peak)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return peak


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def fmt(x, spec: str = "{:.3f}") -> str:
    """A table cell: ``spec`` applied, or "-" for a missing value."""
    return "-" if x is None else spec.format(x)


def step_ratio(x: dict, fwd_cell: float | None) -> float | None:
    """Step time over the plain forward: the forward timed in the same process between steps when there is one
    (robust to load drifting between cells), else the inference-only cell's."""
    t = x.get("step_s")
    fwd = x.get("forward_inproc_s") or fwd_cell
    return t / fwd if t and fwd else None


def check_exports(args) -> None:
    """``args.fp32`` must be an export (exit with the command that makes it); a missing ``args.int4`` is skipped."""
    for name in ("fp32", "int4"):
        path = getattr(args, name)
        if path and not (ROOT / path / "manifest.json").is_file():
            if name == "fp32":
                sys.exit(f"{path} is not an export; run `zo-edge export smollm2-135m --out {path}`")
            print(f"note: {path} not found, skipping INT4 cells (zo-edge export smollm2-135m --out {path} --int4)")
            setattr(args, name, "")


def machine_info() -> dict:
    info = {"nproc": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info


# --- the method registry ---------------------------------------------------------------------------------------
_REGISTRY_PROBE = (
    "import json; from runtime.method import METHODS; import zo_edge.methods; "
    "print(json.dumps({n: {'bases': sorted(c.bases), 'changes_weights': bool(c.changes_weights)} "
    "for n, c in METHODS.items()}))"
)
_REGISTRY: dict[str, dict] = {}


def method_registry() -> dict[str, dict]:
    """name -> {"bases": [...], "changes_weights": bool} of every registered ZO method, in registration order.

    The one method list of the benchmarks (``runtime.method.METHODS``): a new method shows up in every table with no
    edit here. Read in a subprocess because importing the methods loads onnxruntime, and the parent must stay small
    (a vfork'ed cell inherits its parent's ru_maxrss floor; see ``__main__`` below)."""
    if not _REGISTRY:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run(
            [sys.executable, "-c", _REGISTRY_PROBE], check=True, capture_output=True, text=True, env=env, cwd=ROOT
        ).stdout
        _REGISTRY.update(json.loads(out.strip().splitlines()[-1]))
    return dict(_REGISTRY)


# --- batches ----------------------------------------------------------------------------------------------------
def rt_batches(model_dir: str, batch_size: int, max_len: int, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` distinct batches of real Rotten Tomatoes prompts + gold label word, as training sees them (lm_batch)."""
    from zo_edge.batching import lm_batch
    from zo_edge.data import load_tokenizer
    from zo_edge.tasks import get_task

    task = get_task("rotten-tomatoes")
    k = max(16, -(-batch_size * n // 2))  # examples per class, enough for n disjoint batches
    data = task.load(seed=seed, k=k)
    tok = load_tokenizer(model_dir)
    ex = data.train
    assert len(ex) >= batch_size * n, f"need {batch_size * n} training examples, got {len(ex)}"
    return [lm_batch(tok, ex[i * batch_size : (i + 1) * batch_size], task, max_len) for i in range(n)]


def packed_batch(model_dir: str, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A [batch_size, seq_len] batch of real Rotten Tomatoes text packed end to end (no padding), loss on the last
    token of each row (as in lm_batch, where only the label word is scored): for the length/batch scaling sweeps,
    where single reviews are too short."""
    from zo_edge.data import load_tokenizer
    from zo_edge.tasks import get_task

    task = get_task("rotten-tomatoes")
    tok = load_tokenizer(model_dir)
    texts = [e.fields["text"] for e in task.load_examples()]
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch_size, seq_len), np.int64)
    for b in range(batch_size):
        row: list[int] = []
        while len(row) < seq_len:
            row.extend(tok.encode(" " + texts[int(rng.integers(len(texts)))]))
        ids[b] = row[:seq_len]
    loss = np.zeros_like(ids)
    loss[:, -1] = 1
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss}


def make_batches(kind: str, out: Path, model: str, *nums: int) -> Path:
    """Tokenize in a subprocess (keeps the parent small; see ``__main__`` below) unless the file is already there."""
    if not out.is_file():
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, str(BENCH_DIR / "common.py"), kind, str(out), model, *map(str, nums)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return out


def save_batches(path: Path, batches: list[dict[str, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_batches(path: str | Path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as z:
        n = 1 + max(int(k.split("/")[0]) for k in z.files)
        return [{f: z[f"{i}/{f}"] for f in ("input_ids", "attention_mask", "loss_mask")} for i in range(n)]


# --- cells ------------------------------------------------------------------------------------------------------
def emit(result: dict) -> None:
    """The child's last word: its result as one ``RESULT {json}`` line (with its own peak RSS)."""
    run_peak = peak_rss_mb()
    result["peak_run_mb"] = round(run_peak, 1)  # after reset_peak(): steps/forwards only
    result["peak_load_mb"] = round(max(_LOAD_PEAK, default=0.0), 1)
    result["peak_rss_mb"] = round(max([run_peak, *_LOAD_PEAK]), 1)  # the process's lifetime peak
    result["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(result), flush=True)


def cell_main(fn) -> None:
    """Entry point of a cell script: ``python benchmarks/X.py '{"kind": ..., ...}'``."""
    spec = json.loads(sys.argv[1])
    if "execution_order" in spec:  # benchmarks/execution_order.py: onnxruntime's node order for this cell's sessions
        import onnxruntime as ort

        import runtime.session

        runtime.session.EXECUTION_ORDER = getattr(ort.ExecutionOrder, spec["execution_order"])
    t0 = time.perf_counter()
    out = fn(spec)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    emit({**spec, **out})


def load_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["key"]] = r
    return out


def spawn_cell(
    script: str, spec: dict, timeout: float, *, capture_stderr: bool = True
) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``python benchmarks/<script> '<spec json>'`` in a fresh process (repo root on PYTHONPATH); returns the process
    and its ``RESULT`` line parsed (None if it failed or printed none). ``capture_stderr=False`` lets the child's
    progress lines through to our stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    ok = proc.returncode == 0 and lines
    return proc, json.loads(lines[-1][len("RESULT ") :]) if ok else None


def run_cell(script: str, spec: dict, results_path: Path, *, force: bool = False, timeout: float = 1800) -> dict:
    """Run one cell in a fresh subprocess (or return its stored result); appends the result to ``results_path``."""
    done = load_results(results_path)
    key = spec["key"]
    if key in done and not force:
        print(f"  [skip] {key} (in {results_path.name}; --force to rerun)", flush=True)
        return done[key]
    print(f"  [run ] {key} ...", end="", flush=True)
    t0 = time.perf_counter()
    proc, result = spawn_cell(script, spec, timeout)
    if result is None:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        print(f" FAILED (rc {proc.returncode})\n{tail}", flush=True)
        return {"key": key, "error": tail, **spec}
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with results_path.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f" {time.perf_counter() - t0:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MiB", flush=True)
    return result


if __name__ == "__main__":
    # python benchmarks/common.py batches OUT.npz MODEL_DIR BATCH MAX_LEN N   (real RT batches, as lm_batch makes them)
    # python benchmarks/common.py packed  OUT.npz MODEL_DIR BATCH SEQ_LEN     (packed RT text, for the scaling sweeps)
    # A subprocess of run.py, so the parent stays small (a vfork'ed child inherits its parent's ru_maxrss floor).
    what, out, model = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    nums = [int(x) for x in sys.argv[4:]]
    save_batches(out, rt_batches(model, *nums) if what == "batches" else [packed_batch(model, *nums)])
