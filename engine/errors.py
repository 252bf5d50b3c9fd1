"""Errors the engine raises for a user's mistake (a bad checkpoint, an unsupported model), as opposed to
its own bugs (asserts). Callers catch these to show a message instead of a traceback."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder cannot be loaded: missing or malformed files, tensors or metadata.

    The message names the file or tensor and says what was expected and what to do.
    """


class UnsupportedModelError(CheckpointError):
    """The checkpoint is well formed but describes a model this engine does not implement."""
