"""INT4 exports (MatMulNBits, block 32) against the fp32 graph fed with the dequantized weights.

    python -m pytest tests/export/test_int4.py -q

The size criterion (INT4 <= 0.5x fp32) is checked on the real model in test_real_model.py: on a tiny model the
float embedding dominates.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.architectures import tiny_cases
from export.quantize import dequantize_matmulnbits
from runtime import contract
from runtime.batch import Batch
from runtime.session import GraphSession

CASES = list(tiny_cases())  # every registered model type, then the tiny variants (the untied-head "llama-untied")
BLOCK = 32


def low_rank_ports(manifest: contract.Manifest, seed: int, rank: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ports = {}
    for lin in manifest.linears:
        ports[contract.port_p(lin.name)] = 0.05 * rng.standard_normal((lin.d_in, rank)).astype(np.float32)
        ports[contract.port_q(lin.name)] = rng.standard_normal((lin.d_out, rank)).astype(np.float32)
    return ports


@pytest.mark.parametrize("model_type", CASES)
def test_int4_equals_fp32_with_dequantized_weights(tiny_export, tiny, model_type):
    fp32 = tiny_export(model_type)
    int4 = tiny_export(model_type, int4=True, block_size=BLOCK)
    assert int4.manifest.dtype == "int4" and int4.manifest.int4_block_size == BLOCK
    ref, replaced = tiny.dequantized_session(fp32.dir, int4.dir)
    linear_weights = {lin.weight for lin in fp32.manifest.linears}
    # What is not quantized stays bound, as in fp32 (norms, biases, the float embedding): the linear weights only
    # left params.safetensors
    assert {p.name for p in int4.manifest.params} == {p.name for p in fp32.manifest.params} - linear_weights
    assert not [p for p in int4.manifest.params if p.kind == contract.KIND_LINEAR]
    assert replaced == linear_weights, f"not quantized: {sorted(linear_weights - replaced)}"
    q = GraphSession(int4.dir)
    batch = tiny.make_batch(tiny.VOCAB, seed=20, batch=4, seq=9)
    ports = low_rank_ports(fp32.manifest, seed=21)
    ports[contract.INPUT_PROBE_ROWS] = batch.real_token_rows()
    fetch = (contract.OUTPUT_ROW_NLL, contract.OUTPUT_ROW_COUNT)
    for p in (None, ports):
        got, want = q.forward(batch, p, fetch=fetch), ref.forward(batch, p, fetch=fetch)
        np.testing.assert_array_equal(got[contract.OUTPUT_ROW_COUNT], want[contract.OUTPUT_ROW_COUNT])
        np.testing.assert_allclose(got[contract.OUTPUT_ROW_NLL], want[contract.OUTPUT_ROW_NLL], rtol=1e-4)
    # The ports really act on the INT4 graph (the low-rank update is not frozen away)
    moved = q.forward(batch, ports)[contract.OUTPUT_ROW_NLL] - q.forward(batch)[contract.OUTPUT_ROW_NLL]
    assert np.abs(moved).max() > 1e-2, f"{model_type}: P/Q ports have no effect on the INT4 graph"
    # ...and quantization really changed the weights (else the comparison above proves nothing)
    original = GraphSession(fp32.dir).forward(batch)[contract.OUTPUT_ROW_NLL]
    assert np.abs(q.forward(batch)[contract.OUTPUT_ROW_NLL] - original).max() > 1e-4


@pytest.mark.parametrize("model_type", CASES)
def test_int4_stores_embedding_once(tiny_export, model_type):
    int4 = tiny_export(model_type, int4=True, block_size=BLOCK)
    model = onnx.load(str(int4.dir / contract.GRAPH_FILE))
    vocab, dims = int4.manifest.vocab_size, {g.d_in for g in int4.manifest.groups}
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    bound = {p.name: p.shape for p in int4.manifest.params}
    embeddings = [k for k, shape in bound.items() if len(shape) == 2 and shape[0] == vocab and shape[1] in dims]
    tied = int4.manifest.hf_config["tie_word_embeddings"]  # an untied head is a second float [vocab, d] (a Gemm)
    assert len(embeddings) == (1 if tied else 2), f"{model_type}: float [vocab, d] params {embeddings}"
    inputs = {i.name for i in model.graph.input}
    assert all(contract.param_name(k) in inputs for k in embeddings), "the float table is not a bound input"
    tables = [i.name for i in floats if len(i.dims) == 2 and i.dims[0] == vocab]
    assert not tables, f"{model_type}: a second float copy of the table in the graph: {tables}"
    assert not any(n.op_type == "MatMul" and n.input[1] in {i.name for i in floats} for n in model.graph.node), (
        "a MatMul with a constant float weight was left unquantized"
    )
    # No float copy of a quantized linear weight survives next to its packed form.
    float_names = {i.name for i in floats}
    leftovers = sorted(set(dequantize_matmulnbits(model)) & float_names)
    assert not leftovers, f"float copies of quantized weights remain: {leftovers}"
    packed = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    assert packed, "no packed 4-bit weights"


def test_int4_batch_shapes_are_dynamic(tiny_export, tiny):
    int4 = tiny_export("llama", int4=True, block_size=BLOCK)
    sess = GraphSession(int4.dir)
    for b, t in ((1, 2), (6, 13)):
        batch = tiny.make_batch(tiny.VOCAB, seed=b, batch=b, seq=t)
        out = sess.forward(batch)
        assert out[contract.OUTPUT_ROW_NLL].shape == (b,) and np.all(np.isfinite(out[contract.OUTPUT_ROW_NLL]))
    assert isinstance(batch, Batch)
