"""Incremental detokenization with stop strings: token ids in, text deltas out, such that the
concatenated deltas always equal the text of the whole completion. Pure Python."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """Feed token ids one at a time; `push` returns the text that is now safe to send.

    Text is held back while it ends in a possibly incomplete UTF-8 sequence (U+FFFD) or in a
    prefix of a stop string; a stop string ends the stream and is not part of the text.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self._ids: list[int] = []
        self._sent = 0
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        self.text = self._decode(self._ids)
        for s in self._stop:
            at = self.text.find(s)
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
        if self.stopped:
            return self._emit(len(self.text))
        # Only a trailing run of U+FFFD can still change (an incomplete UTF-8 sequence that the
        # next bytes complete); an invalid byte followed by more text stays U+FFFD for good.
        safe = len(self.text.rstrip(REPLACEMENT))
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        return self._emit(safe)

    def finish(self) -> str:
        """Everything not sent yet (call once generation has ended)."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self._sent:
            return ""
        delta = self.text[self._sent : upto]
        self._sent = upto
        return delta

    @property
    def token_count(self) -> int:
        return len(self._ids)
