"""PyTorch reference cells, on the same model and the same batch as the zo-edge cells (``benchmarks/run.py``).

    python benchmarks/torch_reference.py '{"key": "torch-mezo", "kind": "mezo", "batches": "...npz", "reps": 2}'

* ``kind = "forward"``: eager forward under ``torch.inference_mode`` (full logits, then the per-row NLL on the
  loss positions: what a Hugging Face model does with ``labels``).
* ``kind = "mezo"``: one MeZO step written after the reference trainer (princeton-nlp/MeZO ``large_models/
  trainer.py``: ``zo_perturb_parameters``, ``zo_step``, ``zo_update``), under ``torch.inference_mode``:
  ``torch.manual_seed(seed)``, then for each parameter ``param.data.add_(torch.normal(0, 1, size) * scale)`` with
  scale +μ, −2μ, +μ (restore), two forwards, and the update ``θ −= η g z`` with z regenerated from the same seed.
* ``kind = "adamw"``: a first-order step, ``loss.backward()`` + ``torch.optim.AdamW.step()`` (+ ``zero_grad``).
* ``kind = "lora"``: the same step on a ``peft`` LoRA model (``apply_lora``: r = 8 on q, k, v, o, gate, up, down;
  AdamW over the adapters only), what a laptop user would run instead of full fine-tuning.

The model is SmolLM2-135M from ``export.source.resolve_source("smollm2-135m").load()`` (float32, eager attention),
the zo-edge export's source, or ``spec["source"]`` (a HF folder: ``benchmarks/model_scaling.py``'s random models,
under the address-space cap ``spec["mem_limit_gb"]``). Threads: ``torch.set_num_threads(threads)`` (default: all).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cell_main, load_batches, median, reset_peak  # noqa: E402


def row_nll(model, batch) -> tuple[object, object]:
    """(summed NLL of each row's loss tokens, their count): the exported graph's ``row_nll`` / ``row_count``.
    Positions come from the left-padded mask, as the exported graph computes them."""
    nll, count, _ = row_scores(model, batch)
    return nll, count


def row_scores(model, batch, candidate_ids=None) -> tuple[object, object, object]:
    """``row_nll``, ``row_count`` and, given ``candidate_ids`` [C] (a torch int64 tensor), the graph's
    ``row_candidate_logp`` [B, C]: per row, the sum over its loss positions of log_softmax(logits)[candidate_ids]
    (the contract's one-row candidate scoring); None without."""
    import torch

    ids, attn, lm = batch
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
    target = ids[:, 1:]
    mask = (lm[:, 1:] * attn[:, 1:] * attn[:, :-1]).to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    cand = None
    if candidate_ids is not None:
        logp = logits[..., candidate_ids] - torch.logsumexp(logits, dim=-1, keepdim=True)
        cand = (logp * mask[..., None]).sum(1)
    return (nll * mask).sum(-1), mask.sum(-1), cand


def _loss(model, batch) -> object:
    """Mean over rows of the token-mean NLL at the target positions (the zo-edge ``lm_objective``)."""
    nll, count = row_nll(model, batch)
    return (nll / count.clamp(min=1)).mean()


def _perturb(params, seed: int, scale: float) -> None:
    """MeZO's zo_perturb_parameters: the same seed regenerates the same z for every call."""
    import torch

    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0.0, std=1.0, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data.add_(z * scale)


def mezo_step(model, params, batch, seed: int, mu: float = 1e-3, lr: float = 1e-6) -> tuple[float, dict]:
    import torch

    t: dict[str, float] = {"forward": 0.0, "perturb": 0.0, "update": 0.0}
    with torch.inference_mode():
        t0 = time.perf_counter()
        _perturb(params, seed, mu)
        t["perturb"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        f_plus = float(_loss(model, batch))
        t["forward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        _perturb(params, seed, -2 * mu)
        t["perturb"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        f_minus = float(_loss(model, batch))
        t["forward"] += time.perf_counter() - t0
        g = (f_plus - f_minus) / (2 * mu)
        t0 = time.perf_counter()
        _perturb(params, seed, mu)
        t["perturb"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        torch.manual_seed(seed)  # zo_update: regenerate z, θ -= lr * g * z
        for p in params:
            z = torch.normal(mean=0.0, std=1.0, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data.add_(z, alpha=-lr * g)
        t["update"] += time.perf_counter() - t0
    return 0.5 * (f_plus + f_minus), t


def first_order_step(loss_fn, opt) -> tuple[float, dict[str, float]]:
    """One backprop step: ``loss_fn()`` (forward), ``backward``, ``opt.step``, ``zero_grad``; (loss, seconds per
    phase). Shared by the step-cost cell and the accuracy study's first-order reference."""
    t0 = time.perf_counter()
    loss = loss_fn()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return loss.item(), {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model, r: int = 8, alpha: int = 16, targets=None, dropout: float = 0.0):
    """``model`` wrapped by ``peft`` LoRA (r, alpha, on every attention and MLP projection of a Llama-family
    decoder by default): the base weights frozen, A and B trainable (B starts at zero, so the model is unchanged
    at step 0). Dropout 0: the ZO rows have none, and it would make the first-order steps noisier, not better.
    Needs the ``bench`` extra (``pip install peft``)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SystemExit("the LoRA rows need peft: pip install -e '.[bench]' (or pip install peft)") from None
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets or LORA_TARGETS), bias="none"
    )
    return get_peft_model(model, config)


def main(spec: dict) -> dict:
    import psutil
    import torch

    from export.source import resolve_source

    if spec.get(
        "mem_limit_gb"
    ):  # a model that does not fit fails here with an allocation error, not in the OOM killer
        import resource

        cap = int(spec["mem_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    threads = spec.get("threads") or os.cpu_count()
    torch.set_num_threads(threads)
    b = load_batches(spec["batches"])[spec.get("batch_index", 0)]
    batch = tuple(torch.from_numpy(b[k]) for k in ("input_ids", "attention_mask", "loss_mask"))
    t0 = time.perf_counter()
    model, _ = resolve_source(spec.get("source", "smollm2-135m")).load()
    out: dict = {"threads": threads, "shape": list(b["input_ids"].shape), "load_s": round(time.perf_counter() - t0, 2)}
    out["rss_loaded_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    out["n_params"] = sum(p.numel() for p in model.parameters())
    reset_peak()  # GGUF de-quantisation on load has its own transient peak; the run's peak is what we compare
    kind, reps = spec["kind"], spec.get("reps", 3)
    times, extra = [], []
    if kind == "forward":
        model.eval()
        for i in range(reps + 1):
            t0 = time.perf_counter()
            with torch.inference_mode():
                _loss(model, batch)
            if i:
                times.append(time.perf_counter() - t0)
        out["forward_s"] = round(median(times), 4)
    elif kind == "mezo":
        model.eval()
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        for i in range(reps + 1):
            t0 = time.perf_counter()
            loss, split = mezo_step(model, params, batch, seed=1000 + i)
            if i:
                times.append(time.perf_counter() - t0)
                extra.append(split)
        out["step_s"] = round(median(times), 4)
        for k in ("forward", "perturb", "update"):
            out[f"t_{k}"] = round(median([s[k] for s in extra]), 4)
    elif kind in ("adamw", "lora"):
        if kind == "lora":
            model = apply_lora(model, r=spec.get("r", 8))
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.get("lr", 1e-5))
        for i in range(reps + 1):
            _, split = first_order_step(lambda: _loss(model, batch), opt)
            if i:
                times.append(sum(split.values()))
                extra.append(split)
        out["step_s"] = round(median(times), 4)
        for k in ("forward", "backward", "optimizer"):
            out[f"t_{k}"] = round(median([s[k] for s in extra]), 4)
    else:
        raise ValueError(f"unknown torch cell kind {kind!r}")
    out["all_s"] = [round(x, 4) for x in times]
    return out


if __name__ == "__main__":
    cell_main(main)
