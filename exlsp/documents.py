"""Open documents and LSP positions. Pure: no pygls, no IO.

LSP positions count UTF-16 code units (a character outside the Basic Multilingual Plane, such as
most emoji, is two units); Python strings index code points. Every conversion goes through
`offset_at`, which also clamps what editors are allowed to send but sometimes do: a line past the
end of the document, a character past the end of its line, a position inside a surrogate pair.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def sanitize(text: str) -> str:
    """JSON lets a client send a lone surrogate ("\\ud800"); it can be neither tokenized nor sent
    back as UTF-8. U+FFFD is one UTF-16 unit too, so positions stay valid."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def looks_binary(text: str) -> bool:
    """A NUL in the first 8 KiB is what git uses to call a file binary."""
    return "\x00" in text[:8192]


def _utf16_column_to_index(line: str, character: int) -> int:
    """UTF-16 column -> code point index in `line`, clamped to the line; a column pointing into
    the middle of a surrogate pair rounds down to before the pair."""
    if character <= 0:
        return 0
    units = 0
    for index, ch in enumerate(line):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > character:
            return index
        units += width
    return len(line)


@dataclass
class Document:
    uri: str
    language_id: str
    version: int
    text: str
    _line_starts: list[int] | None = field(default=None, repr=False)

    @property
    def line_starts(self) -> list[int]:
        """Offsets where each line begins (after \\n). Computed once per text version."""
        if self._line_starts is None:
            starts = [0]
            find = self.text.find
            pos = find("\n")
            while pos != -1:
                starts.append(pos + 1)
                pos = find("\n", pos + 1)
            self._line_starts = starts
        return self._line_starts

    @property
    def num_lines(self) -> int:
        return len(self.line_starts)

    def line_text(self, line: int) -> str:
        """Line `line` without its line break."""
        starts = self.line_starts
        start = starts[line]
        if line + 1 < len(starts):
            end = starts[line + 1] - 1
            if end > start and self.text[end - 1] == "\r":  # CRLF
                end -= 1
        else:
            end = len(self.text)
        return self.text[start:end]

    def offset_at(self, line: int, character: int) -> int:
        """LSP (line, UTF-16 character) -> code point offset into `text`, clamped to the document."""
        if line < 0:
            return 0
        if line >= self.num_lines:
            return len(self.text)
        return self.line_starts[line] + _utf16_column_to_index(self.line_text(line), character)

    def position_at(self, offset: int) -> tuple[int, int]:
        """Code point offset -> LSP (line, UTF-16 character)."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.line_starts, offset) - 1
        start = self.line_starts[line]
        return line, utf16_len(self.text[start:offset])

    def apply_change(self, text: str, range_: tuple[int, int, int, int] | None) -> None:
        """Replace (start_line, start_char, end_line, end_char) with `text`; None replaces all."""
        text = sanitize(text)
        if range_ is None:
            self.text = text
        else:
            start = self.offset_at(range_[0], range_[1])
            end = max(start, self.offset_at(range_[2], range_[3]))
            self.text = self.text[:start] + text + self.text[end:]
        self._line_starts = None


class Documents:
    """The documents the editor has opened, by URI."""

    def __init__(self) -> None:
        self._by_uri: dict[str, Document] = {}

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        doc = Document(uri=uri, language_id=language_id, version=version, text=sanitize(text))
        self._by_uri[uri] = doc
        return doc

    def change(
        self, uri: str, version: int, changes: list[tuple[str, tuple[int, int, int, int] | None]]
    ) -> Document | None:
        doc = self._by_uri.get(uri)
        if doc is None:
            return None  # a change for a document never opened: nothing to apply it to
        for text, range_ in changes:
            doc.apply_change(text, range_)
        doc.version = version
        return doc

    def close(self, uri: str) -> None:
        self._by_uri.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._by_uri.get(uri)

    def __iter__(self):
        return iter(list(self._by_uri.values()))

    def __len__(self) -> int:
        return len(self._by_uri)
