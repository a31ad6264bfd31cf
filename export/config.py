"""Export settings, checked once; they are written into manifest.json so a run knows what its graph can do."""

from __future__ import annotations

from dataclasses import dataclass

from runtime.contract import PORT_FAMILIES
from runtime.errors import ZoEdgeError

__all__ = ["ACCURACY_LEVELS", "ATTENTION_MODES", "ExportConfig", "ExportConfigError"]


class ExportConfigError(ZoEdgeError, ValueError):
    """An export setting out of range (the message names the flag)."""


_BLOCK_SIZES = (32, 64, 128)
ATTENTION_MODES = ("eager", "fused")
#: MatMulNBits accuracy levels: 0 = unset (onnxruntime's default: fp32 compute), 1 fp32, 2 fp16, 3 bf16, 4 int8
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


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
    #: quarter's, the top block's and the head's, Llama family, fp32 or INT4), "none", or a comma list "20,24"
    splits: str = "auto"

    #: "eager" (MatMul/Softmax, runs on every provider) or "fused": onnxruntime's com.microsoft GroupQueryAttention
    #: (Llama family; no [B, H, T, T] buffers; CPU/CUDA onnxruntime only, so OpenVINO refuses such an export)
    attention: str = "eager"
    #: MatMulNBits ``accuracy_level`` of an INT4 export (0 = onnxruntime's default, fp32 compute; 4 = int8 compute
    #: with the activations quantized per block; its measured speed and accuracy: RESULTS.md "Export options")
    accuracy_level: int = 0
    #: INT4 only: quantize the token embedding (GatherBlockQuantized) and the LM head (MatMulNBits) too, instead of
    #: keeping them float (on SmolLM2 the tied embedding is 113 MB of the INT4 export's 170)
    int4_embedding: bool = False
    #: the port families every graph gets (runtime/contract.py ``PORT_FAMILIES``): "all", "none" or a comma list
    #: such as "lowrank,probe". A family no method of the intended runs uses still costs its Adds (and the probes
    #: their inputs) in every forward; MeZO and the ``--layers head`` recipe need none. Recorded in the manifest.
    ports: str = "all"

    @property
    def port_families(self) -> list[str]:
        """The families ``ports`` names, in ``PORT_FAMILIES`` order (checked in ``__post_init__``)."""
        spec = self.ports.strip().lower()
        if spec in ("all", "none"):
            return list(PORT_FAMILIES) if spec == "all" else []
        names = {x.strip() for x in spec.split(",")}
        return [f for f in PORT_FAMILIES if f in names]

    def __post_init__(self) -> None:
        spec = self.ports.strip().lower()
        if spec not in ("all", "none"):
            bad = [x.strip() for x in spec.split(",") if x.strip() not in PORT_FAMILIES]
            if bad:
                raise ExportConfigError(
                    f"--ports {self.ports!r}: {bad[0]!r} is not a port family; use all, none or a comma list of "
                    f"{', '.join(PORT_FAMILIES)}"
                )
        if self.attention not in ATTENTION_MODES:
            raise ExportConfigError(f"--attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ExportConfigError(f"--accuracy-level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if (self.accuracy_level or self.int4_embedding) and not self.int4:
            flag = "--accuracy-level" if self.accuracy_level else "--int4-embedding"
            raise ExportConfigError(f"{flag} applies to INT4 exports only; add --int4")
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
