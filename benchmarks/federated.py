"""Federated ZO on Flower with the real SmolLM2-135M: accuracy vs rounds and bytes per round (NOT in CI).

    .venv-fl/bin/python benchmarks/federated.py                        # --suite head: centralised, 8 IID, 8 skewed
    .venv-fl/bin/python benchmarks/federated.py --suite zo-act --rounds 6 --k 16 --dev-k 8 --eval-examples 100

Runs in the federated virtualenv (`make bench-federated`; Flower pins protobuf below the main venv's).

``--suite head`` (the product's best recipe, zo_edge/recipes.py HEAD: MeZO + Adam on the final norm's gain behind
the head's split, prefix cache, candidates' head, 32 queries a step): three cells from one prepared oracle, in one
process, on the same k-shot training reviews, the same prompt (chosen once on dev by ``--template auto``) and the
same held-out test sentences: the centralised run (``zo_edge.train.run_training``, batch ``--batch``), and 8
clients with the training reviews dealt IID and label-skewed (each client ``--batch / --clients`` examples a seed,
so every seed is probed on as many examples as centrally, and the seeds count, steps x queries, is the same).
MeZO's queries run in turn, so a federated step is 32 rounds of one seed each (zo_edge/federated/__init__.py).
Each cell scores the global model on ``--eval-examples`` test sentences at step 0 and every ``--eval-every`` steps;
the federated rows also carry the paired difference from the centralised run on the same sentences (mean and s.e.
over sentences of fed-correct minus central-correct).

``--suite zo-act`` (the first cell): ZO-Act on every block, one round a step.

Bytes are counted as Flower serialises each Message (every object of its tree deflated + metadata), both
directions, per client per round; ZO-Act's one-time federated basis is reported apart. The FedAvg LoRA line is the
Flower wire size of a rank-r LoRA adapter (A [r x d_in], B [d_out x r], fp32, on the same target linears) sent down
and up once per client per round: bytes only, no backprop client here.

Cells append to benchmarks/results/federated.jsonl and are skipped when already there (``--force`` reruns).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "federated.jsonl"


def lora_fedavg_bytes(model: str, rank: int) -> dict[str, int]:
    """Wire bytes of one FedAvg exchange of a rank-``rank`` LoRA adapter on the model's targeted linears."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from runtime.contract import Manifest
    from zo_edge.federated.flower import wire_bytes

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    # random values: Flower's object store is content-addressed, so all-zero chunks (an untrained B) would be
    # sent once and undercount what a trained adapter costs
    gen = np.random.default_rng(0)
    arrays = {}
    for s in Manifest.load(model).linears:
        arrays[f"{s.name}.lora_A"] = Array(gen.standard_normal((rank, s.d_in), np.float32))
        arrays[f"{s.name}.lora_B"] = Array(gen.standard_normal((s.d_out, rank), np.float32))
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 1})})
    down = Message(content, dst_node_id=1, message_type="train", group_id="1")
    return {"down": wire_bytes(down), "up": wire_bytes(Message(content, reply_to=down)), "params": int(
        sum(int(np.prod(a.shape)) for a in arrays.values())
    )}  # fmt: skip


def run_cell(a, split: str) -> dict:
    from zo_edge.config import TrainConfig
    from zo_edge.federated.flower import simulate
    from zo_edge.federated.node import FederatedConfig

    out = ROOT / "runs" / f"bench-federated-{split}"
    cfg = TrainConfig.from_flat(
        {
            "model": a.model,
            "method": a.method,
            "task": "rotten-tomatoes",
            "template": a.template,
            "objective": "classification",
            "steps": a.rounds,
            "batch_size": a.batch_size,
            "k": a.k,
            "dev_k": a.dev_k,
            "eval_every": a.eval_every,
            "eval_examples": a.eval_examples,
            "threads": a.threads,
            "out": str(out),
            **({"calib_batches": a.calib_batches} if a.method == "zo-act" else {}),
        }
    )
    fed = FederatedConfig(clients=a.clients, partition=split, engine=a.engine)
    t0 = time.time()

    def show(log) -> None:
        ev = f" acc {log.eval['accuracy']:.3f}" if log.eval else ""
        per = log.sampled or 1
        print(
            f"[{split}] round {log.round + 1}: loss {log.loss:.4f} {log.bytes_down / per:.0f} B down "
            f"{log.bytes_up / per:.0f} B up per client{ev} ({time.time() - t0:.0f}s)",
            flush=True,
        )

    server = simulate(cfg, fed, on_round=show)
    rounds = server.rounds
    per_client = [(r.bytes_down / r.sampled, r.bytes_up / r.sampled) for r in rounds]
    return {
        "cell": f"{a.method}-{split}-c{a.clients}-r{a.rounds}-b{a.batch_size}-k{a.k}",
        "method": a.method,
        "split": split,
        "clients": a.clients,
        "rounds": a.rounds,
        "batch_per_client": a.batch_size,
        "k": a.k,
        "template": cfg.template,
        "rank": getattr(cfg.method_config, "rank", None),
        "queries": cfg.method_config.queries,
        "accuracy_vs_round": {
            "0": server.initial_eval.get("accuracy"),
            **{str(r.round + 1): r.eval["accuracy"] for r in rounds if r.eval},
        },  # fmt: skip
        "eval_examples": a.eval_examples,
        "bytes_per_client_round_down": float(np.mean([d for d, _ in per_client])),
        "bytes_per_client_round_up": float(np.mean([u for _, u in per_client])),
        "bytes_max_client_round": float(max(max(d, u) for d, u in per_client)),
        "basis_bytes_total": server.calibration_bytes,
        "basis_bytes_per_client": {k: v / a.clients for k, v in server.calibration_bytes.items()},
        "loss_vs_round": [r.loss for r in rounds],
        "wall_s": round(time.time() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "load_avg_1m": Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else None,
    }


# --- the head recipe: centralised vs 8 clients ----------------------------------------------------------------------
def _load() -> str | None:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else None


def head_config(a):
    from zo_edge.config import TrainConfig

    return TrainConfig.from_sources(
        None,
        {
            "model": a.model,
            "recipe": "head",
            "task": "rotten-tomatoes",
            "steps": a.steps,
            "queries": a.queries,
            "batch_size": a.batch,
            "k": a.k,
            "dev_k": a.dev_k,
            "eval_every": a.eval_every,
            "eval_examples": a.eval_examples,
            "threads": a.threads,
            "template": a.template,
            "seed": a.seed,
            "out": str(ROOT / "runs" / "bench-federated-head"),
        },
    )


class Scorer:
    """Held-out scores of one cell at its eval steps (0, every --eval-every, the last): accuracy and which test
    sentences it got right (for the paired difference between cells)."""

    def __init__(self, a, test: list) -> None:
        self.test = test
        self.steps = [0] + [s for s in range(1, a.steps + 1) if s % a.eval_every == 0 or s == a.steps]
        self.curve: dict[str, float] = {}
        self.correct: dict[int, np.ndarray] = {}

    def __call__(self, prep, step: int | None = None) -> dict:
        """Score ``prep``'s oracle now; ``step`` None: the next step of the schedule (the federated server's calls)."""
        from zo_edge.train import evaluate_on

        step = self.steps[len(self.correct)] if step is None else step
        r = evaluate_on(prep, self.test, 0)
        gold = np.array([prep.task.class_index(e.label) for e in self.test])
        self.correct[step] = (r.predictions == gold).astype(np.int8)
        self.curve[str(step)] = r.accuracy
        return r.summary()


def central_cell(a, p, scorer: Scorer, t0: float) -> dict:
    """The product's loop (``run_training``) on the recipe, scored on the test sentences at the eval steps."""
    from zo_edge.train import run_training

    cfg = dataclasses.replace(
        p.cfg, eval_every=0, save_every=10**9, out=str(ROOT / "runs" / "bench-federated-head-central")
    )
    prep = dataclasses.replace(p, cfg=cfg)
    shutil.rmtree(cfg.out, ignore_errors=True)  # this benchmark's own scratch run (a rerun of the cell replaces it)
    scorer(prep, 0)

    def on_step(step: int, report) -> None:
        if step in scorer.steps:
            scorer(prep, step)
            print(f"[central] step {step}: acc {scorer.curve[str(step)]:.3f} ({time.time() - t0:.0f}s)", flush=True)

    run_training(prep, on_step=on_step)
    return {"rounds": a.steps, "clients": 1, "batch_per_client": a.batch, "rounds_per_step": 1}


def federated_cell(a, p, split: str, scorer: Scorer, t0: float) -> dict:
    """``--clients`` in-process clients (Flower's serialisation both ways), the server scoring the global model."""
    from zo_edge.federated import flower
    from zo_edge.federated.flower import simulate
    from zo_edge.federated.node import FederatedConfig

    cfg = dataclasses.replace(
        p.cfg, batch_size=a.batch // a.clients, out=str(ROOT / "runs" / f"bench-federated-head-{split}")
    )
    fed = FederatedConfig(clients=a.clients, partition=split, engine="inprocess", snapshot_every=a.snapshot)

    def show(log) -> None:
        if log.eval:
            per = log.sampled or 1
            print(
                f"[{split}] step {log.step + 1} (round {log.round + 1}): acc {log.eval['accuracy']:.3f}, "
                f"{log.bytes_down / per:.0f} B down {log.bytes_up / per:.0f} B up per client "
                f"({time.time() - t0:.0f}s, load {_load()})",
                flush=True,
            )

    # The clients' shared prefix cache starts with the rows the server's cache already holds (the same export's
    # frozen stack on the same tokens: the same bits), so the one prefix pass over the training reviews is paid
    # once in the process (by the centralised cell), not again per federated cell.
    shared, _ = flower._shared_oracle(cfg)
    warm = {k: v for k, v in p.oracle.prefix.rows.items() if k not in shared.prefix.rows}
    shared.prefix.rows.update(warm)
    shared.prefix.nbytes += sum(v.nbytes for v in warm.values())
    misses0 = shared.prefix.misses
    server = simulate(cfg, fed, on_round=show, evaluate=scorer, prepared=dataclasses.replace(p, cfg=cfg))
    rounds, rps = server.rounds, server.rounds_per_step
    assert rps == a.queries and len(rounds) == a.steps * rps, (rps, len(rounds))
    down = [r.bytes_down / r.sampled for r in rounds]
    up = [r.bytes_up / r.sampled for r in rounds]
    return {
        "rounds": len(rounds),
        "clients": a.clients,
        "batch_per_client": cfg.batch_size,
        "rounds_per_step": rps,
        "answered_min": min(r.answered for r in rounds),
        "bytes_per_client_round_down": float(np.mean(down)),
        "bytes_per_client_round_up": float(np.mean(up)),
        "bytes_max_client_round": float(max(max(down), max(up))),
        "bytes_per_client_step_down": float(np.mean(down)) * rps,
        "bytes_per_client_step_up": float(np.mean(up)) * rps,
        "bytes_per_client_total": {"down": float(sum(down)), "up": float(sum(up))},
        "history_held_max": max(r.held for r in rounds),
        "snapshot_every": a.snapshot,
        "prefix_rows_clients": shared.prefix.misses - misses0,
        "prefix_rows_prewarmed": len(warm),
    }


def head_suite(a, done: set[str]) -> None:
    """Centralised, IID and skewed cells of the head recipe from one ``prepare`` (see the module docstring)."""
    from zo_edge.train import prepare

    t0 = time.time()
    p = prepare(head_config(a))  # the prompt chosen once on dev; --max-len 0 resolved once: fixed for every cell
    prompt_s = time.time() - t0
    chosen = {"template": p.cfg.template, "labels": p.cfg.labels, "max_len": p.cfg.max_len}
    print(f"prompt (chosen on dev, {prompt_s:.0f} s): {chosen}", flush=True)
    test = p.data.test[: a.eval_examples]
    # the base values of what the recipe trains (the final norm's gain): every cell starts from them
    base = {s.name: p.oracle.params[s.name].copy() for s in p.oracle.manifest.params}
    tail = f"c{a.clients}-s{a.steps}-q{a.queries}-b{a.batch}-k{a.k}-n{a.eval_examples}-seed{a.seed}"
    rows = {}
    if RESULTS.exists():
        for line in filter(str.strip, RESULTS.read_text().splitlines()):
            row = json.loads(line)
            if row.get("cell", "").endswith(tail):
                rows[row["split"]] = row
    for split in a.splits.split(","):
        key = f"head-{split}-{tail}"
        if key in done and not a.force:
            print(f"skip {key} (in {RESULTS.name}; --force reruns)")
            continue
        for name, value in base.items():
            p.oracle.params[name][...] = value
        scorer = Scorer(a, test)
        misses0 = p.oracle.prefix.misses
        t1 = time.time()
        row = {"cell": key, "suite": "head", "split": split, **chosen}
        row.update(central_cell(a, p, scorer, t1) if split == "central" else federated_cell(a, p, split, scorer, t1))
        final = scorer.correct[a.steps]
        acc = float(final.mean())
        row.update(
            steps=a.steps,
            queries=a.queries,
            seeds_probed=a.steps * a.queries,
            examples_per_seed=a.batch,
            k=a.k,
            train_examples=len(p.data.train),
            eval_examples=len(test),
            seed=a.seed,
            accuracy_vs_step=scorer.curve,
            accuracy=acc,
            accuracy_se=float(np.sqrt(acc * (1 - acc) / len(test))),
            correct_final="".join(map(str, final.tolist())),
            prefix_rows_server=p.oracle.prefix.misses - misses0,
            wall_s=round(time.time() - t1, 1),
            prompt_choice_s=round(prompt_s, 1),
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            load_avg_1m=_load(),
            threads=a.threads,
        )
        if split != "central" and "central" in rows:
            ref = np.array([int(c) for c in rows["central"]["correct_final"]], np.float64)
            d = final.astype(np.float64) - ref
            row["paired_vs_central"] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(d.size))}
        rows[split] = row
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "correct_final"}), flush=True)


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="head", choices=("head", "zo-act"))
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "smollm2-fp32"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--k", type=int, default=128, help="k-shot training examples per class (dealt to clients)")
    ap.add_argument("--dev-k", type=int, default=32)
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--template", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--splits", default=None, help="head: central,iid,skew; zo-act: iid,skew")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="the JSONL file cells append to")
    head = ap.add_argument_group("--suite head")
    head.add_argument("--steps", type=int, default=150, help="training steps (a federated step: --queries rounds)")
    head.add_argument("--queries", type=int, default=32)
    head.add_argument("--batch", type=int, default=32, help="examples per seed (centrally; split over the clients)")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between held-out scores (head 25, zo-act 3)")
    head.add_argument("--snapshot", type=int, default=64, help="federated --snapshot-every (rounds)")
    head.add_argument("--seed", type=int, default=0)
    zo = ap.add_argument_group("--suite zo-act")
    zo.add_argument("--method", default="zo-act")
    zo.add_argument("--rounds", type=int, default=6)
    zo.add_argument("--batch-size", type=int, default=4, help="examples per client per round")
    zo.add_argument("--calib-batches", type=int, default=1, help="zo-act calibration batches per client")
    zo.add_argument("--engine", default="inprocess", help="inprocess (one process) or ray")
    a = ap.parse_args()
    RESULTS = Path(a.results)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    done = set()
    if RESULTS.exists():
        done = {json.loads(x).get("cell") for x in RESULTS.read_text().splitlines() if x.strip()}
    lora = lora_fedavg_bytes(a.model, 8)
    print(f"FedAvg LoRA r=8 ({lora['params']} params): {lora['down']} B down + {lora['up']} B up per client per round")
    if a.suite == "head":
        a.splits, a.eval_every = a.splits or "central,iid,skew", a.eval_every or 25
        return head_suite(a, done)
    a.splits, a.eval_every = a.splits or "iid,skew", a.eval_every or 3
    for split in a.splits.split(","):
        key = f"{a.method}-{split}-c{a.clients}-r{a.rounds}-b{a.batch_size}-k{a.k}"
        if key in done and not a.force:
            print(f"skip {key} (in {RESULTS.name}; --force reruns)")
            continue
        row = run_cell(a, split)
        row["lora_fedavg_r8_bytes_per_client_round"] = lora
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row))


if __name__ == "__main__":
    main()
