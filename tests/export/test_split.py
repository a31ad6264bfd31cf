"""Prefix and suffix graphs (export/split.py) against the torch model and the full graph, per Llama-family type.

    python -m pytest tests/export/test_split.py -q

For every registered architecture that declares ``supports_splits``: the prefix graph's hidden state equals the
torch model's residual stream entering the split block (ragged left padding); the suffix graph fed that hidden state
gives the full graph's row losses and candidate log-probs (1e-5) and the torch model's (1e-4); a perturbation fed
through a suffix layer's P/Q ports moves the suffix's loss exactly as it moves the full graph's, and the suffix's
activation probes equal the full graph's for the suffix groups.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.architectures import get_architecture, registered_architectures
from runtime import contract
from runtime.safetensors_io import read_safetensors_writable

SPLIT_TYPES = sorted(t for t, cls in registered_architectures().items() if cls.supports_splits)


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray], outputs):
    names = {i.name for i in sess.get_inputs()}
    full = {k: v for k, v in feeds.items() if k in names}
    full.update({contract.param_name(k): v for k, v in params.items() if contract.param_name(k) in names})
    return dict(zip(outputs, sess.run(list(outputs), full), strict=True))


HEADS = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, contract.OUTPUT_ROW_CANDIDATE_LOGP)


def _batch_feeds(tiny):
    """A ragged left-padded batch and the token feeds every graph of a split reads (three candidate ids)."""
    batch = tiny.make_batch(tiny.VOCAB, seed=3, batch=3, seq=9)
    base = {
        contract.INPUT_IDS: batch.input_ids,
        contract.INPUT_ATTENTION_MASK: batch.attention_mask,
        contract.INPUT_LOSS_MASK: batch.loss_mask,
        contract.INPUT_CANDIDATE_IDS: np.array([3, 5, 7], np.int64),
    }
    return batch, base


def _port_feeds(manifest, start: int | None, batch_shape) -> dict[str, np.ndarray]:
    from runtime.layers import block_of

    out: dict[str, np.ndarray] = {contract.INPUT_PROBE_ROWS: np.zeros(0, np.int64)}
    for s in manifest.linears:
        if start is None or block_of(s.name) >= start:
            out[contract.port_p(s.name)] = np.zeros((s.d_in, 0), np.float32)
            out[contract.port_q(s.name)] = np.zeros((s.d_out, 0), np.float32)
            out[contract.port_noise(s.name)] = np.zeros((1, 1, 1), np.float32)
    for g in manifest.groups:
        if start is None or block_of(g.name) >= start:
            out[contract.probe_omega(g.name)] = np.zeros((g.d_in, manifest.basis_rank), np.float32)
            out[contract.probe_sketch_omega(g.name)] = np.zeros((g.d_in, 0), np.float32)
            out[contract.probe_act_rows(g.name)] = np.zeros(0, np.int64)
    return out


@pytest.mark.parametrize("model_type", SPLIT_TYPES)
def test_prefix_then_suffix_is_the_full_forward(model_type, tiny_export, tiny):
    exp = tiny_export(model_type)
    m = exp.manifest
    assert m.splits, f"{model_type}: an fp32 export of a splittable family must write its default split"
    for start in m.splits:  # the top quarter's and the head's (no block in the suffix)
        _check_split(exp, m, start, model_type, tiny)


def _check_split(exp, m, start, model_type, tiny):
    params = read_safetensors_writable(exp.dir / contract.PARAMS_FILE)
    batch, base = _batch_feeds(tiny)

    # prefix vs the torch residual stream entering block `start`
    prefix = _session(exp.dir / contract.prefix_graph_file(start))
    hidden = _run(prefix, base, params, (contract.OUTPUT_HIDDEN,))[contract.OUTPUT_HIDDEN]
    arch = get_architecture(model_type)
    with torch.no_grad():
        ids, attn = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
        pos = (torch.cumsum(attn, 1) - 1) * attn
        want = arch.run_blocks(exp.reference, arch.embed(exp.reference, ids), attn, pos, 0, start).numpy()
    real = batch.attention_mask.astype(bool)
    np.testing.assert_allclose(hidden[real], want[real], rtol=1e-4, atol=1e-4)

    # suffix(prefix) vs the full graph and torch
    full = _session(exp.dir / contract.GRAPH_FILE)
    suffix = _session(exp.dir / contract.suffix_graph_file(start))
    f = _run(full, {**base, **_port_feeds(m, None, batch)}, params, HEADS)
    s = _run(suffix, {**base, **_port_feeds(m, start, batch), contract.INPUT_HIDDEN: hidden}, params, HEADS)
    for name in HEADS:
        np.testing.assert_allclose(s[name], f[name], rtol=1e-5, atol=1e-5, err_msg=name)
    ref_nll, ref_count = tiny.torch_row_losses(exp.reference, batch)
    np.testing.assert_allclose(s[contract.OUTPUT_ROW_NLL], ref_nll.detach().numpy(), rtol=1e-4, atol=1e-4)

    # the same perturbation through a suffix layer's ports, and the suffix groups' probes
    from runtime.layers import block_of

    if not any(block_of(x.name) >= start for x in m.linears):
        _check_candidate_head(exp, m, start, base, hidden, params, f, batch)
        return  # the head's split: no block, no port
    spec = next(x for x in m.linears if block_of(x.name) >= start)
    group = next(g for g in m.groups if block_of(g.name) >= start)
    rng = np.random.default_rng(0)
    pert = {
        contract.port_p(spec.name): rng.standard_normal((spec.d_in, 2)).astype(np.float32),
        contract.port_q(spec.name): 0.1 * rng.standard_normal((spec.d_out, 2)).astype(np.float32),
        contract.INPUT_PROBE_ROWS: batch.real_token_rows(),
        contract.probe_omega(group.name): rng.standard_normal((group.d_in, m.basis_rank)).astype(np.float32),
    }
    outs = (*HEADS, contract.probe_basis(group.name), contract.probe_gram(group.name))
    fp = _run(full, {**base, **_port_feeds(m, None, batch), **pert}, params, outs)
    sp = _run(suffix, {**base, **_port_feeds(m, start, batch), **pert, contract.INPUT_HIDDEN: hidden}, params, outs)
    assert np.abs(fp[contract.OUTPUT_ROW_NLL] - f[contract.OUTPUT_ROW_NLL]).max() > 1e-4, "perturbation had no effect"
    for name in outs:
        np.testing.assert_allclose(sp[name], fp[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_suffix_has_only_its_blocks_ports(tiny_export):
    exp = tiny_export("llama")
    start = exp.manifest.splits[0]
    names = {i.name for i in _session(exp.dir / contract.suffix_graph_file(start)).get_inputs()}
    from runtime.layers import block_of

    for s in exp.manifest.linears:
        assert (contract.port_p(s.name) in names) == (block_of(s.name) >= start), s.name


@pytest.mark.parametrize("case", ["llama", "llama-untied"])
@pytest.mark.parametrize("int4_embedding", [False, True])
def test_int4_split_graphs_compose_to_the_int4_graph(case, int4_embedding, tiny_export, tiny):
    """An INT4 export's split graphs carry model.onnx's quantization (the same MatMulNBits codes; with
    --int4-embedding the embedding's and head's too): prefix ∘ suffix gives the INT4 graph's losses and candidate
    log-probs, the candidates' head its log-probs plus a row constant, and no graph holds a float copy of a
    quantized weight (their float inputs are params.safetensors' norms and float table only)."""
    exp = tiny_export(case, int4=True, block_size=32, int4_embedding=int4_embedding, splits="1,2")
    m = exp.manifest
    n = max(m.splits)
    assert m.splits == [1, 2] and m.has(contract.FEATURE_CANDIDATE_HEAD), m.splits
    assert tiny_export(case, int4=True, block_size=32).manifest.splits == [2], "INT4 auto: the head's split only"
    params = read_safetensors_writable(exp.dir / contract.PARAMS_FILE)
    assert set(params) == {p.name for p in m.params} and not [p for p in m.params if p.kind == contract.KIND_LINEAR]
    batch, base = _batch_feeds(tiny)
    full = _run(_session(exp.dir / contract.GRAPH_FILE), {**base, **_port_feeds(m, None, batch)}, params, HEADS)
    files = [contract.candidate_head_file(n)]
    for start in m.splits:
        files += [contract.prefix_graph_file(start), contract.suffix_graph_file(start)]
        prefix = _session(exp.dir / contract.prefix_graph_file(start))
        hidden = _run(prefix, base, params, (contract.OUTPUT_HIDDEN,))[contract.OUTPUT_HIDDEN]
        suffix = _session(exp.dir / contract.suffix_graph_file(start))
        feeds = {**base, **_port_feeds(m, start, batch), contract.INPUT_HIDDEN: hidden}
        s = _run(suffix, feeds, params, HEADS)
        for name in HEADS:
            np.testing.assert_allclose(s[name], full[name], rtol=1e-5, atol=1e-5, err_msg=f"{start} {name}")
        if start == n:
            head = _session(exp.dir / contract.candidate_head_file(n))
            logit = _run(head, {**base, contract.INPUT_HIDDEN: hidden}, params, (contract.OUTPUT_ROW_CANDIDATE_LOGIT,))
            shift = logit[contract.OUTPUT_ROW_CANDIDATE_LOGIT] - full[contract.OUTPUT_ROW_CANDIDATE_LOGP]
            np.testing.assert_allclose(shift, np.repeat(shift[:, :1], 3, axis=1), rtol=1e-5, atol=1e-4)
    import onnx

    from export.quantize import dequantize_matmulnbits

    vocab, dim = m.vocab_size, params[next(p.name for p in m.params if p.kind == contract.KIND_NORM)].shape[0]
    for name in files:
        g = onnx.load(str(exp.dir / name))
        ops = {node.op_type for node in g.graph.node}
        floats = {i.name for i in g.graph.input if i.name.startswith(contract.param_name(""))}
        assert floats <= {contract.param_name(k) for k in params}, f"{name}: {sorted(floats - set(params))}"
        assert not set(dequantize_matmulnbits(g)) & floats, f"{name}: a float copy of a quantized weight"
        float_tables = [i.name for i in g.graph.initializer if list(i.dims) == [vocab, dim]]
        assert not float_tables, f"{name}: a [V, d] initializer {float_tables}"
        if name.startswith("prefix") or (name.startswith("suffix") and int(name[7:-5]) < n):
            assert "MatMulNBits" in ops, f"{name} holds blocks but no MatMulNBits"
        if int4_embedding:
            assert not [k for k in floats if params[k.removeprefix(contract.param_name(""))].ndim == 2], name
            if name.startswith(("prefix", "candidates")):
                assert "GatherBlockQuantized" in ops, name


def test_unsupported_families_export_no_splits(tiny_export):
    unsupported = sorted(t for t, cls in registered_architectures().items() if not cls.supports_splits)
    for t in unsupported:
        assert tiny_export(t).manifest.splits == [], t


def _check_candidate_head(exp, m, start, base, hidden, params, full_out, batch):
    """The candidates' head at the head's split: its logits are the full graph's candidate log-probabilities plus
    one constant per row (the vocabulary's log-sum-exp, summed over the row's loss positions), and equal the torch
    model's logits at those positions."""
    assert m.has(contract.FEATURE_CANDIDATE_HEAD)
    head = _session(exp.dir / contract.candidate_head_file(start))
    names = {i.name for i in head.get_inputs()}
    assert names <= {*base, contract.INPUT_HIDDEN, *(contract.param_name(k) for k in params)}, names
    logit = _run(head, {**base, contract.INPUT_HIDDEN: hidden}, params, (contract.OUTPUT_ROW_CANDIDATE_LOGIT,))
    logit = logit[contract.OUTPUT_ROW_CANDIDATE_LOGIT]
    shift = logit - full_out[contract.OUTPUT_ROW_CANDIDATE_LOGP]
    np.testing.assert_allclose(shift, np.repeat(shift[:, :1], shift.shape[1], axis=1), rtol=1e-5, atol=1e-4)
    assert np.abs(shift).max() > 1.0, "the head must skip the log-sum-exp, not compute it"
    with torch.no_grad():
        ids, attn = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
        logits = exp.reference(input_ids=ids, attention_mask=attn, position_ids=(torch.cumsum(attn, 1) - 1) * attn)
        logits = logits.logits[:, :-1].numpy()
    eff = batch.loss_mask[:, 1:] * batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]
    cand = base[contract.INPUT_CANDIDATE_IDS]
    want = np.einsum("bt,btc->bc", eff.astype(np.float32), logits[:, :, cand])
    np.testing.assert_allclose(logit, want, rtol=1e-4, atol=1e-4)
