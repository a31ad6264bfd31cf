"""Does a (fine-tuned) model behave the same on every provider? The cross-provider report, and where drift starts.

    zo-edge eval artifacts/smollm2-fp32 --run runs/rt --task rotten-tomatoes --providers cpu,openvino

Against the first provider (the reference), per provider: accuracy, macro-F1, prediction agreement, mean and max
|Δ log-likelihood| over every candidate, the examples whose prediction flips, the options the provider was created
with and the precision it computed in. Then *where* the drift starts: the relative divergence of each activation
group's input rows (the graph's ``probe_act`` outputs, i.e. the hidden state entering q/k/v, o, gate/up and down of
every layer) on a probe batch, in graph order, with the trained state fed as in evaluation. A precision difference
grows slowly from ~1e-7 (fp32) or ~1e-3 (fp16/bf16) at the first layer; a provider that computes something else
shows a jump at the exact layer where it happens (issue #17: OpenVINO's RoPE positions were all 0, which shows as a
35% divergence at the first attention output, layer 0's ``attn_out``, and none at its ``attn_in``).

``compare`` builds the report from finished evaluations; ``layer_divergence`` adds the per-layer part from live
oracles; ``cross_provider_report`` does both from a model folder; ``format_report`` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime.batch import Batch
from runtime.oracle import Oracle

if TYPE_CHECKING:
    from runtime.tokenizer import Tokenizer
    from zo_edge.evaluate import EvalResult
    from zo_edge.tasks import Example, Task

__all__ = [
    "CrossProviderReport",
    "LayerDrift",
    "ProviderRow",
    "compare",
    "compare_providers",
    "cross_provider_report",
    "format_report",
    "layer_divergence",
]

#: relative divergence above which a group counts as "drifted": fp32 reassociation stays near 1e-7..1e-6 through
#: every layer (measured: SmolLM2-135M and the tiny test model, CPU vs OpenVINO at FP32); fp16/bf16 compute is
#: above it from the first layer on, which is where its drift does start
DRIFT_THRESHOLD = 1e-4


@dataclass
class ProviderRow:
    provider: str
    precision: str
    options: dict[str, str]
    accuracy: float
    macro_f1: float
    agreement: float  # fraction of examples with the reference's prediction
    mean_abs_dloglik: float  # over every (example, class) candidate score
    max_abs_dloglik: float
    flipped: list[int]  # indices (into the evaluated examples) whose prediction differs from the reference's


@dataclass
class LayerDrift:
    """Relative Frobenius divergence ||X_p - X_ref|| / ||X_ref|| of one activation group's input rows."""

    group: str
    divergence: dict[str, float]  # provider -> divergence (the reference is 0)


@dataclass
class CrossProviderReport:
    reference: str
    n: int
    label: str  # what was evaluated: "base", a run folder, a merged graph
    rows: list[ProviderRow]
    layers: list[LayerDrift] = field(default_factory=list)  # graph order; empty when not measured

    def row(self, provider: str) -> ProviderRow:
        return next(r for r in self.rows if r.provider == provider)

    def drift_starts(self, provider: str, threshold: float = DRIFT_THRESHOLD) -> str | None:
        """The first group (in graph order) whose divergence from the reference exceeds ``threshold``."""
        return next((d.group for d in self.layers if d.divergence.get(provider, 0.0) > threshold), None)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    results: dict[str, EvalResult],
    *,
    precisions: dict[str, str] | None = None,
    options: dict[str, dict[str, str]] | None = None,
    layers: list[LayerDrift] | None = None,
    label: str = "base",
) -> CrossProviderReport:
    """The report of evaluations of the same examples on several providers (the first is the reference)."""
    names = list(results)
    if not names:
        raise ValueError("compare needs at least one provider's result")
    ref = results[names[0]]
    rows = []
    for name in names:
        r = results[name]
        if r.loglik.shape != ref.loglik.shape:
            raise ValueError(f"{name} scored {r.loglik.shape} candidates, {names[0]} {ref.loglik.shape}: not one set")
        d = np.abs(r.loglik - ref.loglik)
        rows.append(
            ProviderRow(
                provider=name,
                precision=(precisions or {}).get(name, "unknown"),
                options=dict((options or {}).get(name, {})),
                accuracy=float(r.accuracy),
                macro_f1=float(r.macro_f1),
                agreement=float(np.mean(r.predictions == ref.predictions)),
                mean_abs_dloglik=float(d.mean()),
                max_abs_dloglik=float(d.max()),
                flipped=[int(i) for i in np.flatnonzero(r.predictions != ref.predictions)],
            )
        )
    return CrossProviderReport(reference=names[0], n=ref.n, label=label, rows=rows, layers=list(layers or []))


def compare_providers(results: dict[str, EvalResult]) -> list[dict]:
    """The report's rows as plain dicts (provider, accuracy, agreement, max_abs_dloglik, ...): the CLI's table."""
    return [asdict(r) for r in compare(results).rows]


def layer_divergence(oracles: dict[str, Oracle], batch: Batch) -> list[LayerDrift]:
    """Per activation group, how far each provider's hidden states are from the first provider's, on ``batch``.

    One pass per provider through ``Oracle.activations`` (so the trained state, adapters included, is fed exactly
    as in evaluation), fetching every group's input rows at the batch's real tokens."""
    names = list(oracles)
    first = oracles[names[0]]
    groups = [g.name for g in first.manifest.groups]
    rows = {g: batch.real_token_rows() for g in groups}
    acts = {name: o.activations(batch, rows)[1] for name, o in oracles.items()}
    out = []
    for g in groups:
        ref = acts[names[0]][g].astype(np.float64)
        scale = max(float(np.linalg.norm(ref)), 1e-30)
        out.append(
            LayerDrift(g, {n: float(np.linalg.norm(acts[n][g].astype(np.float64) - ref)) / scale for n in names})
        )
    return out


def cross_provider_report(
    model_dir: str | Path,
    providers: list[str],
    task: Task,
    examples: list[Example],
    tokenizer: Tokenizer,
    *,
    run: str | Path | None = None,
    checkpoint: str = "best",
    provider_options: dict[str, dict[str, str]] | None = None,
    max_len: int = 64,
    normalize: bool = False,
    probe_examples: int = 4,
    threads: int | None = None,
) -> CrossProviderReport:
    """Evaluate ``examples`` on each provider (with ``run``'s trained state when given) and explain the difference.

    ``provider_options`` maps provider names as in ``providers`` to their options (``parse_provider_options``).
    The per-layer part runs on the candidate batch of the first ``probe_examples`` examples."""
    from runtime.session import GraphSession
    from zo_edge.batching import candidate_batch
    from zo_edge.evaluate import evaluate
    from zo_edge.train import load_run

    oracles: dict[str, Oracle] = {}
    for p in providers:
        session = GraphSession(model_dir, p, provider_options=(provider_options or {}).get(p) or None, threads=threads)
        oracles[p] = Oracle(session)
        if run is not None:
            load_run(oracles[p], run, checkpoint)
    results = {
        p: evaluate(o, tokenizer, task, examples, max_len=max_len, normalize=normalize) for p, o in oracles.items()
    }
    feeds = candidate_batch(tokenizer, examples[:probe_examples], task, max_len)[0]
    layers = layer_divergence(oracles, Batch.from_dict(feeds))
    return compare(
        results,
        precisions={p: o.session.precision for p, o in oracles.items()},
        options={p: o.session.provider_options[o.session.providers[0]] for p, o in oracles.items()},
        layers=layers,
        label=str(run) if run is not None else "base",
    )


def format_report(report: CrossProviderReport, *, flips_shown: int = 10, threshold: float = DRIFT_THRESHOLD) -> str:
    """The report as text: a table per provider, the flipped examples, and where each provider's drift starts."""
    lines = [f"cross-provider report ({report.label}, n={report.n}, against {report.reference}):"]
    lines.append(
        f"  {'provider':<12} {'precision':<18} {'accuracy':>8} {'macro-F1':>8} {'agree':>7} "
        f"{'mean|Δll|':>10} {'max|Δll|':>10}  options"
    )
    for r in report.rows:
        opts = ",".join(f"{k}={v}" for k, v in r.options.items()) or "-"
        lines.append(
            f"  {r.provider:<12} {r.precision:<18} {r.accuracy:>8.4f} {r.macro_f1:>8.4f} {r.agreement:>7.4f} "
            f"{r.mean_abs_dloglik:>10.2e} {r.max_abs_dloglik:>10.2e}  {opts}"
        )
    for r in report.rows[1:]:
        if r.flipped:
            shown = ", ".join(map(str, r.flipped[:flips_shown])) + (" ..." if len(r.flipped) > flips_shown else "")
            lines.append(f"  {r.provider}: {len(r.flipped)} prediction(s) flip vs {report.reference}: {shown}")
        else:
            lines.append(f"  {r.provider}: no prediction flips vs {report.reference}")
    if report.layers:
        for r in report.rows[1:]:
            start = report.drift_starts(r.provider, threshold)
            div = [d.divergence.get(r.provider, 0.0) for d in report.layers]
            worst = int(np.argmax(div))
            # the largest step up from one group to the next: where a provider computing something else shows
            jumps = [div[0] / 1e-7] + [div[i] / max(div[i - 1], 1e-7) for i in range(1, len(div))]
            jump = int(np.argmax(jumps))
            where = f"starts at {start}" if start else f"stays below {threshold:.0e} through every layer"
            lines.append(
                f"  {r.provider}: hidden-state drift {where} (first group {div[0]:.1e}, last {div[-1]:.1e}, "
                f"largest {div[worst]:.1e} at {report.layers[worst].group}; largest jump x{jumps[jump]:.0f} "
                f"at {report.layers[jump].group})"
            )
    return "\n".join(lines)
