"""The ZO methods, one file each, registered where defined (``runtime.method.register_method``)."""

from runtime.method import METHODS, get_method
from zo_edge.methods import agzo, fzoo, lozo, mezo, subzero, zo_act, zoop  # noqa: F401  (registration)

__all__ = ["METHODS", "get_method"]
