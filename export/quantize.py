"""INT4 bases: quantize every base MatMul with MatMulNBits; the tensors left in float stay bound inputs.

Only MatMuls whose weight is a model parameter are quantized, so the low-rank ports (graph inputs) stay float and
keep working on top of the INT4 weights. What is not quantized (the norms' gains, biases, and by default the float
embedding that the head's Gemm shares) stays a ``param::`` input fed from ``params.safetensors``, exactly as in an
fp32 export: every graph of the folder (model.onnx and the split graphs) then binds one copy of it, and a run can
train the norms of an INT4 base (``--layers head --kinds norm``: the head recipe) with the same code as fp32.

``--int4-embedding`` quantizes that float too (``quantize_embedding``), once, symmetric 4-bit blocks along d::

    E [V, d] float ─▶ packed [V, d/bs, bs/2] uint8 + scales [V, d/bs] ─┬─▶ MatMulNBits(h, K=d, N=V) = h Eᵀ  (head)
                                                                      └─▶ Reshape [V, d/2] ─▶ GatherBlockQuantized
                                                                           (ids, gather_axis 0, quantize_axis 1)

Both read the same codes and scales, so the head and the embedding stay tied (they dequantize to the same matrix)
and the 113 MB float table of SmolLM2 becomes 14 MB + 3.5 MB of scales. An untied head gets its own MatMulNBits.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from runtime import contract

__all__ = ["HEAD_NODE", "dequantize_matmulnbits", "freeze_params", "quantize_embedding", "quantize_int4"]

#: name of the LM head's MatMulNBits node (``quantize_embedding``): its weight is the [V, d] head/embedding, so
#: ``dequantize_matmulnbits`` returns it in that orientation
HEAD_NODE = "zo_edge/lm_head/MatMulNBits"


def freeze_params(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Turn the ``param::`` graph inputs into initializers holding ``arrays`` (in place)."""
    names = {contract.param_name(k): k for k in arrays}
    keep = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for graph_name, key in names.items():
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arrays[key]), graph_name))


def quantize_int4(
    model: onnx.ModelProto,
    arrays: dict[str, np.ndarray],
    block_size: int,
    *,
    accuracy_level: int = 0,
    embedding: tuple[str, str] | None = None,
    expect: dict[str, int] | None = None,
) -> set[str]:
    """fp32 training graph + its params -> INT4 training graph (symmetric blocks along d_in), in place.

    Every MatMul whose weight is a ``param::`` input becomes MatMulNBits with the codes of onnxruntime's own kernel
    (the node, initializer names and codes MatMulNBitsQuantizer writes), quantized straight from ``arrays``: the
    float weights never enter the graph, so the export holds no second copy of the model (the quantizer needed the
    floats as initializers first: 4x the weights at peak on SmolLM2-360M, RESULTS.md §11.2). The other params
    (norms, the embedding, any weight another node also reads) stay float inputs. Low-rank ports
    (graph inputs) stay float and keep working on top of the INT4 weights.

    ``accuracy_level``: MatMulNBits' compute type (0 = onnxruntime's default, fp32; 4 = int8 activations).
    ``embedding``: (embedding graph name, LM-head weight graph name) to quantize with ``quantize_embedding`` too
    (``expect``: how many embedding Gathers and head Gemms this graph has: a split graph has one of the two).
    Returns the keys of ``arrays`` the graph still reads as ``param::`` inputs (the float tensors: the caller
    saves them to ``params.safetensors``).
    """
    from onnx import helper

    graph = model.graph
    keys = {contract.param_name(k): k for k in arrays}
    all_nodes = list(graph.node)
    weight_of = {
        i: keys[n.input[1]]
        for i, n in enumerate(all_nodes)
        if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in keys and arrays[keys[n.input[1]]].ndim == 2
    }
    read_elsewhere = {name for i, n in enumerate(all_nodes) if i not in weight_of for name in n.input if name in keys}
    nodes, new_inits, quantized = [], [], set()
    for i, node in enumerate(all_nodes):
        key = weight_of.get(i)
        if key is None:
            nodes.append(node)
            continue
        weight, b = arrays[key], node.input[1]
        if b not in quantized:
            packed, scales = _pack(weight, block_size)
            new_inits += [numpy_helper.from_array(packed, f"{b}_Q4"), numpy_helper.from_array(scales, f"{b}_scales")]
            quantized.add(b)
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], f"{b}_Q4", f"{b}_scales"],
                list(node.output),
                name=f"{node.name}_Q4" if node.name else "",
                domain="com.microsoft",
                K=weight.shape[0],
                N=weight.shape[1],
                bits=4,
                block_size=block_size,
                **({"accuracy_level": accuracy_level} if accuracy_level else {}),
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    gone = quantized - read_elsewhere  # quantized and read by no other node: neither an input nor a float initializer
    inputs = [i for i in graph.input if i.name not in gone]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(new_inits)
    if embedding is not None:
        tables = {keys[name] for name in embedding if name in keys}
        freeze_params(model, {k: arrays[k] for k in tables})  # quantize_embedding reads them as initializers
        quantize_embedding(model, *embedding, block_size=block_size, accuracy_level=accuracy_level, expect=expect)
    left = {i.name for i in graph.input}
    return {key for name, key in keys.items() if name in left}


def _pack(kn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A MatMul weight [K, N] float -> MatMulNBits codes [N, ceil(K/bs), bs/2] uint8 and scales [N, ceil(K/bs)]
    (symmetric, zero point 8), with onnxruntime's own quantization kernel and K zero-padded to whole blocks, as
    MatMulNBitsQuantizer does it, so the codes are the ones it would write."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    k, n = kn.shape
    blocks = (k + block_size - 1) // block_size
    kn = np.ascontiguousarray(kn, dtype=np.float32)
    if blocks * block_size != k:
        kn = np.pad(kn, ((0, blocks * block_size - k), (0, 0)))
    packed = np.zeros((n, blocks, block_size // 2), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), np.uint8)
    quantize_matmul_4bits(packed, kn, scales, zero_points, block_size, n, k, True)
    return packed, scales


def quantize_embedding(
    model: onnx.ModelProto,
    embed_name: str,
    head_name: str,
    *,
    block_size: int,
    accuracy_level: int = 0,
    expect: dict[str, int] | None = None,
) -> None:
    """Replace the float embedding's Gather by GatherBlockQuantized and the head's Gemm(h, W, transB=1) by
    MatMulNBits, in place (module diagram); a tied head (``head_name == embed_name``) shares one set of codes.
    ``expect``: the count of each the graph must have (default one of each: the full graph). The split graphs have
    one: the prefix the Gather, the suffix the Gemm, and the candidates' head a Gather of the C label words' rows
    of the head (``embed_name = head_name``), which GatherBlockQuantized dequantizes from the same codes."""
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    codes: dict[str, tuple[str, str, int, int]] = {}  # float name -> (codes, scales, V, d)
    for name in dict.fromkeys((embed_name, head_name)):
        weight = numpy_helper.to_array(inits[name])
        vocab, dim = weight.shape
        if dim % block_size:
            raise ValueError(f"--int4-embedding: d = {dim} is not a multiple of --block-size {block_size}")
        packed, scales = _pack(weight.T, block_size)  # [V, d]: the head's MatMul weight is its transpose
        new_inits += [numpy_helper.from_array(packed, f"{name}_Q4"), numpy_helper.from_array(scales, f"{name}_scales")]
        codes[name] = (f"{name}_Q4", f"{name}_scales", vocab, dim)
    nodes: list[onnx.NodeProto] = []
    replaced = {"Gather": 0, "Gemm": 0}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] == embed_name:
            packed, scales, vocab, dim = codes[embed_name]
            flat = f"{packed}_rows"
            nodes.append(helper.make_node("Reshape", [packed, f"{flat}_shape"], [flat], name=f"{flat}/Reshape"))
            new_inits.append(numpy_helper.from_array(np.array([vocab, dim // 2], np.int64), f"{flat}_shape"))
            nodes.append(
                helper.make_node(
                    "GatherBlockQuantized",
                    [flat, node.input[1], scales],
                    list(node.output),
                    name=node.name or "zo_edge/embed/GatherBlockQuantized",
                    domain="com.microsoft",
                    bits=4,
                    block_size=block_size,
                    gather_axis=0,
                    quantize_axis=1,
                )
            )
            replaced["Gather"] += 1
        elif node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] == head_name:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("transB") == 1 and not attrs.get("transA"), f"unexpected head Gemm {attrs}"
            packed, scales, vocab, dim = codes[head_name]
            has_bias = len(node.input) > 2 and node.input[2]
            out = f"{node.output[0]}_nobias" if has_bias else node.output[0]
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], packed, scales],
                    [out],
                    name=HEAD_NODE,
                    domain="com.microsoft",
                    K=dim,
                    N=vocab,
                    bits=4,
                    block_size=block_size,
                    **({"accuracy_level": accuracy_level} if accuracy_level else {}),
                )
            )
            if has_bias:
                nodes.append(
                    helper.make_node("Add", [out, node.input[2]], list(node.output), name=f"{HEAD_NODE}/bias")
                )
            replaced["Gemm"] += 1
        else:
            nodes.append(node)
    if replaced != (expect or {"Gather": 1, "Gemm": 1}):
        raise ValueError(
            f"--int4-embedding: expected {expect or 'one embedding Gather and one head Gemm'}, found {replaced}"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [i for i in graph.initializer if i.name not in codes]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)


def _dequantize_blocks(packed: np.ndarray, scales: np.ndarray, n: int, k: int, block: int) -> np.ndarray:
    """Codes [N, n_blocks, block/2] uint8 + scales -> float [N, K] (symmetric 4-bit, zero point 8, low nibble
    first: both MatMulNBits and GatherBlockQuantized read them so)."""
    packed = packed.reshape(n, -1, block // 2)
    low = (packed & 0x0F).astype(np.int8)
    high = (packed >> 4).astype(np.int8)
    q = np.stack([low, high], axis=-1).reshape(n, packed.shape[1], block)  # [N, n_blocks, block]
    w = (q.astype(np.float32) - 8.0) * scales.reshape(n, -1)[:, :, None]
    return w.reshape(n, -1)[:, :k]


def dequantize_matmulnbits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float weight each MatMulNBits / GatherBlockQuantized node computes with, keyed by the name of the
    float weight it replaced, in that weight's orientation: [K, N] for a linear's MatMul, [V, d] for the LM head
    (``HEAD_NODE``) and the embedding (tied: both give the same matrix).

    Used by tests and by INT4 merges: symmetric 4-bit, zero point 8, per block of ``block_size`` rows of K.
    """
    inits = {i.name: i for i in model.graph.initializer}
    reshaped = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Reshape"}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GatherBlockQuantized":
            codes = reshaped.get(node.input[0], node.input[0])
            packed, scales = numpy_helper.to_array(inits[codes]), numpy_helper.to_array(inits[node.input[2]])
            vocab = packed.shape[0]
            dim = scales.shape[-1] * attrs["block_size"]
            out[codes.removesuffix("_Q4")] = _dequantize_blocks(packed, scales, vocab, dim, attrs["block_size"])
            continue
        if node.op_type != "MatMulNBits":
            continue
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(inits[node.input[3]])
            raise NotImplementedError(f"asymmetric MatMulNBits ({zp.shape}) is not produced by zo-edge")
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[node.input[1]])  # [N, n_blocks, block/2] uint8
        w = _dequantize_blocks(packed, numpy_helper.to_array(inits[node.input[2]]), n, k, block)  # [N, K]
        out[node.input[1].removesuffix("_Q4")] = np.ascontiguousarray(w if node.name == HEAD_NODE else w.T)
    return out
