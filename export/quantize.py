"""INT4 bases: freeze the bound parameters into the graph and quantize every base MatMul with MatMulNBits.

Only MatMuls whose weight is a constant initializer are quantized, so the low-rank ports (graph inputs) stay
float and keep working on top of the INT4 weights. The LM head is a Gemm over the (tied) embedding, which the
quantizer leaves alone: the embedding is stored once, in float, shared by Gather and the head.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from runtime import contract

__all__ = ["dequantize_matmulnbits", "freeze_params", "quantize_int4"]


def freeze_params(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Turn the ``param::`` graph inputs into initializers holding ``arrays`` (in place)."""
    names = {contract.param_name(k): k for k in arrays}
    keep = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for graph_name, key in names.items():
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arrays[key]), graph_name))


def quantize_int4(model: onnx.ModelProto, arrays: dict[str, np.ndarray], block_size: int) -> onnx.ModelProto:
    """fp32 training graph + its params -> INT4 training graph (symmetric blocks along d_in)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    freeze_params(model, arrays)
    # The quantizer logs one INFO line per MatMul; hundreds on a real model.
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True)
    quantizer.process()
    return quantizer.model.model


def dequantize_matmulnbits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The float [K, N] weight each MatMulNBits node computes with, keyed by the name of its original weight.

    Used by tests and by INT4 merges: symmetric 4-bit, zero point 8, per block of ``block_size`` rows of K.
    """
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = numpy_helper.to_array(inits[node.input[1]])  # [N, n_blocks, block/2] uint8
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)  # [N, n_blocks]
        low = (packed & 0x0F).astype(np.int8)
        high = (packed >> 4).astype(np.int8)
        q = np.stack([low, high], axis=-1).reshape(n, packed.shape[1], block)  # [N, n_blocks, block]
        if len(node.input) > 3 and node.input[3]:
            zp = numpy_helper.to_array(inits[node.input[3]])
            raise NotImplementedError(f"asymmetric MatMulNBits ({zp.shape}) is not produced by zo-edge")
        w = (q.astype(np.float32) - 8.0) * scales[:, :, None]
        name = node.input[1].removesuffix("_Q4")
        out[name] = np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)
    return out
