"""Chat prompts: messages with optional file/selection context -> prompt text. Pure.

`exlsp.chat` takes {message, uri?, range?}; the server resolves uri/range to text and calls
`chat_messages`. Models with a chat template get it applied by their tokenizer; others get a plain
"User:/Assistant:" transcript.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SYSTEM_PROMPT = (
    "You are a concise coding assistant inside the user's editor. Answer in Markdown; put code in "
    "fenced code blocks."
)


@dataclass(frozen=True)
class ChatRequest:
    message: str
    uri: str | None = None
    # LSP range as (start_line, start_character, end_line, end_character), UTF-16 characters
    range: tuple[int, int, int, int] | None = None


def parse_chat_request(args: Any) -> ChatRequest:
    """workspace/executeCommand arguments -> ChatRequest; ValueError with a message when malformed."""
    if isinstance(args, list | tuple):
        if len(args) != 1:
            raise ValueError("exlsp.chat takes one argument: {message, uri?, range?}")
        args = args[0]
    if isinstance(args, str):
        return ChatRequest(message=args)
    if not isinstance(args, Mapping):
        raise ValueError("exlsp.chat takes one argument: {message, uri?, range?}")
    message = args.get("message")
    if not isinstance(message, str) or not message.strip():
        raise ValueError("exlsp.chat needs a non-empty 'message'")
    uri = args.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise ValueError("'uri' must be a string")
    range_ = args.get("range")
    parsed = None
    if range_ is not None:
        try:
            start, end = range_["start"], range_["end"]
            parsed = (int(start["line"]), int(start["character"]), int(end["line"]), int(end["character"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("'range' must be an LSP range {start: {line, character}, end: ...}") from exc
    return ChatRequest(message=message, uri=uri, range=parsed)


def chat_messages(
    message: str, *, path: str | None = None, language_id: str = "", selection: str | None = None
) -> list[dict[str, str]]:
    content = message
    if selection:
        where = f" from {path}" if path else ""
        content = f"{message}\n\nCode{where}:\n```{language_id}\n{selection}\n```"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def plain_transcript(messages: list[dict[str, str]]) -> str:
    """For models without a chat template."""
    parts = []
    for m in messages:
        role = {"system": "System", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"])
        parts.append(f"{role}: {m['content']}\n")
    return "".join(parts) + "Assistant:"


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The tokenizer's chat template (engine.tokenizer falls back to ChatML), else a transcript."""
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is not None:
        try:
            return apply(messages)
        except ValueError:
            pass
    return plain_transcript(messages)
