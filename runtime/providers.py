"""Execution providers by short name, with an explicit fallback chain and a one-line error listing what exists.

python -m runtime.providers      # or: zo-edge providers
"""

from __future__ import annotations

__all__ = ["PROVIDER_ALIASES", "ProviderError", "available_providers", "resolve_providers"]

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


class ProviderError(RuntimeError):
    pass


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _full_name(name: str) -> str:
    return PROVIDER_ALIASES.get(name.lower(), name)


def resolve_providers(provider: str, fallback: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The first available provider among ``provider`` then ``fallback`` (in order), ending in the usual CPU.

    The asked provider missing and no fallback available is an error, never a silent switch to CPU: a user asking
    for an NPU must know when they did not get it.
    """
    have = available_providers()
    chain = [_full_name(provider), *(_full_name(f) for f in fallback)]
    for name in chain:
        if name in have:
            return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]
    short = {v: k for k, v in PROVIDER_ALIASES.items()}
    listed = ", ".join(f"{short.get(h, h)}" for h in have)
    raise ProviderError(
        f"execution provider {provider!r} is not available here (available: {listed}); "
        f"install the matching onnxruntime flavour or pass --provider with one of those"
    )


if __name__ == "__main__":
    for p in available_providers():
        print(p)
