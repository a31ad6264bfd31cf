"""User errors: one line for the person at the keyboard; anything else is a bug and keeps its traceback.

Every error a user can cause (a flag, a file, a folder, a model) is a ``ZoEdgeError`` subclass raised where the bad
input is first seen, with a message that names the input, the problem and the fix. ``zo-edge`` prints such errors
as one line and exits with code 2; any other exception is a bug in zo-edge and is shown with its traceback.
"""

from __future__ import annotations

__all__ = ["ZoEdgeError"]


class ZoEdgeError(Exception):
    """A mistake in the user's input (flag, file, folder): the CLI prints its message on one line, exit code 2."""
