"""Step cost of layer-selective training with the frozen-prefix cache, against a plain full forward, in one process.

    python benchmarks/layer_cost.py --model artifacts/smollm2-fp32 [--threads 2] [--batch 16] [--repeats 5]

For the real SmolLM2-135M on Rotten Tomatoes classification batches (one row per example where the export scores
candidates): the median time of a plain full forward (the unit), a ZO-Act step on all blocks (full graph), and a
ZO-Act step on the top blocks of each exported split, behind the prefix cache (warm: the batch's rows are cached,
as in a k-shot run after its first epoch) and cold (every row missing: what a run pays once per example). Prints
ratios to the plain forward, measured side by side; the target (issue #13) is <= 0.6 for the top quarter, cached.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.contract import Manifest  # noqa: E402
from runtime.layers import n_blocks  # noqa: E402
from runtime.prefix_cache import make_oracle  # noqa: E402
from zo_edge import optim  # noqa: E402
from zo_edge.data import TaskBatches, load_tokenizer  # noqa: E402
from zo_edge.methods import get_method  # noqa: E402
from zo_edge.tasks import get_task  # noqa: E402


def _method(name: str):
    cls = get_method(name)
    schedule = optim.constant(cls.default_lr)
    return cls(cls.Config(), optim.make_optimizer(cls.default_optimizer, schedule), schedule)


def _median(fn, repeats: int) -> float:
    fn()  # warm-up (arena growth, first-run kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="artifacts/smollm2-fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--method", default="zo-act")
    a = ap.parse_args()
    manifest = Manifest.load(a.model)
    n = n_blocks(manifest)
    tok = load_tokenizer(a.model)
    task = get_task("rotten-tomatoes")
    data = task.load(seed=0, k=a.batch)
    full, _ = make_oracle(a.model, threads=a.threads)
    cand = full.manifest.has("candidate_scoring")
    batches = TaskBatches(task, data.train, tok, a.batch, 64, 0, "classification", candidate_scoring=cand)
    batch, objective = batches.next()
    rows = []
    forward = _median(lambda: full.sample_losses(batch, objective), a.repeats)
    rows.append(("plain full forward", forward, n))

    def step_time(oracle, cold: bool = False) -> float:
        method = _method(a.method)
        method.init(oracle, 0)
        if method.needs_calibration:
            method.calibrate(oracle, [batch])
        t = [0]

        def one():
            if cold and oracle.prefix is not None:
                oracle.prefix.rows.clear()
                oracle.prefix.nbytes = 0
            method.step(oracle, batch, objective, t[0])
            t[0] += 1

        return _median(one, a.repeats)

    rows.append((f"{a.method} step, all {n} blocks", step_time(full), n))
    for split in manifest.splits:
        blocks = list(range(split, n))
        cached, used = make_oracle(a.model, blocks=blocks, threads=a.threads)
        assert used == split
        rows.append((f"{a.method} step, blocks {split}-{n - 1}, prefix cached", step_time(cached), len(blocks)))
        cold, _ = make_oracle(a.model, blocks=blocks, threads=a.threads)
        rows.append((f"{a.method} step, blocks {split}-{n - 1}, prefix cold", step_time(cold, cold=True), len(blocks)))
        plain, _ = make_oracle(a.model, blocks=blocks, threads=a.threads, cache_mb=0)
        rows.append((f"{a.method} step, blocks {split}-{n - 1}, no cache (full graph)", step_time(plain), len(blocks)))
    print(
        f"\nSmolLM2-135M, RT batch {a.batch} ({'one row per example' if cand else 'one row per candidate'}), "
        f"{a.threads} threads, median of {a.repeats}"
    )
    print("| | seconds | x plain forward | trained blocks |\n|---|---|---|---|")
    for name, sec, k in rows:
        print(f"| {name} | {sec:.3f} | {sec / forward:.2f}x | {k} |")


if __name__ == "__main__":
    main()
