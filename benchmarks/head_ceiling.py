"""The first-order ceiling of ``--layers head``: how far training only the final norm's gain can go on a task.

    python benchmarks/head_ceiling.py --task rotten-tomatoes --prompt chat --n-train 1000 --n-test 500

With every block frozen, the model's class scores are ``(RMSNorm(h) ⊙ g) · W[c]`` at the scoring position: the gain
g (d values, 576 on SmolLM2-135M) is a linear classifier over the normalised last hidden state whose direction per
coordinate is fixed by the label words' head rows. This script computes h once with torch (the export's source
model, the same prompt and left-padded positions as the ONNX graph), then fits g by backprop + Adam (full batch,
300 steps, lr 1e-2) on the first n of a shuffled training pool, for several n, and scores the fixed test split. It
also fits an unconstrained linear probe (W and a bias free: 2 x d + 2 values) for comparison. The ZO runs of
``zo-edge train --layers head`` are measured against these numbers (benchmarks/RESULTS.md §6).

Not in CI: it loads the real model and encodes n_train + n_test prompts (a few minutes on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def features(model, tok, task, examples, cand_ids, max_len: int = 128):
    """(normalised last hidden state [N, d], zero-shot class logits [N, C], labels [N], the top block's hidden state
    after its attention [N, d]) at the scoring position. The last is what a split *inside* the top block would
    cache: from it, the block's MLP, the final norm and the head are per-position (no attention left)."""
    import torch

    gain = model.model.norm.weight.detach()
    xs, zs, ys, mids = [], [], [], []
    hook = model.model.layers[-1].post_attention_layernorm.register_forward_pre_hook(
        lambda _m, args: mids.append(args[0][:, -1].detach().numpy().copy())
    )
    for i in range(0, len(examples), 16):
        chunk = examples[i : i + 16]
        enc = [tok.encode(task.render(e), add_special_tokens=False)[-max_len:] for e in chunk]
        t = max(map(len, enc))
        pad = tok.pad_token_id or 0
        ids = torch.tensor([[pad] * (t - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (t - len(e)) + [1] * len(e) for e in enc])
        with torch.no_grad():
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1) * mask, output_hidden_states=True
            )
        xs.append((out.hidden_states[-1][:, -1] / gain).numpy())  # HF's last hidden state is after the final norm
        zs.append(out.logits[:, -1, cand_ids].numpy())
        ys += [task.class_index(e.label) for e in chunk]
    hook.remove()
    return np.concatenate(xs), np.concatenate(zs), np.array(ys), np.concatenate(mids)


def tail_fits(model, w, mtr, ytr, mte, yte, acc) -> dict[str, float]:
    """First-order ceilings of parameterisations that start at the top block's post-attention hidden state ``m``:
    logits = (RMSNorm(m + MLP(RMSNorm(m) ⊙ g2)) ⊙ g) · W[c]. Trained: g2 + g (2d values: the top block's second
    norm and the final norm), + LoRA r = 8 on the MLP's three linears (what a low-rank ZO method would train), and
    the whole MLP + both norms (the upper bound of this split)."""
    import copy

    import torch

    top, norm = model.model.layers[-1], model.model.norm
    out = {}
    for name in ("norms", "norms+lora8", "norms+mlp"):
        mlp, n2, nf = copy.deepcopy(top.mlp), copy.deepcopy(top.post_attention_layernorm), copy.deepcopy(norm)
        params = [n2.weight, nf.weight]
        for p in mlp.parameters():
            p.requires_grad_(name == "norms+mlp")
        lora = []
        if name == "norms+lora8":
            for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                a = torch.nn.Parameter(torch.randn(8, lin.in_features) / lin.in_features**0.5)
                b = torch.nn.Parameter(torch.zeros(lin.out_features, 8))
                lora.append((lin, a, b))
                params += [a, b]
        params += [p for p in mlp.parameters() if p.requires_grad]

        def run(m, mlp=mlp, n2=n2, nf=nf, lora=lora):
            if lora:
                (g_lin, ga, gb), (u_lin, ua, ub), (d_lin, da, db) = lora
                x = n2(m)
                h = mlp.act_fn(g_lin(x) + x @ ga.T @ gb.T) * (u_lin(x) + x @ ua.T @ ub.T)
                y = m + d_lin(h) + h @ da.T @ db.T
            else:
                y = m + mlp(n2(m))
            return nf(y) @ w.T

        loss = fit(run, params, mtr, ytr, lr=1e-3 if name == "norms+mlp" else 1e-2)
        with torch.no_grad():
            out[name] = acc(run(mte))
        out[f"{name}_train_loss"] = loss
    return out


def selection_scores(ztr: np.ndarray, ytr: np.ndarray, zte: np.ndarray, yte: np.ndarray) -> dict[str, float]:
    """Forward-only scores of a prompt that a prompt choice could use instead of its zero-shot accuracy (which a
    class bias dominates): accuracy after contextual calibration (the mean of the class logits over the training
    prompts, no labels, subtracted), and the macro one-vs-rest AUC of the class margins (``zo_edge.metrics``, what
    ``select_prompt`` ranks by; for two classes the accuracy at the best bias, ranked).
    The first 64 training prompts stand in for a dev split (``dev64_*``: what ``--template auto`` sees)."""
    from zo_edge.metrics import macro_auc

    out: dict[str, float] = {}
    for tag, z, y in (("test", zte, yte), ("dev64", ztr[:64], ytr[:64])):
        mean = ztr.mean(0)
        out[f"{tag}_zero_shot"] = float((z.argmax(1) == y).mean())
        out[f"{tag}_calibrated"] = float(((z - mean).argmax(1) == y).mean())
        out[f"{tag}_auc"] = macro_auc(z, y, z.shape[1])
    return out


#: ``--early-stop``: the fraction of the n training examples held out to pick the step (every 10 steps)
EARLY_STOP_HOLDOUT = 0.2
EARLY_STOP = False


def fit(make, params, x, y, steps: int = 300, lr: float = 1e-2):
    """Full-batch Adam. With ``EARLY_STOP`` set, the last 20% of (x, y) are held out and the parameters of the step
    with the best held-out accuracy are restored: a superset parameterisation that overfits 1000 reviews (training
    loss ~0) is then compared at its best, not at its end, so the numbers are ceilings."""
    import torch

    val = None
    if EARLY_STOP and len(y) >= 10:
        cut = int(len(y) * (1 - EARLY_STOP_HOLDOUT))
        x, y, val = x[:cut], y[:cut], (x[cut:], y[cut:])
    opt = torch.optim.Adam(params, lr=lr)
    best, best_state = -1.0, None
    for t in range(steps + 1):
        if val is not None and t % 10 == 0:
            with torch.no_grad():
                acc = float((make(val[0]).argmax(1) == val[1]).float().mean())
            if acc > best:
                best, best_state = acc, [p.detach().clone() for p in params]
        if t == steps:
            break
        loss = torch.nn.functional.cross_entropy(make(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if best_state is not None:
        with torch.no_grad():
            for p, v in zip(params, best_state, strict=True):
                p.copy_(v)
    return float(loss.detach())


def main() -> None:
    import torch

    from export.source import resolve_source
    from zo_edge.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="rotten-tomatoes")
    ap.add_argument("--prompt", default="chat", help="a name from the task's prompt_candidates()")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tail", action="store_true", help="also fit the top block's MLP + norms (tail_fits)")
    ap.add_argument("--early-stop", action="store_true", help="pick every fit's step on 20%% of its training data")
    ap.add_argument("--features", default="", help="an .npz to keep the torch features in (reused when present)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "head_ceiling.json"))
    a = ap.parse_args()
    global EARLY_STOP
    EARLY_STOP = a.early_stop
    torch.set_num_threads(a.threads)
    task = get_task(a.task)
    task = task.with_prompt(next(p for p in task.prompt_candidates() if p.name == a.prompt))
    data = task.load(seed=0, k=None, dev_k=None)
    model, tok = resolve_source("smollm2-135m").load()
    cand = [tok.encode(ws[0], add_special_tokens=False)[0] for ws in task.verbalizer.values()]
    order = np.random.default_rng(0).permutation(len(data.train))[: a.n_train]
    t0 = time.time()
    if a.features and Path(a.features).is_file():
        f = np.load(a.features)
        xtr, ztr, ytr, mtr, xte, zte, yte, mte = (
            f[k] for k in ("xtr", "ztr", "ytr", "mtr", "xte", "zte", "yte", "mte")
        )
    else:
        xtr, ztr, ytr, mtr = features(model, tok, task, [data.train[i] for i in order], cand)
        xte, zte, yte, mte = features(model, tok, task, data.test[: a.n_test], cand)
        if a.features:
            np.savez(a.features, xtr=xtr, ztr=ztr, ytr=ytr, mtr=mtr, xte=xte, zte=zte, yte=yte, mte=mte)
    enc_s = time.time() - t0
    g0, w = model.model.norm.weight.detach().clone(), model.lm_head.weight.detach()[cand].clone()
    xtr, ytr, xte, yte = torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte)
    mtr, mte = torch.tensor(mtr), torch.tensor(mte)

    def acc(logits) -> float:
        return float((logits.argmax(1) == yte).float().mean())

    rows = {"zero_shot": acc(torch.tensor(zte)), "n_test": len(yte), "encode_s": round(enc_s, 1), "by_n": []}
    rows |= selection_scores(ztr, ytr.numpy(), zte, yte.numpy())
    for n in sorted({n for n in (32, 64, 256, 1000, a.n_train) if n <= a.n_train}):
        g = g0.clone().requires_grad_(True)
        gain_loss = fit(lambda x, g=g: (x * g) @ w.T, [g], xtr[:n], ytr[:n])
        with torch.no_grad():
            gain_acc = acc((xte * g) @ w.T)
        wp, bp = (w * g0).clone().requires_grad_(True), torch.zeros(len(cand), requires_grad=True)
        probe_loss = fit(lambda x, wp=wp, bp=bp: x @ wp.T + bp, [wp, bp], xtr[:n], ytr[:n])
        with torch.no_grad():
            probe_acc = acc(xte @ wp.T + bp)
        row = {"n_train": n, "gain_acc": gain_acc, "gain_train_loss": gain_loss, "probe_acc": probe_acc,
               "probe_train_loss": probe_loss}  # fmt: skip
        if a.tail:
            row["tail"] = tail_fits(model, w, mtr[:n], ytr[:n], mte, yte, acc)
        rows["by_n"].append(row)
        tail = "".join(f"  {k} {v:.3f}" for k, v in row.get("tail", {}).items() if not k.endswith("loss"))
        print(f"n={n}: final-norm gain {gain_acc:.3f}  linear probe {probe_acc:.3f}{tail}", flush=True)
    se = (rows["zero_shot"] * (1 - rows["zero_shot"]) / len(yte)) ** 0.5
    print(f"zero-shot {rows['zero_shot']:.3f} ± {se:.3f} (n={len(yte)})")
    print("selection: " + "  ".join(f"{k} {v:.3f}" for k, v in rows.items() if k.startswith(("test_", "dev64_"))))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": a.task, "prompt": a.prompt, "early_stop": a.early_stop}
    Path(a.out).write_text(json.dumps({**meta, **rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
