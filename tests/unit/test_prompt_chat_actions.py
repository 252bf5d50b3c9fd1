"""Chat and code-action prompts, argument parsing, and turning answers into code. Pure."""

from __future__ import annotations

import pytest

from exlsp.actions import (
    DOCSTRING,
    EXPLAIN,
    FIX,
    REFACTOR,
    TESTS,
    action_messages,
    action_title,
    extract_code,
    keep_indentation,
    name_for_tests_file,
    offered_actions,
)
from exlsp.chat import ChatRequest, chat_messages, parse_chat_request, plain_transcript, prompt_text


def test_offered_actions_depend_only_on_selection_and_diagnostics():
    assert offered_actions(False, []) == []
    assert offered_actions(True, []) == [(EXPLAIN, None), (DOCSTRING, None), (TESTS, None), (REFACTOR, None)]
    assert offered_actions(False, ["E1", "E2"]) == [(FIX, "E1"), (FIX, "E2")]
    assert action_title(FIX, "undefined name 'x'\nmore") == "exlsp: Fix “undefined name 'x'”"


def test_action_messages_carry_the_code_and_the_diagnostic():
    system, user = action_messages(
        FIX, "x = y\n", language_id="python", path="a.py", diagnostic="y undefined"
    )
    assert system["role"] == "system"
    assert user["content"] == (
        "Fix this problem reported by a tool: y undefined. Reply with the complete corrected code in one "
        "fenced code block.\n\nCode from a.py:\n```python\nx = y\n\n```"
    )


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("Here:\n```python\ndef f():\n    pass\n```\nDone.", "def f():\n    pass"),
        ("```\nx = 1\n```", "x = 1"),
        ("```py\nunterminated = True\n", "unterminated = True\n"),
        ("\nno fences at all\n", "no fences at all"),
    ],
)
def test_extract_code(answer, code):
    assert extract_code(answer) == code


def test_keep_indentation_restores_a_dedented_method():
    original = "    def f(self):\n        return 1\n"
    assert keep_indentation(original, "def f(self):\n    return 2") == "    def f(self):\n        return 2"
    assert keep_indentation(original, "    already") == "    already"


def test_name_for_tests_files():
    assert name_for_tests_file("calc", ".py") == "test_calc.py"
    assert name_for_tests_file("calc", ".ts") == "calc.test.ts"


def test_parse_chat_request():
    assert parse_chat_request(["hi"]) == ChatRequest("hi")
    rng = {"start": {"line": 1, "character": 2}, "end": {"line": 3, "character": 0}}
    assert parse_chat_request([{"message": "why", "uri": "file:///a.py", "range": rng}]) == ChatRequest(
        "why", "file:///a.py", (1, 2, 3, 0)
    )
    with pytest.raises(ValueError, match="needs a non-empty 'message'"):
        parse_chat_request([{"message": "  "}])
    with pytest.raises(ValueError, match="'range' must be an LSP range"):
        parse_chat_request([{"message": "x", "range": {"start": 1}}])
    with pytest.raises(ValueError, match="takes one argument"):
        parse_chat_request([1, 2])


def test_chat_prompt_text_uses_the_template_or_a_transcript():
    messages = chat_messages("explain", path="a.py", language_id="python", selection="x = 1")
    assert messages[1]["content"] == "explain\n\nCode from a.py:\n```python\nx = 1\n```"

    class NoTemplate:
        def apply_chat_template(self, messages):
            raise ValueError("chat template: nope")

    assert prompt_text(NoTemplate(), messages) == plain_transcript(messages)
    assert plain_transcript([{"role": "user", "content": "hi"}]) == "User: hi\nAssistant:"
