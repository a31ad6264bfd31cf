"""Execution providers by short name, with an explicit fallback chain, per-provider options, and the precision each
provider computes in.

python -m runtime.providers      # or: zo-edge providers

Options come as ``[PROVIDER:]KEY=VALUE`` strings (``--provider-option openvino:precision=FP32``, repeatable; no
prefix = the first provider), are handed to onnxruntime unchanged, and are recorded with every report, because
the same graph can compute in a different precision under a different option (OpenVINO's ``precision``,
``device_type``; CUDA's ``device_id``).
"""

from __future__ import annotations

from runtime.errors import ZoEdgeError

__all__ = [
    "PROVIDER_ALIASES",
    "ProviderError",
    "available_providers",
    "computed_precision",
    "full_name",
    "parse_provider_options",
    "resolve_providers",
    "short_name",
]

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cann": "CANNExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
}

#: OpenVINO EP's default ``precision`` per device when none is given (onnxruntime's OpenVINO EP docs: CPU FP32,
#: GPU FP16, NPU FP16). Measured here (onnxruntime-openvino 1.24, AMD EPYC CPU): no option and ``precision=FP32``
#: give bit-identical losses on SmolLM2-135M.
_OPENVINO_DEFAULT_PRECISION = {"CPU": "FP32", "GPU": "FP16", "NPU": "FP16"}


class ProviderError(ZoEdgeError, RuntimeError):
    """An execution provider that is not installed here, or a malformed provider option."""


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def full_name(name: str) -> str:
    """``openvino`` -> ``OpenVINOExecutionProvider``; a full onnxruntime name passes through."""
    return PROVIDER_ALIASES.get(name.lower(), name)


def short_name(name: str) -> str:
    """``OpenVINOExecutionProvider`` -> ``openvino``; unknown names pass through."""
    return {v: k for k, v in PROVIDER_ALIASES.items()}.get(name, name)


_full_name = full_name  # the old private name


def resolve_providers(provider: str, fallback: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The first available provider among ``provider`` then ``fallback`` (in order), ending in the usual CPU.

    The asked provider missing and no fallback available is an error, never a silent switch to CPU: a user asking
    for an NPU must know when they did not get it.
    """
    have = available_providers()
    chain = [full_name(provider), *(full_name(f) for f in fallback)]
    for name in chain:
        if name in have:
            return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    listed = ", ".join(short_name(h) for h in have)
    raise ProviderError(
        f"execution provider {provider!r} is not available here (available: {listed}); "
        f"install the matching onnxruntime flavour or pass --provider with one of those"
    )


def parse_provider_options(specs: list[str], providers: list[str]) -> dict[str, dict[str, str]]:
    """``["openvino:precision=FP32", "device_type=CPU"]`` -> ``{"openvino": {"precision": "FP32", ...}}``.

    Keys of the result are the providers as the user named them in ``providers`` (so ``cpu,openvino`` gives
    ``cpu`` / ``openvino`` keys); a spec without a ``PROVIDER:`` prefix belongs to ``providers[0]``. A prefix may
    be a short or a full onnxruntime name. Every provider in ``providers`` gets an entry (empty when it has no
    option). The last spec for a key wins, as on a command line.
    """
    if not providers:
        raise ProviderError("no provider to attach provider options to; pass --provider (or --providers) first")
    by_full = {full_name(p): p for p in providers}
    out: dict[str, dict[str, str]] = {p: {} for p in providers}
    for spec in specs:
        head, eq, value = spec.partition("=")
        prefix, colon, key = head.rpartition(":")
        key = key.strip()
        if not eq or not key or (colon and not prefix.strip()):
            raise ProviderError(
                f"--provider-option {spec!r} is not [PROVIDER:]KEY=VALUE; "
                "e.g. --provider-option openvino:precision=FP32"
            )
        if colon:
            target = by_full.get(full_name(prefix.strip()))
            if target is None:
                raise ProviderError(
                    f"--provider-option {spec!r} names provider {prefix.strip()!r}, which is not among the providers "
                    f"of this run ({', '.join(providers)}); drop the prefix or add it to --providers"
                )
        else:
            target = providers[0]
        out[target][key] = value.strip()
    return out


def computed_precision(provider: str, options: dict[str, str] | None = None, model_dtype: str = "fp32") -> str:
    """The floating-point precision ``provider`` computes this graph in, as far as its options decide it.

    CPU (onnxruntime's own kernels) and CUDA compute an fp32 graph in fp32 (INT4 exports dequantize MatMulNBits
    blocks and accumulate in fp32 as well). OpenVINO computes in its ``precision`` option, else in its device's
    default (``device_type``, default CPU): FP32 on CPU, FP16 on GPU and NPU. ``ACCURACY`` keeps the graph's own
    precision. Unknown providers report ``"unknown"``: say it rather than guess.
    """
    options = options or {}
    name = full_name(provider)
    graph = "fp32" if model_dtype == "fp32" else f"fp32 ({model_dtype} weights)"
    if name in ("CPUExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider"):
        return graph
    if name == "OpenVINOExecutionProvider":
        precision = options.get("precision", "").upper()
        device = options.get("device_type", "CPU").upper().split(".")[0].split(":")[-1].split(",")[0]
        if precision == "ACCURACY":
            return graph
        if not precision:
            precision = _OPENVINO_DEFAULT_PRECISION.get(device, "")
            return f"{precision.lower()} ({device} default)" if precision else f"unknown ({device} default)"
        return precision.lower()
    return "unknown"


if __name__ == "__main__":
    for p in available_providers():
        print(p)
