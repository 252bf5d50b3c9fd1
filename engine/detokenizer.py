"""Incremental detokenization: turn a growing list of token ids into text deltas that never split a
character.

Byte-level BPE tokens may end in the middle of a multi-byte UTF-8 character, and decoding such a
prefix yields U+FFFD. SentencePiece-style decoders also render a token differently at the start of
a string (a leading space is dropped). So each new token is decoded together with a small window of
the tokens before it: the text of `ids[prefix_offset:]` minus the text of `ids[prefix_offset:read_offset]`
is the delta, released only once it no longer ends in U+FFFD. Cost per token is O(window), not
O(length).

Pure logic: the decode function (ids -> str) is injected; the engine passes its tokenizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
NUM_CONTEXT_TOKENS = 4  # prompt tokens decoded in front of the first output token


class IncrementalDetokenizer:
    def __init__(self, decode: Callable[[list[int]], str], context_token_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = list(context_token_ids[len(context_token_ids) - NUM_CONTEXT_TOKENS :])
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(self._ids)  # tokens before this are already released as text

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became complete (often '' mid-character)."""
        self._ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        """Release whatever is left, even an incomplete character (the output has ended)."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if not final and (full_text.endswith(REPLACEMENT_CHAR) or len(full_text) <= len(prefix_text)):
            return ""  # an incomplete character (or nothing visible yet): wait for more tokens
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]
