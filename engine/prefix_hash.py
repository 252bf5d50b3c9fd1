"""Stable content hashes for prefix-cache blocks, chained over every token before them.

A full block's key is hash(parent_key, block_token_ids): two blocks get the same key only when all
tokens from the start of the sequence up to the end of the block are equal (barring a collision,
which the block manager rules out by comparing the stored token ids on every hit).

Python's `hash()` is salted per process, so keys here come from blake2b over the token ids as
little-endian int64: the same tokens give the same key in every process and on every run.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes  # 16-byte digest

ROOT_HASH: BlockHash = b"\x00" * 16  # the parent of a sequence's first block


def block_hash(parent: BlockHash, token_ids: Sequence[int]) -> BlockHash:
    """Key of a block holding `token_ids` whose preceding blocks chain to `parent`."""
    tokens = array("q", token_ids)
    if tokens.itemsize != 8:  # pragma: no cover - array('q') is 8 bytes on every supported platform
        raise RuntimeError("array('q') is not 64-bit here")
    if array("q", [1]).tobytes()[0] != 1:  # pragma: no cover - keep keys identical on big-endian hosts
        tokens.byteswap()
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(tokens.tobytes())
    return digest.digest()


def chain_hashes(token_ids: Sequence[int], block_size: int, num_blocks: int | None = None) -> list[BlockHash]:
    """Keys of the first `num_blocks` full blocks of `token_ids` (all full blocks when None)."""
    num_full = len(token_ids) // block_size
    if num_blocks is None or num_blocks > num_full:
        num_blocks = num_full
    keys: list[BlockHash] = []
    parent = ROOT_HASH
    for i in range(num_blocks):
        parent = block_hash(parent, token_ids[i * block_size : (i + 1) * block_size])
        keys.append(parent)
    return keys
