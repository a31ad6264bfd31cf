"""Federated ZO on Flower with the real SmolLM2-135M: accuracy vs rounds and bytes per round (NOT in CI).

    .venv-fl/bin/python benchmarks/federated.py                       # 8 clients, IID and label-skewed, ZO-Act
    .venv-fl/bin/python benchmarks/federated.py --rounds 30 --eval-every 10 --eval-examples 500 --force

Runs in the federated virtualenv (`make bench-federated`; Flower pins protobuf below the main venv's). Each cell is
one federation (zo_edge.federated.flower.simulate) of ``--clients`` clients on Rotten Tomatoes (k-shot train split
dealt IID or label-skewed), the server scoring the global model on ``--eval-examples`` held-out test sentences at
round 0 and every ``--eval-every`` rounds. Bytes are counted as Flower serialises each Message (every object of its
tree deflated + metadata), both directions, per client per round; ZO-Act's one-time federated basis is reported
apart. The FedAvg LoRA line is the Flower wire size of a rank-r LoRA adapter (A [r x d_in], B [d_out x r], fp32,
on the same target linears) sent down and up once per client per round: bytes only, no backprop client here.

Cells append to benchmarks/results/federated.jsonl and are skipped when already there (``--force`` reruns).
"""

from __future__ import annotations

import argparse
import json
import resource
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "shared-smollm2"))
    ap.add_argument("--method", default="zo-act")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4, help="examples per client per round")
    ap.add_argument("--k", type=int, default=16, help="k-shot training examples per class (dealt to clients)")
    ap.add_argument("--dev-k", type=int, default=8)
    ap.add_argument("--calib-batches", type=int, default=1, help="zo-act calibration batches per client")
    ap.add_argument("--eval-every", type=int, default=3)
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--template", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="inprocess", help="inprocess (one process) or ray")
    ap.add_argument("--splits", default="iid,skew")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    done = set()
    if RESULTS.exists():
        done = {json.loads(x).get("cell") for x in RESULTS.read_text().splitlines() if x.strip()}
    lora = lora_fedavg_bytes(a.model, 8)
    print(f"FedAvg LoRA r=8 ({lora['params']} params): {lora['down']} B down + {lora['up']} B up per client per round")
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
