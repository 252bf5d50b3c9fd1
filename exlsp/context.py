"""Extra context for a completion: a ring of recently edited or viewed chunks of other files.

Chunks are windows of CHUNK_LINES lines aligned to absolute line numbers, so edits in one region
refresh one chunk rather than adding overlapping ones. The ring keeps the most recently touched
MAX_CHUNKS; `select` returns them newest first (the prompt builder lays them out in a stable
order). Pure: the caller decides which files are allowed (exlsp/ignore.py) and passes text in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from exlsp.prompt import ContextChunk

CHUNK_LINES = 32
MAX_CHUNKS = 16


@dataclass(frozen=True)
class RingKey:
    uri: str
    start_line: int


class ContextRing:
    def __init__(self, max_chunks: int = MAX_CHUNKS, chunk_lines: int = CHUNK_LINES):
        self.max_chunks = max_chunks
        self.chunk_lines = chunk_lines
        self._chunks: OrderedDict[RingKey, ContextChunk] = OrderedDict()

    def touch(self, uri: str, path: str, text: str, line: int) -> None:
        """Record the chunk of `text` around `line` as just edited or viewed."""
        start = (max(line, 0) // self.chunk_lines) * self.chunk_lines
        lines = text.split("\n")
        if start >= len(lines):
            start = max(0, (len(lines) - 1) // self.chunk_lines * self.chunk_lines)
        body = "\n".join(lines[start : start + self.chunk_lines]).rstrip("\n")
        key = RingKey(uri, start)
        self._chunks.pop(key, None)
        if body.strip():
            self._chunks[key] = ContextChunk(path=path, start_line=start, text=body)
        while len(self._chunks) > self.max_chunks:
            self._chunks.popitem(last=False)

    def forget(self, uri: str) -> None:
        for key in [k for k in self._chunks if k.uri == uri]:
            del self._chunks[key]

    def select(self, exclude_uri: str | None = None) -> tuple[ContextChunk, ...]:
        """Chunks of other documents, most recently touched first."""
        return tuple(chunk for key, chunk in reversed(self._chunks.items()) if key.uri != exclude_uri)

    def __len__(self) -> int:
        return len(self._chunks)
