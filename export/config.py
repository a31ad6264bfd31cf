"""Export settings, checked once; they are written into manifest.json so a run knows what its graph can do."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import ZoEdgeError

__all__ = ["ExportConfig", "ExportConfigError"]


class ExportConfigError(ZoEdgeError, ValueError):
    """An export setting out of range (the message names the flag)."""


_BLOCK_SIZES = (32, 64, 128)


@dataclass
class ExportConfig:
    #: targeted roles: "all" or a comma list such as "q,v" (names from the architecture's role map)
    targets: str = "all"
    #: quantize every linear of the base to INT4 (onnxruntime MatMulNBits, symmetric); ports stay float
    int4: bool = False
    #: INT4 quantization block size along d_in
    block_size: int = 32
    #: static number of directions of the in-graph activation basis (AGZO's r; its paper uses 1)
    basis_rank: int = 1
    #: power iterations run inside the graph (AGZO's K; its paper uses 3)
    power_iters: int = 3
    #: ONNX opset; 17 has everything the graph needs (ScatterElements with reduction, LayerNormalization)
    opset: int = 17
    #: block boundaries with prefix/suffix graphs for layer-selective training (export/split.py): "auto" (the top
    #: quarter's, fp32 Llama family), "none", or a comma list such as "20,24"
    splits: str = "auto"

    def __post_init__(self) -> None:
        if self.block_size not in _BLOCK_SIZES:
            raise ExportConfigError(f"--block-size must be one of {_BLOCK_SIZES}, got {self.block_size}")
        if not 1 <= self.basis_rank <= 16:
            raise ExportConfigError(
                f"--basis-rank must be in 1..16 (unrolled Gram-Schmidt in the graph), got {self.basis_rank}"
            )
        spec = self.splits.strip().lower()
        if spec not in ("auto", "none") and not all(x.strip().isdigit() for x in spec.split(",")):
            raise ExportConfigError(f"--splits {self.splits!r}: use auto, none or block boundaries like 20,24")
        if not 0 <= self.power_iters <= 20:
            raise ExportConfigError(f"--power-iters must be in 0..20, got {self.power_iters}")
