"""Architecture registry: importing this package registers every family (one file each)."""

from export.architectures import gpt2, llama, opt  # noqa: F401  (registration side effects)
from export.architectures.base import (
    Architecture,
    UnsupportedArchitectureError,
    get_architecture,
    register_architecture,
    registered_architectures,
    tiny_cases,
)

__all__ = [
    "Architecture",
    "UnsupportedArchitectureError",
    "get_architecture",
    "register_architecture",
    "registered_architectures",
    "tiny_cases",
]
