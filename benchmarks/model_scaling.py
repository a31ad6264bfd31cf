"""Model-size scaling (issue #14, item 6): where backprop runs out of memory and zo-edge still trains.

    python benchmarks/model_scaling.py                       # build the random models and exports, run every cell
    python benchmarks/model_scaling.py --sizes smollm2-360m,qwen3-0.6b --threads 1
    python benchmarks/model_scaling.py --report-only

Random-weight Llama-family models with the shapes of real checkpoints (``SIZES``: SmolLM2-135M / 360M / 1.7B,
Qwen2.5-0.5B, Qwen3-0.6B; the weights do not matter for cost), each saved as a Hugging Face folder with SmolLM2's
tokenizer (its ids are valid in every vocabulary here) and exported fp32 and INT4 (``zo-edge export``, MatMulNBits
block 32) under ``artifacts/scale/<size>/``. Per size, one fresh process per cell (its peak RSS is its own), on the
same [B, T] batch of packed Rotten Tomatoes text (``--batch`` x ``--seq``, default 4 x 64):

* zo-edge fp32: the inference forward (the floor) and a MeZO step (Rademacher z, the whole model);
* zo-edge INT4: the inference forward and a LOZO step (rank-2 adapters through the ports: INT4 bases are frozen);
* PyTorch: backprop + AdamW on every weight (``torch-adamw``), and + ``peft`` LoRA r = 8 on every linear
  (``torch-lora``), the two things a laptop user would run instead.

The torch cells run under an address-space cap (``--torch-cap-gb``, default 20 GiB, below this machine's 23.5 GiB
RAM, so a model that does not fit fails in its own process with an allocation error instead of swapping or waking
the OOM killer): a failed cell is reported with the memory that its weights, gradients and AdamW moments alone need
(16 bytes per parameter). Results: ``benchmarks/results/model_scaling.jsonl`` (resumable; ``--force`` reruns).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, load_results, machine_info, make_batches, run_cell  # noqa: E402
from export_memory import measured_export  # noqa: E402

#: model_type and config of each size (the published configs' shapes; tied embeddings as published)
SIZES: dict[str, dict] = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
    ),
    "smollm2-360m": dict(
        model_type="llama", hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
        num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
    ),
    "qwen3-0.6b": dict(
        model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
    ),
    "smollm2-1.7b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=49152, tie_word_embeddings=True, rope_theta=130000.0,
    ),
}  # fmt: skip
CELLS = ("fp32-forward", "fp32-mezo", "int4-forward", "int4-lozo", "torch-adamw", "torch-lora")
BYTES_ADAMW = 16  # fp32 weight + gradient + two AdamW moments, per parameter


def build(name: str, root: Path) -> tuple[dict[str, Path], list[dict]]:
    """The random model's HF folder and its fp32 / INT4 exports (each skipped when already there), and a record per
    export made now: the export process's peak RSS (``export_memory.measured_export``) and wall time."""
    folders = {"hf": root / "hf", "fp32": root / "fp32", "int4": root / "int4"}
    if not (folders["hf"] / "config.json").is_file():
        code = (
            "import json, sys, torch\n"
            "from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast\n"
            "import importlib.util; from pathlib import Path\n"
            "m = importlib.util.spec_from_file_location('tok_fixture', 'tests/zo_edge/conftest.py')\n"
            "fixture = importlib.util.module_from_spec(m); m.loader.exec_module(fixture)\n"
            "spec, out = json.loads(sys.argv[1]), Path(sys.argv[2])\n"
            "cfg = AutoConfig.for_model(spec.pop('model_type'), **spec)\n"
            "torch.manual_seed(0)\n"
            "model = AutoModelForCausalLM.from_config(cfg, attn_implementation='eager')\n"
            "tok_dir = fixture.build_smollm2_tokenizer(Path(sys.argv[3]))\n"
            "tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / 'tokenizer.json'), bos_token='<|im_start|>',"
            " eos_token='<|im_end|>', pad_token='<|im_end|>')\n"
            "model.save_pretrained(out); tok.save_pretrained(out)\n"
            "print(sum(p.numel() for p in model.parameters()))\n"
        )
        tok_cache = ROOT / ".pytest_cache" / "d" / "smollm2_tokenizer"
        tok_cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(SIZES[name]), str(folders["hf"]), str(tok_cache)],
            check=True,
            cwd=ROOT,
        )
    records = []
    for kind in ("fp32", "int4"):
        if not (folders[kind] / "manifest.json").is_file():
            r = measured_export(folders["hf"], folders[kind], kind == "int4")
            if r["rc"] != 0:  # e.g. SIGKILL by the OOM killer: the build side's limit is a result too
                raise BuildFailed(f"{name}: zo-edge export {kind} exited {r['rc']} (-9: out of memory)")
            records.append(
                {"key": f"{name}/export-{kind}", "size": name, "cell": f"export-{kind}",
                 "export_peak_mb": r["peak_mb"], "export_s": r["wall_s"]}
            )  # fmt: skip
    return folders, records


class BuildFailed(RuntimeError):
    """A size whose random model or export could not be built here (recorded, the other sizes still run)."""


def n_params(hf: Path) -> int:
    cfg = json.loads((hf / "config.json").read_text())
    d, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_block = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    if cfg["model_type"] == "qwen2":
        per_block += q + 2 * kv  # q/k/v biases
    if cfg["model_type"] == "qwen3":
        per_block += 2 * hd  # q/k norms
    return n * per_block + v * d * (1 if cfg.get("tie_word_embeddings") else 2) + d


def cell_spec(name: str, cell: str, folders: dict[str, Path], batches: Path, args) -> tuple[str, dict]:
    key = f"{name}/{cell}/b{args.batch}x{args.seq}"
    base = {"key": key, "size": name, "cell": cell, "batches": str(batches), "threads": args.threads, "reps": 2}
    if cell.startswith("torch"):
        spec = {**base, "kind": "adamw" if cell == "torch-adamw" else "lora", "source": str(folders["hf"])}
        spec["mem_limit_gb"] = args.torch_cap_gb
        return "torch_reference.py", spec
    precision, what = cell.split("-")
    spec = {**base, "model": str(folders[precision])}
    if what == "forward":
        return "step_cost.py", {**spec, "kind": "forward", "reps": 3}
    overrides = {"dist": "rademacher"} if what == "mezo" else {}
    return "step_cost.py", {**spec, "kind": "method", "method": what, "overrides": overrides}


def _col(rows: dict, cell: str, with_time: bool = True) -> str:
    """One table cell: "step s / peak", the peak alone, or why the cell has no number."""
    r = rows.get(cell)
    if r is None:
        return "-"
    if "error" in r:
        need = r.get("adamw_need_gb")
        return f"does not fit ({need:.1f} GB for weights+grads+AdamW)" if need else "failed"
    peak = f"{r['peak_run_mb'] / 1024:.2f} GB" if "peak_run_mb" in r else "?"
    t = r.get("step_s") or r.get("forward_s")
    return f"{t:.1f} / {peak}" if with_time and t else peak


def report(results: dict, args) -> None:
    print(
        "| size | params | fp32 fwd peak | fp32 MeZO step (s) / peak | INT4 fwd peak | INT4 LOZO step (s) / peak "
        "| torch AdamW step (s) / peak | torch LoRA step (s) / peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in SIZES:
        rows = {r["cell"]: r for r in results.values() if r.get("size") == name}
        if not rows:
            continue
        if "build" in rows and len(rows) == 1:  # a size that did not build (and was not built since)
            print(f"| {name} | - | {rows['build']['error']} |")
            continue
        p = next((r.get("n_params_est") for r in rows.values() if r.get("n_params_est")), 0)
        cols = [_col(rows, "fp32-forward", False), _col(rows, "fp32-mezo"), _col(rows, "int4-forward", False)]
        cols += [_col(rows, c) for c in ("int4-lozo", "torch-adamw", "torch-lora")]
        print(f"| {name} | {p / 1e9:.2f}B | " + " | ".join(cols) + " |")
    print(f"batch {args.batch} x {args.seq} tokens; peaks after loading (peak_run_mb), fresh process per cell")
    for r in results.values():
        if "export_peak_mb" in r:
            gb = r["export_peak_mb"] / 1024
            print(f"- {r['size']}: zo-edge export {r['cell'][7:]} peak {gb:.2f} GB, {r['export_s']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma list of {', '.join(CELLS)}")
    ap.add_argument("--batch", type=int, default=4, help="rows per batch (default 4)")
    ap.add_argument("--seq", type=int, default=64, help="tokens per row (default 64)")
    ap.add_argument("--threads", type=int, default=0, help="threads per cell (0: all cores)")
    ap.add_argument("--torch-cap-gb", type=float, default=20.0, help="address-space cap of the torch cells (GiB)")
    ap.add_argument("--root", type=Path, default=ROOT / "artifacts" / "scale", help="where models and exports go")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR / "model_scaling.jsonl", help="JSONL results")
    ap.add_argument("--force", action="store_true", help="rerun stored cells")
    ap.add_argument("--report-only", action="store_true", help="print the table from the stored cells")
    args = ap.parse_args()
    if not args.report_only:
        for name in args.sizes.split(","):
            if name not in SIZES:
                sys.exit(f"--sizes: unknown size {name!r}; choose from {', '.join(SIZES)}")
            try:
                folders, records = build(name, args.root / name)
            except BuildFailed as e:
                print(f"  [fail] {e}", flush=True)
                row = {"key": f"{name}/build", "size": name, "cell": "build", "error": str(e)}
                row["machine"] = machine_info()
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                continue
            with args.results.open("a") as f:
                f.writelines(json.dumps({**r, "machine": machine_info()}) + "\n" for r in records)
            batches = make_batches(
                "packed", args.results.parent / f"packed_b{args.batch}_l{args.seq}.npz", str(folders["fp32"]),
                args.batch, args.seq,
            )  # fmt: skip
            est = n_params(folders["hf"])
            for cell in args.cells.split(","):
                script, spec = cell_spec(name, cell, folders, batches, args)
                spec.update(n_params_est=est, adamw_need_gb=round(est * BYTES_ADAMW / 1e9, 2))
                result = run_cell(script, spec, args.results, force=args.force, timeout=3600)
                if "error" in result:  # a failed cell is stored too: "does not fit" is a result here
                    with args.results.open("a") as f:
                        f.write(
                            json.dumps({**spec, "error": result["error"][-500:], "machine": machine_info()}) + "\n"
                        )
    report(load_results(args.results), args)


if __name__ == "__main__":
    main()
