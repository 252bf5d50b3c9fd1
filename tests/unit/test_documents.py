"""Documents and LSP positions: UTF-16 columns, clamping, incremental changes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exlsp.documents import Document, Documents, looks_binary, sanitize, utf16_len


def doc(text: str) -> Document:
    return Document(uri="u", language_id="python", version=1, text=text)


def test_utf16_columns_count_surrogate_pairs_as_two():
    d = doc('x = "😋"\ny')
    assert utf16_len("😋") == 2
    assert d.offset_at(0, 5) == 5  # before the emoji
    assert d.offset_at(0, 7) == 6  # after it (two UTF-16 units, one code point)
    assert d.offset_at(0, 6) == 5  # inside the pair rounds down
    assert d.position_at(6) == (0, 7)
    assert d.offset_at(1, 1) == len(d.text)


def test_positions_past_the_end_are_clamped():
    d = doc("ab\ncd\n")
    assert d.offset_at(0, 99) == 2  # end of line 0, before its newline
    assert d.offset_at(99, 0) == len(d.text)
    assert d.offset_at(-1, 0) == 0
    assert d.line_text(1) == "cd" and d.num_lines == 3


def test_crlf_lines():
    d = doc("ab\r\ncd")
    assert d.line_text(0) == "ab" and d.offset_at(0, 10) == 2


def test_incremental_changes():
    docs = Documents()
    docs.open("u", "python", 1, "hello\nworld\n")
    d = docs.change("u", 2, [("HELLO", (0, 0, 0, 5)), ("!", (1, 5, 1, 5))])
    assert d.text == "HELLO\nworld!\n" and d.version == 2
    d = docs.change("u", 3, [("new", None)])
    assert d.text == "new"
    assert docs.change("never-opened", 1, [("x", None)]) is None


def test_lone_surrogates_and_binary():
    assert sanitize("a\ud800b") == "a\ufffdb"
    assert looks_binary("PK\x03\x04\x00\x00") and not looks_binary("plain text")


@given(st.text(alphabet=st.sampled_from(["a", "é", "😋", "\n", " ", "\r", "中"]), max_size=60), st.data())
def test_positions_and_offsets_round_trip(text, data):
    d = doc(text)
    offset = data.draw(st.integers(0, len(text)))
    if text[offset - 1 : offset + 1] == "\r\n":
        offset -= 1  # inside a CRLF is not a position an editor can name
    assert d.offset_at(*d.position_at(offset)) == offset


@given(st.text(max_size=40), st.text(max_size=10), st.integers(0, 40), st.integers(0, 40))
def test_an_insert_at_any_position_lands_where_offset_at_says(text, insert, line, character):
    docs = Documents()
    d = docs.open("u", "python", 1, text)
    at = d.offset_at(line, character)
    docs.change("u", 2, [(insert, (line, character, line, character))])
    assert d.text == sanitize(text[:at] + insert + text[at:])
