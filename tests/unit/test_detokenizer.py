"""Incremental detokenization never splits a UTF-8 character, and stop strings hold back what could
still become one."""

from __future__ import annotations

import pytest

from engine.detokenizer import IncrementalDetokenizer
from engine.stop_strings import StopStringMatcher
from tests.tiny_models import make_tokenizer_json

TEXT = "naïve café → 😀 数据 done\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(make_tokenizer_json(tmp_path_factory.mktemp("tok"))))


def test_streamed_text_never_splits_a_character_and_adds_up(tokenizer):
    ids = tokenizer.encode(TEXT).ids
    # The byte-level vocabulary has no merges for these characters: each multi-byte one spans tokens.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer.decode, context_token_ids=tokenizer.encode("x = ").ids)
    deltas = [detok.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # some tokens ended mid-character and released nothing
    assert "".join(deltas) + detok.flush() == TEXT
    assert "😀" in deltas  # released whole, once its last byte arrived


def test_flush_releases_an_incomplete_character_at_the_end(tokenizer):
    ids = tokenizer.encode("é").ids
    assert len(ids) == 2
    detok = IncrementalDetokenizer(tokenizer.decode)
    assert detok.push(ids[0]) == ""
    assert detok.flush() == "\ufffd"


def test_decode_window_stays_small(tokenizer):
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return tokenizer.decode(ids)

    detok = IncrementalDetokenizer(decode)
    for i in tokenizer.encode("def f(x):\n    return x\n" * 20).ids:
        detok.push(i)
    assert max(calls) <= 8  # O(window) per token, not O(output length)


@pytest.mark.parametrize(
    ("pieces", "stop", "released", "stopped"),
    [
        (
            ["hello wor", "ld"],
            ["world"],
            [
                "hello ",
                "",
            ],
            True,
        ),
        (["abc", "def"], ["xyz"], ["abc", "def"], False),
        (["ab", "c"], ["bcd"], ["a", ""], False),  # "bc" could still become "bcd"
        (["a\n\n", "def"], ["\n\n"], ["a"], True),
        (["x", "yz"], ["y", "xyz"], ["", ""], True),  # the earliest stop string wins
    ],
)
def test_stop_strings(pieces, stop, released, stopped):
    m = StopStringMatcher(stop)
    out = []
    for p in pieces:
        if m.stopped:
            break
        out.append(m.push(p))
    assert out == released and m.stopped == stopped


def test_held_back_text_is_released_when_the_output_ends_otherwise():
    m = StopStringMatcher(["bcd"])
    assert m.push("abc") == "a"
    assert m.flush() == "bc"
