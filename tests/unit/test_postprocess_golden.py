"""Every post-processing rule has golden cases: document + cursor + raw model output -> suggestion."""

from __future__ import annotations

import pytest

from exlsp.handlers.completion import cursor_context
from exlsp.postprocess import postprocess
from tests.unit.golden_format import CURSOR, all_cases

CASES = all_cases()
RULES = {"repetition", "single_line", "block_end", "suffix", "brackets", "empty"}


def test_every_rule_has_golden_cases():
    assert {case.rule for case in CASES} == RULES
    for rule in RULES:
        assert sum(case.rule == rule for case in CASES) >= 2, rule


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule}/{c.name}" for c in CASES])
def test_golden(case):
    offset = case.document.index(CURSOR)
    text = case.document.replace(CURSOR, "")
    assert postprocess(case.raw, cursor_context(text, offset)) == case.expected, case.description
