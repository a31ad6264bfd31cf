"""Architecture registry: importing this package registers every family (one file each).

Adding a family means one file here and one import line below; the tests find it through the registry:

1. ``export/architectures/<family>.py``: a ``@register_architecture("<model_type>", ...)`` subclass of
   ``Architecture`` that declares ``layers_path``, ``roles`` and ``groups``, ``weight_layout``
   (``contract.LAYOUT_OUT_IN`` for nn.Linear, ``LAYOUT_IN_OUT`` for Conv1D-style weights), ``embed_path`` /
   ``lm_head_path``, ``param_kinds`` (every parameter that is not a role's weight), ``constant_buffers``, and a
   ``tiny_config(model_type, **overrides)``; ``tiny_variants`` for export paths its plain tiny config misses.
   Add ``trace_patches`` (a ``TracePatch`` with a why and a version gate) only for a tracing workaround, and
   override a hook (``hidden_states``, ``logits_transform``, ``lm_head_weight``) only when a declaration cannot
   say it;
2. run ``python -m pytest tests/export -q -m "not slow"``: the parity suite runs every registered type and tiny
   variant against torch (tests/export/test_merge.py the merge round trip too), and fails for a type without a
   tiny config or a parameter without a declared kind.
"""

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
