"""An incremental JSON checker for `response_format: {"type": "json_object"}`: it answers whether
a text is a prefix of some JSON object, character by character, so the sampler can refuse every
token that would make the output something other than JSON. Pure Python.

The state is a stack of containers plus the position inside the current scalar; `feed` returns a
new state (or None when the text cannot continue a JSON object), so candidates are tried without
touching the accepted state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

WHITESPACE = " \t\n\r"
LITERALS = ("true", "false", "null")
NUMBER_CHARS = "0123456789+-.eE"
# U+FFFD is what a byte-level tokenizer decodes half of a multi-byte character to: accepted
# where any character is (inside a string), so non-ASCII text can still be written.
PARTIAL = "\ufffd"


@dataclass(frozen=True)
class JsonPrefix:
    """Where a JSON object being written is: `stack` holds "{" / "[" per open container; `expect`
    what may come next: value, key, colon, comma (`,` or a closer), in-string, escape,
    unicode escape digits left (`hex`), literal (`literal` the rest to write) or number."""

    stack: tuple[str, ...] = ()
    expect: str = "start"
    literal: str = ""
    number: str = ""
    hex: int = 0
    key: bool = False  # the string being written is an object key
    done: bool = False

    def feed(self, text: str) -> JsonPrefix | None:
        state: JsonPrefix | None = self
        for ch in text:
            assert state is not None
            state = state._char(ch)
            if state is None:
                return None
        return state

    # -- one character --------------------------------------------------------------------
    def _char(self, ch: str) -> JsonPrefix | None:
        e = self.expect
        if e == "string":
            if ch == '"':
                return self._after_string()
            if ch == "\\":
                return replace(self, expect="escape")
            return self if (ch >= " " or ch == PARTIAL) else None
        if e == "escape":
            if ch == "u":
                return replace(self, expect="hex", hex=4)
            return replace(self, expect="string") if ch in '"\\/bfnrt' else None
        if e == "hex":
            if ch not in "0123456789abcdefABCDEF":
                return None
            left = self.hex - 1
            return replace(self, expect="string" if left == 0 else "hex", hex=left)
        if e == "literal":
            if not self.literal.startswith(ch):
                return None
            rest = self.literal[1:]
            return replace(self, literal=rest) if rest else self._after_value(replace(self))
        if e == "number":
            if ch in NUMBER_CHARS and _number_prefix(self.number + ch):
                return replace(self, number=self.number + ch)
            if not _number_complete(self.number):
                return None
            return self._after_value(replace(self, number=""))._char(ch)
        if ch in WHITESPACE:
            return self
        if self.done:
            return None
        if e == "start":
            return replace(self, stack=("{",), expect="key_or_close") if ch == "{" else None
        if e == "key_or_close":
            if ch == "}":
                return self._close()
            return replace(self, expect="string", key=True) if ch == '"' else None
        if e == "key":
            return replace(self, expect="string", key=True) if ch == '"' else None
        if e == "colon":
            return replace(self, expect="value") if ch == ":" else None
        if e == "comma":
            if ch == ",":
                return replace(self, expect="key" if self.stack[-1] == "{" else "value")
            if ch == ("}" if self.stack[-1] == "{" else "]"):
                return self._close()
            return None
        if e in ("value", "value_or_close"):
            if e == "value_or_close" and ch == "]":
                return self._close()
            return self._value(ch)
        return None

    def _value(self, ch: str) -> JsonPrefix | None:
        if ch == "{":
            return replace(self, stack=(*self.stack, "{"), expect="key_or_close")
        if ch == "[":
            return replace(self, stack=(*self.stack, "["), expect="value_or_close")
        if ch == '"':
            return replace(self, expect="string", key=False)
        for word in LITERALS:
            if word[0] == ch:
                return replace(self, expect="literal", literal=word[1:])
        if ch == "-" or ch.isdigit():
            return replace(self, expect="number", number=ch)
        return None

    def _after_string(self) -> JsonPrefix:
        if self.key:
            return replace(self, expect="colon", key=False)
        return self._after_value(self)

    def _after_value(self, state: JsonPrefix) -> JsonPrefix:
        return replace(state, expect="comma", literal="")

    def _close(self) -> JsonPrefix:
        stack = self.stack[:-1]
        if not stack:
            return replace(self, stack=(), expect="end", done=True)
        return replace(self, stack=stack, expect="comma")

    @property
    def complete(self) -> bool:
        """A whole JSON object has been written (only whitespace may follow)."""
        return self.done


def _number_prefix(text: str) -> bool:
    """Whether `text` can begin a JSON number."""
    i, n = 0, len(text)
    if i < n and text[i] == "-":
        i += 1
    if i == n:
        return True
    if text[i] == "0":
        i += 1
    elif text[i].isdigit():
        while i < n and text[i].isdigit():
            i += 1
    else:
        return False
    if i < n and text[i] == ".":
        i += 1
        if i == n:
            return True
        if not text[i].isdigit():
            return False
        while i < n and text[i].isdigit():
            i += 1
    if i < n and text[i] in "eE":
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        if i == n:
            return True
        if not text[i].isdigit():
            return False
        while i < n and text[i].isdigit():
            i += 1
    return i == n


def _number_complete(text: str) -> bool:
    return _number_prefix(text) and text[-1:].isdigit()
