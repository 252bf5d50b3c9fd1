"""Code actions: what is offered (cheaply) and how a model answer becomes an edit. Pure.

Offering an action costs nothing: `offered_actions` only looks at the selection and diagnostics.
The model runs in codeAction/resolve: `action_messages` builds the request, `extract_code` pulls
the code out of the answer. Actions whose result is code come back as a WorkspaceEdit; prose
(explain) is shown as a document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exlsp.chat import SYSTEM_PROMPT


@dataclass(frozen=True)
class ActionKind:
    name: str  # stable id carried in CodeAction.data
    title: str
    lsp_kind: str  # lsprotocol CodeActionKind value
    result: str  # "replace" (code replacing the range), "new_file" (code), "prose"
    instruction: str


EXPLAIN = ActionKind(
    "explain", "exlsp: Explain this code", "refactor", "prose", "Explain what this code does."
)
DOCSTRING = ActionKind(
    "docstring",
    "exlsp: Add docstring",
    "refactor.rewrite",
    "replace",
    "Add a docstring (or doc comment) to this code without changing anything else. "
    "Reply with the complete updated code in one fenced code block.",
)
TESTS = ActionKind(
    "tests",
    "exlsp: Write tests",
    "refactor",
    "new_file",
    "Write unit tests for this code. Reply with the test file in one fenced code block.",
)
REFACTOR = ActionKind(
    "refactor",
    "exlsp: Refactor selection",
    "refactor.rewrite",
    "replace",
    "Refactor this code for clarity without changing its behaviour. "
    "Reply with the complete refactored code in one fenced code block.",
)
FIX = ActionKind(
    "fix",
    "exlsp: Fix",
    "quickfix",
    "replace",
    "Fix this problem reported by a tool: {diagnostic}. "
    "Reply with the complete corrected code in one fenced code block.",
)
KINDS = {k.name: k for k in (EXPLAIN, DOCSTRING, TESTS, REFACTOR, FIX)}


def offered_actions(has_selection: bool, diagnostics: list[str]) -> list[tuple[ActionKind, str | None]]:
    """(kind, diagnostic message) pairs to offer; a fix per diagnostic, selection actions if any."""
    offered: list[tuple[ActionKind, str | None]] = [(FIX, message) for message in diagnostics]
    if has_selection:
        offered += [(EXPLAIN, None), (DOCSTRING, None), (TESTS, None), (REFACTOR, None)]
    return offered


def action_title(kind: ActionKind, diagnostic: str | None) -> str:
    if kind is FIX and diagnostic:
        first = diagnostic.splitlines()[0]
        return f"exlsp: Fix “{first[:60]}”"
    return kind.title


def action_messages(
    kind: ActionKind, code: str, *, language_id: str, path: str, diagnostic: str | None = None
) -> list[dict[str, str]]:
    instruction = kind.instruction.format(diagnostic=diagnostic or "")
    user = f"{instruction}\n\nCode from {path}:\n```{language_id}\n{code}\n```"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:\n```|\Z)", re.DOTALL)


def extract_code(answer: str) -> str:
    """The first fenced code block of the answer, or the whole answer without fences."""
    match = _FENCE.search(answer)
    if match:
        return match.group(1)
    return answer.strip("\n")


def keep_indentation(original: str, code: str) -> str:
    """Models often return the selection dedented; put its first-line indentation back."""
    indent = original[: len(original) - len(original.lstrip(" \t"))]
    if not indent or code.startswith(indent):
        return code
    return "\n".join(indent + line if line.strip() else line for line in code.split("\n"))


def name_for_tests_file(stem: str, suffix: str) -> str:
    return f"test_{stem}{suffix}" if suffix == ".py" else f"{stem}.test{suffix}"
