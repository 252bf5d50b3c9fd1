"""Thin LSP handlers, one module per concern; each exposes `register(server)`."""

from __future__ import annotations

from typing import Any


def plain(value: Any) -> Any:
    """pygls turns JSON objects of free-form fields (initializationOptions, settings, command
    arguments, CodeAction.data) into namedtuples; give the pure code plain dicts and lists."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
