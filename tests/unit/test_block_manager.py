"""Block manager: paged allocation, prefix cache hits, LRU eviction from chain tails, and the pool
staying whole through any sequence of operations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.prefix_hash import ROOT_HASH, PrefixKeys, block_hash, chain_hashes, token_bytes

BS = 4


def test_block_hash_is_stable_across_processes_and_chained():
    # A fixed digest: Python's salted hash() would change between runs.
    assert block_hash(ROOT_HASH, [1, 2, 3, 4]).hex() == "7077f7c78cbaa9547bb8ede0e304f4f3"
    assert block_hash(ROOT_HASH, (1, 2, 3, 4)) == block_hash(ROOT_HASH, [1, 2, 3, 4])
    first = block_hash(ROOT_HASH, [1, 2, 3, 4])
    assert chain_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == [first, block_hash(first, [5, 6, 7, 8])]
    # The same block after a different prefix gets a different key.
    assert block_hash(block_hash(ROOT_HASH, [0, 0, 0, 0]), [5, 6, 7, 8]) != block_hash(first, [5, 6, 7, 8])


def test_prefix_keys_of_a_prompt_like_the_last_equal_the_chain_from_scratch():
    """The remembered prompt only saves work: any prompt's keys equal chain_hashes from the root,
    after a prompt sharing all, some, none or more of its blocks."""
    import random

    rng = random.Random(3)
    keys = PrefixKeys(BS)
    base = [rng.randrange(1 << 40) for _ in range(64)]
    prompts = [
        base,
        base,
        base[:30],
        base[:9] + [7] * 40,
        base + [1, 2, 3, 4, 5],
        [5] * 3,
        base[:1],
        base[:44],
    ]
    prompts += [[rng.randrange(4) for _ in range(rng.randrange(0, 70))] for _ in range(40)]
    for tokens in prompts:
        n = len(tokens) // BS
        assert keys.keys(token_bytes(tokens[: n * BS]), n) == chain_hashes(tokens, BS)
        assert chain_hashes(tokens, BS) == [
            block_hash(
                ROOT_HASH if i == 0 else chain_hashes(tokens, BS)[i - 1], tokens[i * BS : (i + 1) * BS]
            )
            for i in range(n)
        ]


def test_block_size_limits():
    with pytest.raises(ValueError, match=r"block_size must be in \[1, 32\], got 64"):
        BlockManager(8, block_size=64)
    with pytest.raises(ValueError, match="at least one block"):
        BlockManager(0, block_size=16)


def test_slot_mapping_follows_the_block_table():
    bm = BlockManager(8, BS)
    assert bm.allocate_prefix("a", list(range(6))) == 0
    assert bm.ensure_slots("a", 6)
    table = bm.block_table("a")
    assert table == [0, 1]
    assert bm.slot_mapping("a", 0, 6) == [0, 1, 2, 3, 4, 5]
    bm.allocate_prefix("b", [9])
    bm.ensure_slots("b", 1)
    assert bm.block_table("b") == [2]
    assert bm.slot_mapping("b", 0, 1) == [8]
    assert bm.ensure_slots("a", 9)  # third block for positions 8..
    assert bm.slot_mapping("a", 7, 9) == [7, 12]


def test_ensure_slots_is_all_or_nothing():
    bm = BlockManager(3, BS)
    bm.allocate_prefix("a", [1] * 5)
    assert not bm.ensure_slots("a", 13)  # needs 4 blocks, the pool has 3
    assert bm.block_table("a") == [] and bm.num_free_blocks == 3
    assert bm.ensure_slots("a", 12)
    assert bm.num_free_blocks == 0


def _run(bm: BlockManager, seq_id, tokens: list[int]) -> int:
    """Prefill a sequence fully and register its blocks; returns its cached-token count."""
    cached = bm.allocate_prefix(seq_id, tokens)
    assert bm.ensure_slots(seq_id, len(tokens))
    bm.commit(seq_id, tokens, len(tokens))
    return cached


def test_prefix_hit_reuses_full_blocks_but_never_the_last_prompt_token():
    bm = BlockManager(16, BS)
    prompt = list(range(100, 110))  # 10 tokens: blocks [0..3] [4..7] full, [8, 9] partial
    assert _run(bm, "a", prompt) == 0
    a_table = list(bm.block_table("a"))
    bm.free("a")
    # Same 10 tokens: 2 full blocks cached; (10 - 1) // 4 * 4 = 8 tokens reused.
    assert _run(bm, "b", prompt) == 8
    assert bm.block_table("b")[:2] == a_table[:2]
    bm.free("b")
    # A prompt of exactly 8 tokens reuses only the first block: its last token must be computed.
    assert bm.allocate_prefix("c", prompt[:8]) == 4
    bm.free("c")
    # Diverging inside block 2 reuses block 1 only.
    assert bm.allocate_prefix("d", prompt[:4] + [0] + prompt[5:]) == 4
    bm.free("d")
    bm.check_invariants()


def test_a_lookup_after_an_eviction_does_not_reuse_the_last_lookups_blocks():
    """allocate_prefix remembers the blocks its last lookup found, for the next prompt that repeats
    that prefix; once a block has been evicted (and refilled by another sequence) since, those
    blocks are looked up again, not reused."""
    bm = BlockManager(6, BS)
    prompt = list(range(100, 113))  # 13 tokens: 3 full blocks and one token
    assert _run(bm, "a", prompt) == 0
    bm.free("a")  # its 3 full blocks stay cached
    bm.allocate_prefix("r", [7, 7, 7, 7])
    assert bm.ensure_slots("r", 4)
    assert _run(bm, "b", prompt) == 12  # the lookup the block manager remembers
    hits = bm.block_table("b")[:3]
    bm.free("b")
    # r grows over the whole pool: the cached blocks are evicted and refilled with r's tokens.
    assert bm.ensure_slots("r", 24)
    bm.commit("r", [7] * 24, 24)
    assert set(hits) <= set(bm.block_table("r"))
    assert bm.allocate_prefix("c", prompt) == 0
    assert not set(bm.block_table("c")) & set(hits)
    bm.check_invariants()


def test_shared_blocks_are_reference_counted():
    bm = BlockManager(16, BS)
    prompt = list(range(9))
    _run(bm, "a", prompt)
    assert _run(bm, "b", prompt) == 8
    shared = bm.block_table("a")[:2]
    assert bm.block_table("b")[:2] == shared
    assert [bm.ref_count(b) for b in shared] == [2, 2]
    bm.check_invariants()
    bm.free("a")  # a's registered blocks are parked: b and the park hold them
    assert [bm.ref_count(b) for b in shared] == [2, 2]
    bm.free("b")  # a's park goes back to the pool, b's blocks are parked
    assert [bm.ref_count(b) for b in shared] == [1, 1]
    assert bm.num_free_blocks == 16  # parked blocks that no sequence holds count as free
    bm.check_invariants()


def test_the_next_keystroke_takes_over_the_freed_prompts_parked_blocks():
    """A freed sequence's registered blocks are parked; a prompt that repeats its prefix takes the
    blocks it shares with it, and the rest of the park goes back to the pool."""
    bm = BlockManager(16, BS)
    prompt = list(range(100, 113))  # 13 tokens: 3 full blocks and one token
    _run(bm, "a", prompt)
    a_table = list(bm.block_table("a"))
    bm.free("a")
    assert [bm.ref_count(b) for b in a_table] == [1, 1, 1, 0]  # the park holds the full blocks
    keystroke = prompt[:9] + [7, 7, 7, 7, 7]  # diverges inside a's third block
    assert bm.allocate_prefix("b", keystroke) == 8
    assert bm.block_table("b") == a_table[:2]
    assert [bm.ref_count(b) for b in a_table] == [1, 1, 0, 0]  # b holds two, a's third is cached free
    assert bm.num_free_blocks == 14 and bm.num_cached_blocks == 3
    assert bm.allocate_prefix("c", prompt[:12] + [1]) == 12  # a's third block still hits
    bm.check_invariants()


def test_a_park_is_not_taken_over_after_another_prompts_lookup():
    """The park passes to a prompt by how much it shares with the last lookup's prompt, so only
    while the parked sequence's lookup is the last one; otherwise the prompt is looked up."""
    bm = BlockManager(16, BS)
    prompt = list(range(100, 113))
    _run(bm, "a", prompt)
    a_table = list(bm.block_table("a"))
    other = prompt[:4] + [7] * 9  # shares a's first block only
    bm.allocate_prefix("z", other)  # looked up, never computed
    bm.free("a")  # parked, but the last lookup is z's
    # b repeats z's prompt whole: were the park measured against z's prompt, b would take a's blocks
    # 1 and 2 as well.
    assert bm.allocate_prefix("b", other) == 4
    assert bm.block_table("b") == a_table[:1]
    assert [bm.ref_count(b) for b in a_table[:3]] == [3, 1, 1]  # z, b and the park; the park
    bm.check_invariants()


def test_an_allocation_that_needs_the_parked_blocks_releases_the_park():
    bm = BlockManager(4, BS)
    _run(bm, "a", [1] * 12 + [2])  # 3 full blocks (parked when freed) and one token
    bm.free("a")
    assert bm.num_free_blocks == 4
    bm.allocate_prefix("x", [9])
    assert bm.ensure_slots("x", 16)  # the whole pool: the park gives its blocks, which are evicted
    assert bm.num_cached_blocks == 0 and bm.num_free_blocks == 0
    bm.check_invariants()


def test_generated_tokens_are_cached_so_prompt_plus_output_hits_everything():
    bm = BlockManager(16, BS)
    prompt = [7, 7, 7, 1, 2]
    bm.allocate_prefix("a", prompt)
    tokens = list(prompt)
    bm.ensure_slots("a", len(tokens))
    bm.commit("a", tokens, len(tokens))
    for t in [30, 31, 32, 33, 34]:  # decode: each step computes the previously sampled token
        tokens.append(t)
        bm.ensure_slots("a", len(tokens))
        bm.commit("a", tokens, len(tokens))
    assert len(tokens) == 10
    bm.free("a")
    # Prompt = earlier prompt + its output (+ a new token): 2 full blocks, 8 tokens.
    assert bm.allocate_prefix("b", tokens + [99]) == 8


def test_concurrent_duplicate_prefill_swaps_to_the_registered_block():
    bm = BlockManager(16, BS)
    prompt = list(range(12))
    bm.allocate_prefix("a", prompt)
    bm.allocate_prefix("b", prompt)  # nothing registered yet: both compute everything
    bm.ensure_slots("a", 12)
    bm.ensure_slots("b", 12)
    bm.commit("a", prompt, 12)
    bm.commit("b", prompt, 12)
    # b's copies went back to the pool; both tables now share a's blocks.
    assert bm.block_table("b") == bm.block_table("a")
    assert bm.num_free_blocks == 16 - 3
    bm.check_invariants()
    bm.free("a")
    bm.free("b")
    assert _run(bm, "c", prompt + [12]) == 12


def test_eviction_is_lru_and_takes_chain_tails_before_roots():
    bm = BlockManager(4, BS)
    _run(bm, "old", [1] * 8)  # blocks 0 (root), 1 (tail)
    bm.free("old")
    _run(bm, "new", [2] * 8)  # blocks 2, 3
    bm.free("new")
    assert bm.num_cached_blocks == 4 and bm.num_free_blocks == 4
    # One fresh block evicts the least recently used chain's tail, not its root.
    bm.allocate_prefix("x", [3])
    bm.ensure_slots("x", 1)
    assert bm.block_table("x") == [1]
    assert bm.allocate_prefix("probe-old", [1] * 8 + [0]) == 4  # the root still hits
    bm.free("probe-old")  # touching "old"'s root makes "new" the least recently used chain
    assert bm.ensure_slots("x", 5)
    assert bm.block_table("x") == [1, 3]  # new's tail
    bm.check_invariants()


def test_a_parent_with_a_cached_child_is_never_evicted_first():
    bm = BlockManager(3, BS)
    _run(bm, "a", [5] * 8)  # root 0, child 1
    bm.free("a")
    # Re-use only the root and release it: the root is now the most recently used block.
    assert bm.allocate_prefix("b", [5] * 4 + [6]) == 4
    bm.free("b")
    bm.allocate_prefix("x", [9])
    assert bm.ensure_slots("x", 8)  # takes the free block 2, then evicts the tail, never the root
    assert bm.block_table("x") == [2, 1]
    assert bm.allocate_prefix("y", [5] * 8) == 4  # the root still serves
    bm.free("y")
    assert bm.ensure_slots("x", 12)  # only now, with no child left, the root goes
    assert bm.block_table("x") == [2, 1, 0]
    bm.check_invariants()


class _Model:
    """Reference model of what a sequence holds, to drive random operations."""

    def __init__(self):
        self.tokens: dict[int, list[int]] = {}
        self.computed: dict[int, int] = {}


@settings(max_examples=150, deadline=None)
@given(
    num_blocks=st.integers(1, 12),
    block_size=st.sampled_from([1, 2, 4]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["start", "grow", "free"]),
            st.integers(0, 5),  # sequence id
            st.lists(st.integers(0, 2), min_size=1, max_size=9),  # tokens (small alphabet: many hits)
        ),
        max_size=40,
    ),
)
def test_random_operations_keep_the_pool_consistent_and_whole(num_blocks, block_size, ops):
    bm = BlockManager(num_blocks, block_size)
    m = _Model()
    for op, sid, toks in ops:
        if op == "start" and sid not in m.tokens:
            cached = bm.allocate_prefix(sid, toks)
            assert cached % block_size == 0 and cached <= len(toks) - 1
            # A hit is served only for blocks whose tokens match exactly.
            for i, block in enumerate(bm.block_table(sid)):
                assert bm._tokens[block] == token_bytes(toks[i * block_size : (i + 1) * block_size])
            if bm.ensure_slots(sid, len(toks)):
                bm.commit(sid, toks, len(toks))
                m.tokens[sid], m.computed[sid] = list(toks), len(toks)
            else:
                bm.free(sid)  # the scheduler's rollback when an admission does not fit
        elif op == "grow" and sid in m.tokens:
            new = m.tokens[sid] + toks
            if bm.ensure_slots(sid, len(new)):
                bm.commit(sid, new, len(new))
                m.tokens[sid], m.computed[sid] = new, len(new)
        elif op == "free" and sid in m.tokens:
            bm.free(sid)
            del m.tokens[sid], m.computed[sid]
        bm.check_invariants()
        assert bm.num_free_blocks == num_blocks - len({b for s in m.tokens for b in bm.block_table(s)})
    for sid in list(m.tokens):
        bm.free(sid)
    bm.check_invariants()
    assert bm.num_free_blocks == num_blocks
    # Nothing leaked: one sequence can take the whole pool (the last freed blocks from the park).
    bm.allocate_prefix("all", [3])
    assert bm.ensure_slots("all", num_blocks * block_size)
    assert sorted(bm.block_table("all")) == list(range(num_blocks))
    assert all(bm.ref_count(b) == 1 for b in range(num_blocks))
    bm.check_invariants()
