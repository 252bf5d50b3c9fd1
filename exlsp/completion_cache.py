"""Type-through cache: typing the characters of the suggestion on screen answers from memory.

When the editor asks again after the user typed "ret" over a shown suggestion "return x", the
answer is "urn x" and the model is not involved. Keyed by document; pure, no IO.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_DOCUMENTS = 64


@dataclass(frozen=True)
class Shown:
    before: str  # document text before the cursor when the suggestion was made
    after: str  # document text after the cursor then
    text: str  # the suggestion


class CompletionCache:
    def __init__(self, max_documents: int = MAX_DOCUMENTS):
        self._by_uri: OrderedDict[str, Shown] = OrderedDict()
        self._max_documents = max_documents
        self.num_hits = 0
        self.num_misses = 0

    def put(self, uri: str, before: str, after: str, text: str) -> None:
        self._by_uri[uri] = Shown(before, after, text)
        self._by_uri.move_to_end(uri)
        while len(self._by_uri) > self._max_documents:
            self._by_uri.popitem(last=False)

    def get(self, uri: str, before: str, after: str) -> str | None:
        """The rest of the shown suggestion if the user typed a prefix of it (or nothing)."""
        shown = self._by_uri.get(uri)
        hit = None
        if shown is not None and after == shown.after and before.startswith(shown.before):
            typed = before[len(shown.before) :]
            if shown.text.startswith(typed) and len(typed) < len(shown.text):
                hit = shown.text[len(typed) :]
        if hit is None:
            self.num_misses += 1
        else:
            self.num_hits += 1
        return hit

    def forget(self, uri: str) -> None:
        self._by_uri.pop(uri, None)
