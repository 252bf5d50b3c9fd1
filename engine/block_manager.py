"""The paged KV cache's bookkeeping: one pool of fixed-size blocks, a block table per sequence, and
the prefix cache. Pure Python: lists in, lists out (the model runner turns them into tensors).

A sequence's tokens live in its block table: token at position p sits in slot
    block_table[p // block_size] * block_size + p % block_size.

Prefix cache. A block whose `block_size` tokens have all been computed is registered under a key
chained over every token before it (engine/prefix_hash.py). A later sequence whose prompt starts
with the same tokens takes those blocks instead of recomputing them; a hit is checked against the
stored token ids, so a hash collision can never serve wrong KV. Only full blocks are shared and a full
block is never written again, so sharing needs no copy-on-write.

Every block is in exactly one of three states:
    in use       ref_count > 0, held by ref_count holders: sequences' tables, and the park (below)
    cached free  ref_count == 0 but registered: reusable by a hit until evicted
    free         ref_count == 0, unregistered
Eviction takes the least recently released cached block among those with no registered child, so a
chain is always evicted from its tail: a registered block's parent is registered too. This holds
because a sequence that holds a registered block also holds its parent (its table is a chain of
registered blocks followed by unregistered ones), so a parent is never free while a child is in use.

When a sequence fills a block that another sequence registered meanwhile (two requests with the same
prefix prefilled at once), it swaps its copy for the registered block, so the chain stays unbroken
and the next request reuses both sequences' work.

The park. A freed sequence's registered blocks are not released at once: the block manager holds
them (one reference each, as a sequence would) until the next free, until an allocation needs them,
or until the first lookup after the sequence's own: that one takes over, references as they are, the
blocks its prompt shares with the parked one, and releases the rest. An editor's next request is the
last one with a keystroke more, so it repeats the freed prompt's prefix, and ~500 blocks of an
8k-token prefix are not released one by one and acquired again (~0.2 ms of Python on a keystroke's
path to its first token). Parked blocks count as free: ensure_slots releases the park before it
would fall short.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence

from engine.prefix_hash import ROOT_HASH, BlockHash, PrefixKeys, chained_key, token_bytes

MAX_BLOCK_SIZE_TOKENS = 32  # reuse granularity (DESIGN.md): a larger block shares too little of a prefix

SeqId = Hashable


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_cache: bool = True) -> None:
        if not 1 <= block_size <= MAX_BLOCK_SIZE_TOKENS:
            raise ValueError(f"block_size must be in [1, {MAX_BLOCK_SIZE_TOKENS}], got {block_size}")
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got num_blocks={num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache

        self._ref_count = [0] * num_blocks
        self._key: list[BlockHash | None] = [None] * num_blocks  # registered key, None if unregistered
        self._tokens: list[bytes | None] = [None] * num_blocks  # token_bytes, for verifying hits
        self._parent = [-1] * num_blocks  # registered parent block, -1 for a chain root
        self._num_children = [0] * num_blocks  # registered blocks whose parent this is
        self._cached: dict[BlockHash, int] = {}  # key -> registered block
        self._prefix_keys = PrefixKeys(block_size)  # lookups hash only what the last prompt did not
        # The previous lookup's hits (its prompt's leading blocks, as _prefix_keys remembers that
        # prompt), valid while no block has been unregistered since (_evictions unchanged): see
        # allocate_prefix.
        self._evictions = 0
        self._last_hits: list[int] = []
        self._last_hits_evictions = 0
        self._last_lookup: SeqId | None = None  # the sequence of the last lookup (_prefix_keys' prompt)
        # The park (module docstring): the registered blocks of the last freed sequence, held.
        self._parked: list[int] = []
        self._parked_seq: SeqId | None = None

        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached free blocks, oldest first

        self._tables: dict[SeqId, list[int]] = {}
        self._num_registered: dict[SeqId, int] = {}  # leading blocks of the table that are registered

        self.num_hit_queries_tokens = 0  # prompt tokens looked up in the prefix cache
        self.num_hit_tokens = 0  # of those, tokens served from it

    # ---- queries ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can take now: free ones, cached free ones (evicted on demand), and
        parked ones that no sequence holds (released on demand)."""
        ref_count = self._ref_count
        return len(self._free) + len(self._evictable) + sum(ref_count[b] == 1 for b in self._parked)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def has(self, seq_id: SeqId) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: SeqId) -> list[int]:
        return self._tables[seq_id]

    def ref_count(self, block_id: int) -> int:
        return self._ref_count[block_id]

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_new_blocks_needed(self, seq_id: SeqId, num_tokens: int) -> int:
        """Blocks to allocate so that the sequence's table holds `num_tokens` slots."""
        have = len(self._tables.get(seq_id, ()))
        return max(0, self.num_blocks_for(num_tokens) - have)

    def slot_mapping(self, seq_id: SeqId, start: int, end: int) -> list[int]:
        """Flat cache slots of positions [start, end) of the sequence."""
        table, bs = self._tables[seq_id], self.block_size
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    # ---- lifecycle -------------------------------------------------------------------------------

    def allocate_prefix(self, seq_id: SeqId, token_ids: Sequence[int]) -> int:
        """Start a table for a new sequence, taking every cached block its prompt starts with.

        The last prompt token is never served from the cache (its logits are needed), so at most
        (len(token_ids) - 1) // block_size blocks are reused. Returns the number of cached tokens.
        """
        assert seq_id not in self._tables, seq_id
        table: list[int] = []
        self._tables[seq_id] = table
        self._num_registered[seq_id] = 0
        if not self.enable_prefix_cache:
            return 0
        bs = self.block_size
        max_hit_blocks = max(0, len(token_ids) - 1) // bs
        data = token_bytes(token_ids[: max_hit_blocks * bs])
        step = self._prefix_keys.step
        keys = self._prefix_keys.keys(data, max_hit_blocks)
        # _acquire inlined: a keystroke's 8k-token prefix is ~500 hits, each on the path to its first token.
        cached, stored, ref_count, evictable = self._cached, self._tokens, self._ref_count, self._evictable
        # The blocks that the previous lookup found for the bytes this prompt shares with it are
        # hits again without a lookup and a compare each, as long as no block was unregistered since:
        # a registered block keeps its key and tokens until it is evicted. (The next keystroke's
        # prompt repeats the last one's prefix; ~0.3 ms of an 8k prefix's lookup on the build machine.)
        known = 0  # blocks this prompt shares with the last one, found by the last lookup
        if self._parked and self._parked_seq == self._last_lookup:
            # That prompt's sequence is parked: its blocks pass to this one, references and all.
            # (Every block of a parked table holds its prompt's tokens, and a held block is never
            # evicted.) The rest of the park goes back to the pool, where the loop below may find it.
            parked, self._parked, self._parked_seq = self._parked, [], None
            known = min(self._prefix_keys.shared, len(parked))
            table.extend(parked[:known])
            self._release_all(parked[known:])
        elif self._last_hits_evictions == self._evictions:
            known = min(self._prefix_keys.shared, len(self._last_hits))
            for block in self._last_hits[:known]:
                if ref_count[block] == 0:
                    del evictable[block]
                ref_count[block] += 1
            table.extend(self._last_hits[:known])
        offset = known * step
        for key in keys[known:]:
            block = cached.get(key)
            if block is None or stored[block] != data[offset : offset + step]:
                break
            if ref_count[block] == 0:
                del evictable[block]
            ref_count[block] += 1
            table.append(block)
            offset += step
        self._num_registered[seq_id] = len(table)
        self._last_hits, self._last_hits_evictions = list(table), self._evictions
        self._last_lookup = seq_id
        num_cached_tokens = len(table) * bs
        self.num_hit_queries_tokens += len(token_ids)
        self.num_hit_tokens += num_cached_tokens
        return num_cached_tokens

    def ensure_slots(self, seq_id: SeqId, num_tokens: int) -> bool:
        """Grow the sequence's table to hold `num_tokens` slots. All or nothing: False (and no change)
        when the pool has too few blocks."""
        need = self.num_new_blocks_needed(seq_id, num_tokens)
        if need > len(self._free) + len(self._evictable) and self._parked:
            self._release_all(self._parked)  # the park gives way before an allocation falls short
            self._parked, self._parked_seq = [], None
        if need > len(self._free) + len(self._evictable):
            return False
        table = self._tables[seq_id]
        for _ in range(need):
            block = self._take_free_block()
            self._ref_count[block] = 1
            table.append(block)
        return True

    def commit(self, seq_id: SeqId, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Register the blocks that the first `num_computed_tokens` of `token_ids` fill completely.

        Call after the forward pass that wrote their KV. Output tokens are registered like prompt
        tokens, so a prompt equal to an earlier prompt plus its output reuses all of it.
        """
        if not self.enable_prefix_cache:
            return
        table, bs = self._tables[seq_id], self.block_size
        num_full = min(num_computed_tokens // bs, len(table))
        i = self._num_registered[seq_id]
        parent = self._key[table[i - 1]] if i > 0 else ROOT_HASH
        while i < num_full:
            tokens = token_bytes(token_ids[i * bs : (i + 1) * bs])
            key = chained_key(parent, tokens)
            existing = self._cached.get(key)
            if existing is None:
                self._register(table[i], key, tokens, table[i - 1] if i > 0 else -1)
            elif self._tokens[existing] != tokens:
                break  # a hash collision: leave this block (and the rest of the chain) unshared
            elif existing != table[i]:
                # Another sequence registered the same tokens first: use its block, drop our copy.
                self._acquire(existing)
                self._release_all([table[i]])
                table[i] = existing
            parent = key
            i += 1
        self._num_registered[seq_id] = i

    def free(self, seq_id: SeqId) -> None:
        """Return every block of the sequence: its unregistered tail to the pool now, its registered
        blocks to the park (module docstring), whose previous blocks go back to the pool."""
        table = self._tables.pop(seq_id)
        registered = self._num_registered.pop(seq_id)
        self._release_all(self._parked)
        self._release_all(table[registered:])
        self._parked, self._parked_seq = table[:registered], seq_id

    # ---- internals -------------------------------------------------------------------------------

    def _release_all(self, blocks: list[int]) -> None:
        """Release each block once, the last first: among blocks released together the tail is then
        the least recently used, and is evicted first."""
        # _release inlined (a long prompt's table is ~500 blocks).
        ref_count, keys, evictable, free = self._ref_count, self._key, self._evictable, self._free
        for block in reversed(blocks):
            assert ref_count[block] > 0, block
            ref_count[block] -= 1
            if ref_count[block] == 0:
                if keys[block] is not None:
                    evictable[block] = None  # most recently used end
                else:
                    free.append(block)

    def _acquire(self, block: int) -> None:
        if self._ref_count[block] == 0:
            del self._evictable[block]
        self._ref_count[block] += 1

    def _register(self, block: int, key: BlockHash, tokens: bytes, parent: int) -> None:
        assert self._key[block] is None, block
        self._cached[key] = block
        self._key[block] = key
        self._tokens[block] = tokens
        self._parent[block] = parent
        if parent >= 0:
            self._num_children[parent] += 1

    def _unregister(self, block: int) -> None:
        self._evictions += 1  # allocate_prefix's memo of the last hits is stale now
        key = self._key[block]
        assert key is not None and self._num_children[block] == 0, block
        del self._cached[key]
        parent = self._parent[block]
        if parent >= 0:
            self._num_children[parent] -= 1
        self._key[block] = None
        self._tokens[block] = None
        self._parent[block] = -1

    def _take_free_block(self) -> int:
        if self._free:
            return self._free.popleft()
        # Evict the least recently released chain tail. One always exists: every registered child of
        # a cached free block is itself cached free (see the module docstring).
        for block in self._evictable:
            if self._num_children[block] == 0:
                del self._evictable[block]
                self._unregister(block)
                return block
        raise AssertionError("no free block although num_free_blocks > 0")

    # ---- checking --------------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Assert the pool's internal consistency (for tests; O(num_blocks))."""
        holders = [0] * self.num_blocks
        for table in [*self._tables.values(), self._parked]:
            for block in table:
                holders[block] += 1
        assert all(self._key[b] is not None for b in self._parked), "an unregistered block is parked"
        free, evictable = set(self._free), set(self._evictable)
        assert len(free) == len(self._free) and not free & evictable
        for block in range(self.num_blocks):
            rc = self._ref_count[block]
            assert rc == holders[block] >= 0, (block, rc, holders[block])
            registered = self._key[block] is not None
            if rc == 0:
                assert (block in evictable) == registered and (block in free) != registered, block
            else:
                assert block not in free and block not in evictable, block
            if holders[block] > 1:
                assert registered, (
                    f"block {block} shared by {holders[block]} tables but not a cached full block"
                )
            if registered:
                assert self._cached[self._key[block]] == block
                parent = self._parent[block]
                assert parent == -1 or self._key[parent] is not None, (
                    "registered block with unregistered parent"
                )
        for block in self._cached.values():
            assert self._key[block] is not None
        children = [0] * self.num_blocks
        for block in self._cached.values():
            if self._parent[block] >= 0:
                children[self._parent[block]] += 1
        assert children == self._num_children
        for seq_id, table in self._tables.items():
            n = self._num_registered[seq_id]
            assert all(self._key[b] is not None for b in table[:n]), seq_id
            for i in range(1, n):
                assert self._parent[table[i]] == table[i - 1], (seq_id, i)
