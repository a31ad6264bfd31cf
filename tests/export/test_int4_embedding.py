"""``--int4-embedding`` (GatherBlockQuantized embedding + MatMulNBits head) and ``--accuracy-level``.

    python -m pytest tests/export/test_int4_embedding.py -q

The INT4 graph must compute exactly what the fp32 graph computes with every quantized weight replaced by its
dequantized value, the embedding and the head included (tied: one set of codes; untied: two); no float [V, d] table
may remain. accuracy_level is written on every MatMulNBits and changes the numbers only a little (int8 activations).
The size/peak criterion (INT4 training peak <= 0.55x fp32) is measured on the real model (benchmarks/attention.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.config import ExportConfig, ExportConfigError
from runtime import contract
from runtime.session import GraphSession

# tied (Llama), untied head, an in_out family with learned positions (GPT-2), OPT
CASES = ["llama", "llama-untied", "gpt2", "opt"]
BLOCK = 32


def _ports(manifest: contract.Manifest, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ports = {}
    for lin in manifest.linears:
        ports[contract.port_p(lin.name)] = 0.05 * rng.standard_normal((lin.d_in, 2)).astype(np.float32)
        ports[contract.port_q(lin.name)] = rng.standard_normal((lin.d_out, 2)).astype(np.float32)
    return ports


@pytest.mark.parametrize("case", CASES)
def test_int4_embedding_equals_fp32_with_dequantized_weights(tiny_export, tiny, case):
    fp32 = tiny_export(case)
    q4 = tiny_export(case, int4=True, block_size=BLOCK, int4_embedding=True)
    assert q4.manifest.has(contract.FEATURE_INT4_EMBEDDING)
    graph = onnx.load(str(q4.dir / contract.GRAPH_FILE))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and "Gemm" not in ops, f"{case}: {sorted(set(ops))}"
    vocab = q4.manifest.vocab_size
    tables = [
        i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.dims[:1] == [vocab]
    ]
    tables = [t for t in tables if not t.endswith("_scales")]
    assert not tables, f"{case}: float [V, ...] tables remain: {tables}"
    ref, replaced = tiny.dequantized_session(fp32.dir, q4.dir)
    tied = fp32.reference.config.tie_word_embeddings
    embeddings = {p.name for p in fp32.manifest.params if p.kind in (contract.KIND_EMBEDDING, contract.KIND_LM_HEAD)}
    table_keys = {k for k in replaced if k in embeddings}
    assert len(table_keys) == (1 if tied else 2), f"{case}: dequantized tables {table_keys}"
    sess = GraphSession(q4.dir)
    batch = tiny.make_batch(tiny.VOCAB, seed=30, batch=4, seq=9)
    batch.candidate_ids = np.array([2, 7], np.int64)
    fetch = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT, contract.OUTPUT_ROW_CANDIDATE_LOGP)
    ports = _ports(fp32.manifest, seed=31)
    for p in (None, ports):
        got, want = sess.forward(batch, p, fetch=fetch), ref.forward(batch, p, fetch=fetch)
        for name in fetch:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=f"{case}: {name}")
    # ...and quantizing the table changed the numbers (else the comparison proves nothing about it)
    default_int4 = GraphSession(tiny_export(case, int4=True, block_size=BLOCK).dir)
    assert np.abs(default_int4.losses(batch) - sess.losses(batch)).max() > 1e-4, f"{case}: table not quantized"


def test_accuracy_level(tiny_export, tiny):
    q4 = tiny_export("llama", int4=True, block_size=BLOCK, int4_embedding=True)
    acc = tiny_export("llama", int4=True, block_size=BLOCK, int4_embedding=True, accuracy_level=4)
    graph = onnx.load(str(acc.dir / contract.GRAPH_FILE))
    levels = [
        onnx.helper.get_attribute_value(a)
        for n in graph.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "accuracy_level"
    ]
    n_nbits = sum(n.op_type == "MatMulNBits" for n in graph.graph.node)
    assert levels == [4] * n_nbits, f"accuracy_level on {len(levels)} of {n_nbits} MatMulNBits: {set(levels)}"
    batch = tiny.make_batch(tiny.VOCAB, seed=32, batch=4, seq=9)
    base, fast = GraphSession(q4.dir).losses(batch), GraphSession(acc.dir).losses(batch)
    assert np.isfinite(fast).all()
    # int8 activations: a small change per row (the real model: RESULTS.md "Export options")
    np.testing.assert_allclose(fast, base, rtol=5e-2, atol=5e-2)


def test_int4_options_need_int4():
    with pytest.raises(ExportConfigError, match="--accuracy-level applies to INT4 exports only"):
        ExportConfig(accuracy_level=4)
    with pytest.raises(ExportConfigError, match="--int4-embedding applies to INT4 exports only"):
        ExportConfig(int4_embedding=True)
    with pytest.raises(ExportConfigError, match="--accuracy-level must be one of"):
        ExportConfig(int4=True, accuracy_level=7)
