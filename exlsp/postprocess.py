"""Turn raw model output into the suggestion an editor shows. Pure string logic.

Rules, applied in this order (each has golden files under tests/unit/golden/<rule>/):
    repetition    cut runaway repetition (a block of lines, or a short unit at the end, repeating)
    single_line   the cursor is mid-line (text after it), or only closers follow it and the first
                  line closes them: keep only the first line
    block_end     stop where the text leaves the indented block the cursor is in, or at a markdown
                  fence
    suffix        drop trailing text that repeats what already follows the cursor
    brackets      never duplicate closing brackets the editor already has after the cursor
    empty         drop suggestions that are empty or whitespace only
"""

from __future__ import annotations

from dataclasses import dataclass

OPENERS = "([{"
CLOSERS = ")]}"
_PAIR = dict(zip(CLOSERS, OPENERS, strict=True))
MAX_REPEAT_UNIT_CHARS = 16
MIN_REPEATS = 3


@dataclass(frozen=True)
class Cursor:
    line_before: str  # text of the cursor's line before the cursor
    line_after: str  # text of the cursor's line after the cursor
    following: tuple[str, ...] = ()  # the next few lines after the cursor's line

    @property
    def mid_line(self) -> bool:
        # Closing brackets and punctuation after the cursor do not make it mid-line: `foo(|)`
        # still wants a full argument list.
        return bool(self.line_after.strip().lstrip(CLOSERS + "\"'`;:,."))


def indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def cut_repetition(text: str) -> str:
    lines = text.split("\n")
    # Compare without indentation: the first line starts at the cursor, the rest at column 0.
    keys = [line.strip() for line in lines]
    # A block of 1-4 lines repeated MIN_REPEATS times in a row: keep its first occurrence.
    for start in range(len(lines)):
        for size in range(1, 5):
            block = keys[start : start + size]
            if len(block) < size or not "".join(block):
                continue
            repeats = 1
            while keys[start + repeats * size : start + (repeats + 1) * size] == block:
                repeats += 1
            if repeats >= MIN_REPEATS:
                return "\n".join(lines[: start + size])
    # A short unit repeating at the very end ("))))))", "a, a, a, a, "): keep one copy.
    for unit in range(1, MAX_REPEAT_UNIT_CHARS + 1):
        needed = max(2 * MIN_REPEATS, 12 // unit)
        if len(text) < unit * needed:
            continue
        tail = text[-unit:]
        count = 1
        while text[-(count + 1) * unit : len(text) - count * unit] == tail:
            count += 1
        if count >= needed and tail.strip():
            return text[: len(text) - (count - 1) * unit]
    return text


def _closes_outer_bracket(text: str) -> bool:
    """Whether `text` has a closer whose opener is not inside `text`."""
    depth = 0
    for ch in text:
        if ch in OPENERS:
            depth += 1
        elif ch in CLOSERS:
            depth -= 1
            if depth < 0:
                return True
    return False


def single_line(text: str, cursor: Cursor) -> str:
    first = text.split("\n", 1)[0]
    if cursor.mid_line:
        return first
    # Only closers follow the cursor (`join("a", |))`): a first line that closes them is the whole
    # suggestion; whatever the model wrote after it is beyond the brackets the editor already has.
    if cursor.line_after.strip() and _closes_outer_bracket(first):
        return first
    return text


def block_end(text: str, cursor: Cursor) -> str:
    """Cut before the first later line that dedents out of the cursor's block."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    # The indentation of the cursor's line as it will be once the first line is inserted.
    current = cursor.line_before + lines[0]
    base = indent_width(current) if current.strip() else indent_width(cursor.line_before)
    opens_block = current.rstrip().endswith((":", "{", "(", "[")) or current.rstrip().endswith("=>")
    for index in range(1, len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        if line.lstrip().startswith("```"):  # a chat-tuned model closing a markdown answer
            return "\n".join(lines[:index]).rstrip()
        width = indent_width(line)
        if width < base:
            return "\n".join(lines[:index]).rstrip()
        if opens_block and width <= base:
            # A closer at the opener's indentation ends the block and belongs to it.
            if line.strip()[0] in CLOSERS:
                return "\n".join(lines[: index + 1])
            return "\n".join(lines[:index]).rstrip()
    return text


def drop_suffix_repeat(text: str, cursor: Cursor) -> str:
    """Drop text that the document already has after the cursor."""
    after = cursor.line_after
    lines = text.split("\n")
    # A whole line of the completion equal to the next non-blank line after the cursor: the model
    # has run into the code that follows; cut from there.
    next_line = next((line.strip() for line in cursor.following if line.strip()), None)
    if next_line is not None and not after.strip():
        for index in range(1, len(lines)):
            if lines[index].strip() == next_line:
                return "\n".join(lines[:index]).rstrip()
    # The completion ends with the start of the text after the cursor on this line.
    # Pure closers are left to balance_closers, which knows whether they are matched inside the
    # completion; a short overlap ("a" before "a = 1") is more likely chance than repetition.
    stripped_after = after.rstrip()
    for k in range(min(len(text), len(stripped_after)), 0, -1):
        overlap = stripped_after[:k]
        significant = overlap.strip(CLOSERS + " \t")
        if text.endswith(overlap) and len(overlap.replace(" ", "")) >= 2 and significant:
            return text[: len(text) - k]
    return text


def balance_closers(text: str, cursor: Cursor) -> str:
    """Remove closers at the end of the completion that close brackets opened before the cursor
    when the same closers already follow the cursor."""
    pending = cursor.line_after.lstrip()
    leading = ""
    for ch in pending:
        if ch in CLOSERS:
            leading += ch
        elif ch.isspace():
            continue
        else:
            break
    if not leading:
        return text
    # Find closers in the completion with no opener inside the completion.
    stack: list[str] = []
    unmatched: list[int] = []
    for index, ch in enumerate(text):
        if ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack and stack[-1] == _PAIR[ch]:
                stack.pop()
            else:
                unmatched.append(index)
    body = text.rstrip()
    # How many closers at the very end of the completion are unmatched (contiguous run).
    run = 0
    while run < len(unmatched) and unmatched[-1 - run] == len(body) - 1 - run:
        run += 1
    for k in range(run, 0, -1):
        if leading.startswith(body[len(body) - k :]):
            return body[: len(body) - k]
    return text


def postprocess(raw: str, cursor: Cursor) -> str | None:
    """Raw model output -> suggestion text, or None when there is nothing worth showing."""
    text = raw.replace("\r\n", "\n")
    text = cut_repetition(text)
    text = single_line(text, cursor)
    text = block_end(text, cursor)
    text = drop_suffix_repeat(text, cursor)
    text = balance_closers(text, cursor)
    # Trailing blank lines never help; trailing spaces on the last line only matter mid-line.
    text = text.rstrip("\n") if cursor.mid_line else text.rstrip()
    if not text.strip():
        return None
    return text
