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

The deployable graphs (``zo-edge merge``'s optimum KV-cache decoders, ``onnx/`` and the INT4 ``onnx-int4/``) are
what a device actually runs, so ``merged_report`` checks them the same way, as ``generate`` runs them (one sequence
per pass, positions fed from outside, the cache grown token by token):

    zo-edge eval artifacts/smollm2-fp32 --task rotten-tomatoes --providers cpu,openvino --merged runs/rt-merged \
        --provider-option openvino:precision=FP32

per provider, the classification scores from the last prompt token's log-probabilities (accuracy, macro-F1,
agreement, |Δ log-likelihood|, flips, as above) and greedy decoding through the cache (how many prompts continue
with the reference's exact tokens, and where the first one differs). Those graphs have no probe outputs, so there is
no per-layer part; a drift there is located by running the training graph with the run's state
(``cross_provider_report``), which computes the same function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runtime import contract
from runtime.batch import Batch
from runtime.errors import ZoEdgeError
from runtime.oracle import Oracle

if TYPE_CHECKING:
    from runtime.generate import Generator
    from runtime.tokenizer import Tokenizer
    from zo_edge.evaluate import EvalResult
    from zo_edge.tasks import Example, Task

__all__ = [
    "CrossProviderReport",
    "GreedyRow",
    "LayerDrift",
    "MergedReportError",
    "ProviderRow",
    "compare",
    "compare_greedy",
    "compare_providers",
    "cross_provider_report",
    "evaluate_merged",
    "format_report",
    "greedy_tokens",
    "layer_divergence",
    "merged_graphs",
    "merged_report",
]

#: the subfolders of a ``zo-edge merge`` output that hold a deployable graph, and the weights each computes with
MERGED_GRAPHS = {"onnx": "fp32", "onnx-int4": "int4"}


class MergedReportError(ZoEdgeError, FileNotFoundError):
    """A ``--merged`` folder that holds no merged graph (the message says what to pass)."""


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
class GreedyRow:
    """Greedy decoding through a merged graph's KV cache on one provider, against the reference provider's."""

    provider: str
    prompts: int
    new_tokens: int
    identical: float  # fraction of prompts whose whole continuation equals the reference's
    token_agreement: float  # fraction of (prompt, position) tokens equal to the reference's
    first_divergence: list[int | None]  # per prompt: index of the first new token that differs (None: none)
    tokens: list[list[int]]  # the continuations themselves (the reference's row is the one to read)


@dataclass
class CrossProviderReport:
    reference: str
    n: int
    label: str  # what was evaluated: "base", a run folder, a merged graph
    rows: list[ProviderRow]
    layers: list[LayerDrift] = field(default_factory=list)  # graph order; empty when not measured
    greedy: list[GreedyRow] = field(default_factory=list)  # merged graphs only: greedy decoding per provider

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
    as in evaluation), fetching every group's input rows at the batch's real tokens. An export without the probe
    ports (``zo-edge export --ports``) has no such outputs: no per-layer part then (``[]``)."""
    names = list(oracles)
    first = oracles[names[0]]
    if not first.manifest.has_ports(contract.PORTS_PROBE):
        return []
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


# --- the merged (deployable) graphs ------------------------------------------------------------------------------
def merged_graphs(merged_dir: str | Path) -> dict[str, Path]:
    """``{"fp32": DIR/onnx, "int4": DIR/onnx-int4}`` (those present) of a ``zo-edge merge`` output, or the one graph
    when ``merged_dir`` is such a subfolder itself (its weights named by the folder's name)."""
    merged_dir = Path(merged_dir)
    if (merged_dir / "model.onnx").is_file():
        return {MERGED_GRAPHS.get(merged_dir.name, "fp32"): merged_dir}
    found = {
        dtype: merged_dir / sub for sub, dtype in MERGED_GRAPHS.items() if (merged_dir / sub / "model.onnx").is_file()
    }
    if not found:
        raise MergedReportError(
            f"{merged_dir} holds no merged graph (no model.onnx in it or in {'/ or '.join(MERGED_GRAPHS)}/): "
            "pass the --out of `zo-edge merge RUN --out DIR`"
        )
    return found


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def evaluate_merged(
    generator: Generator, tokenizer: Tokenizer, task: Task, examples: list[Example], *, max_len: int = 64
) -> EvalResult:
    """Classification by the merged graph, one unpadded sequence per pass as ``generate`` feeds it.

    The prompts (BOS, left truncation to ``max_len``) are ``zo_edge.batching``'s, so the scores are the training
    graph's evaluation scores of the same state. Single-token label words (every built-in task): one pass over the
    prompt, each word's log-probability at its last position. Otherwise one pass per (example, word), the word's
    tokens' log-probabilities summed."""
    from zo_edge.batching import candidate_batch, one_row_batch, single_token_words
    from zo_edge.evaluate import EvalResult
    from zo_edge.objectives import candidate_class_scores

    if not examples:
        raise ValueError("nothing to evaluate: the evaluation set is empty")
    n_classes = len(task.classes)
    scores = np.full((len(examples), n_classes), -np.inf)
    stats: dict = {}
    one_row = single_token_words(tokenizer, task)
    for i, ex in enumerate(examples):
        if one_row:
            feeds, word_class = one_row_batch(tokenizer, [ex], task, max_len, stats=stats)
            prompt = feeds["input_ids"][:, :-1]  # the row without its gold target token: the prompt itself
            last = _log_softmax(generator.sequence_logits(prompt)[0, -1])
            scores[i] = candidate_class_scores(last[feeds["candidate_ids"]][None], word_class, n_classes)[0]
            continue
        feeds, _, row_class = candidate_batch(tokenizer, [ex], task, max_len, stats=stats)
        for r in range(len(row_class)):
            keep = feeds["attention_mask"][r] == 1
            ids, targets = feeds["input_ids"][r][keep], feeds["loss_mask"][r][keep] == 1
            logp = _log_softmax(generator.sequence_logits(ids[None])[0])
            t = np.flatnonzero(targets)  # token t is predicted from position t - 1
            scores[i, row_class[r]] = max(scores[i, row_class[r]], float(logp[t - 1, ids[t]].sum()))
    return EvalResult.from_scores(scores, task, examples, stats.get("truncated", 0))


def greedy_tokens(
    generator: Generator, tokenizer: Tokenizer, task: Task, examples: list[Example], *, max_len: int, new_tokens: int
) -> list[list[int]]:
    """``new_tokens`` greedy tokens after each example's prompt (as evaluated), through the graph's KV cache. No
    stop at EOS: every provider decodes the same number of tokens, so the continuations compare position by
    position."""
    from zo_edge.batching import lm_batch

    out = []
    for ex in examples:
        feeds = lm_batch(tokenizer, [ex], task, max_len)
        prompt = feeds["input_ids"][0][feeds["loss_mask"][0] == 0]  # one unpadded row: prompt, then the gold word
        out.append(generator.generate_ids([int(t) for t in prompt], new_tokens))
    return out


def compare_greedy(tokens: dict[str, list[list[int]]]) -> list[GreedyRow]:
    """Per provider, its greedy continuations against the first provider's (same prompts, same length)."""
    names = list(tokens)
    ref = tokens[names[0]]
    rows = []
    for name in names:
        got = tokens[name]
        if len(got) != len(ref) or any(len(a) != len(b) for a, b in zip(got, ref, strict=True)):
            raise ValueError(f"{name} decoded other prompts or lengths than {names[0]}: not one set")
        first = [
            next((j for j, (a, b) in enumerate(zip(g, r, strict=True)) if a != b), None)
            for g, r in zip(got, ref, strict=True)
        ]
        same = sum(a == b for g, r in zip(got, ref, strict=True) for a, b in zip(g, r, strict=True))
        total = sum(len(r) for r in ref)
        rows.append(
            GreedyRow(
                provider=name,
                prompts=len(ref),
                new_tokens=len(ref[0]) if ref else 0,
                identical=float(np.mean([f is None for f in first])) if first else 1.0,
                token_agreement=same / total if total else 1.0,
                first_divergence=first,
                tokens=[list(map(int, g)) for g in got],
            )
        )
    return rows


def merged_report(
    onnx_dir: str | Path,
    providers: list[str],
    task: Task,
    examples: list[Example],
    tokenizer: Tokenizer,
    *,
    provider_options: dict[str, dict[str, str]] | None = None,
    max_len: int = 64,
    greedy_prompts: int = 8,
    new_tokens: int = 16,
    model_dtype: str | None = None,
) -> CrossProviderReport:
    """One merged graph (``DIR/onnx`` or ``DIR/onnx-int4``) on each provider: the last-token classification
    report (the first provider is the reference) and greedy decoding of the first ``greedy_prompts`` prompts.

    ``model_dtype`` (for the precision column): the weights the graph computes with; by default read from the
    folder's name (``merged_graphs``)."""
    from runtime.generate import Generator
    from runtime.providers import computed_precision

    onnx_dir = Path(onnx_dir)
    dtype = model_dtype or MERGED_GRAPHS.get(onnx_dir.name, "fp32")
    generators = {
        p: Generator(onnx_dir, p, provider_options=(provider_options or {}).get(p) or None) for p in providers
    }
    results = {p: evaluate_merged(g, tokenizer, task, examples, max_len=max_len) for p, g in generators.items()}
    probe = examples[:greedy_prompts]
    greedy = {
        p: greedy_tokens(g, tokenizer, task, probe, max_len=max_len, new_tokens=new_tokens)
        for p, g in generators.items()
    }
    report = compare(
        results,
        precisions={
            p: computed_precision(g.providers[0], g.provider_options[0], dtype) for p, g in generators.items()
        },
        options={p: g.provider_options[0] for p, g in generators.items()},
        label=f"merged {onnx_dir}",
    )
    report.greedy = compare_greedy(greedy) if probe and new_tokens else []
    return report


def format_report(report: CrossProviderReport, *, flips_shown: int = 10, threshold: float = DRIFT_THRESHOLD) -> str:
    """The report as text: a table per provider, the flipped examples, and where each provider's drift starts."""
    lines = [f"cross-provider report ({report.label}, n={report.n}, against {report.reference}):"]
    lines.append(
        f"  {'provider':<12} {'precision':<20} {'accuracy':>8} {'macro-F1':>8} {'agree':>7} "
        f"{'mean|Δll|':>10} {'max|Δll|':>10}  options"
    )
    for r in report.rows:
        opts = ",".join(f"{k}={v}" for k, v in r.options.items()) or "-"
        lines.append(
            f"  {r.provider:<12} {r.precision:<20} {r.accuracy:>8.4f} {r.macro_f1:>8.4f} {r.agreement:>7.4f} "
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
    for g in report.greedy[1:]:
        diverged = [(i, f) for i, f in enumerate(g.first_divergence) if f is not None]
        where = ", ".join(f"prompt {i} at token {f}" for i, f in diverged[:flips_shown]) or "none"
        lines.append(
            f"  {g.provider}: greedy decoding ({g.prompts} prompts x {g.new_tokens} tokens, KV cache): "
            f"{g.identical:.0%} of continuations identical to {report.reference}'s, {g.token_agreement:.4f} of "
            f"tokens; first differing token: {where}"
        )
    return "\n".join(lines)
