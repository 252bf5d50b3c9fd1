"""Stop strings over streamed text: cut the output before the first stop string, and hold back any
tail that could still become one, so a streaming client never sees text that is later taken back.

Pure string logic; the text comes from the incremental detokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopStringMatcher:
    def __init__(self, stop: Iterable[str]) -> None:
        self.stop = tuple(s for s in stop if s)
        self._pending = ""  # text received but not released: it ends with a possible stop-string start
        self.stopped = False

    def push(self, text: str) -> str:
        """Feed new text; return the text that is now safe to release. After a stop string is found,
        `stopped` is True and everything from the stop string on is dropped."""
        assert not self.stopped, "push after a stop string was found"
        if not self.stop:
            return text
        pending = self._pending + text
        # A stop string can only begin inside `pending`: released text never ended with a prefix of one.
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = self._longest_stop_prefix_suffix(pending)
        self._pending = pending[len(pending) - hold :]
        return pending[: len(pending) - hold]

    def flush(self) -> str:
        """The held-back text, released because the output ended for another reason."""
        text, self._pending = self._pending, ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
