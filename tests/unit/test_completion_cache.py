"""Type-through: typing the characters of a shown suggestion answers from the cache."""

from __future__ import annotations

from exlsp.completion_cache import CompletionCache


def test_typing_through_the_suggestion():
    cache = CompletionCache()
    cache.put("u", "def f():\n    ", "\n", "return 42")
    assert cache.get("u", "def f():\n    ", "\n") == "return 42"  # same place, same answer
    assert cache.get("u", "def f():\n    ret", "\n") == "urn 42"
    assert cache.get("u", "def f():\n    return 4", "\n") == "2"
    assert (cache.num_hits, cache.num_misses) == (3, 0)


def test_misses():
    cache = CompletionCache()
    cache.put("u", "x = ", "", "foo()")
    assert cache.get("u", "x = foo()", "") is None  # typed all of it: nothing left to show
    assert cache.get("u", "x = b", "") is None  # typed something else
    assert cache.get("u", "x = f", "changed") is None  # the text after the cursor changed
    assert cache.get("other", "x = f", "") is None
    cache.forget("u")
    assert cache.get("u", "x = f", "") is None
    assert cache.num_misses == 5


def test_bounded_by_documents():
    cache = CompletionCache(max_documents=2)
    for uri in "abc":
        cache.put(uri, "", "", "x")
    assert cache.get("a", "", "") is None and cache.get("c", "", "") == "x"
