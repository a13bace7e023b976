"""Prompts kept for reuse across chats: the K/V a slot is about to overwrite, copied into a pool of blocks.

A slot keeps the K/V of its last sequence, so the next turn of the same chat prefills only the new message. When
another chat takes the slot, that K/V would be lost; the store copies it out first, in blocks of `BLOCK` tokens,
and copies it back into whichever slot a later prompt that starts the same way lands in: a question about a long
document, asked again in a new chat or after other chats, prefills only what follows the shared part. Entries are
evicted least recently used. The pool is allocated once, with the cache; its size comes from the memory the
loader's plan leaves spare (`fit.py`), never from the context.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from gptq_chat.engine.network import KVCache

log = logging.getLogger(__name__)

BLOCK = 128  # tokens per block: entries hold whole blocks, so a shorter tail is prefilled again
MIN_GAIN = 16  # a stored prefix must save at least this many prompt tokens over the slot's own to be copied back


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, compared in C
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]: halve the gap
    while high - low > 64:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return next(i for i in range(low, high) if a[i] != b[i])


@dataclass
class Entry:
    """One kept sequence: its tokens (whole blocks) and the pool blocks holding their K/V, in order."""

    tokens: list[int]
    blocks: list[int]


class PrefixStore:
    """A least-recently-used pool of K/V blocks beside every layer's cache (on that layer's device)."""

    def __init__(self, caches: list[KVCache], tokens: int) -> None:
        count = tokens // BLOCK
        self.caches = caches
        self.pools = [[pool_like(part, count) for part in cache.parts()] for cache in caches]
        self.free = list(range(count))
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.next_key = 0

    @property
    def capacity(self) -> int:
        """Tokens the pool holds when full."""
        return len(self.pools[0][0]) * BLOCK if self.pools else 0

    @property
    def held(self) -> int:
        """Tokens held now."""
        return sum(len(entry.tokens) for entry in self.entries.values())

    def clear(self) -> None:
        self.entries.clear()
        self.free = list(range(self.capacity // BLOCK))

    def keep(self, slot: int, tokens: list[int]) -> None:
        """Copy the K/V of `tokens` (whole blocks of them) out of the slot's cache row, unless already kept."""
        length = min(len(tokens), self.capacity) // BLOCK * BLOCK
        if length == 0:
            return
        tokens = tokens[:length]
        for key, entry in list(self.entries.items()):
            shared = common_prefix(entry.tokens, tokens)
            if shared == length:  # held already, as it is or inside a longer entry
                self.entries.move_to_end(key)
                return
            if shared == len(entry.tokens):  # an earlier turn of the same chat: this one supersedes it
                self.drop(key)
        count = length // BLOCK
        while len(self.free) < count:
            self.drop(next(iter(self.entries)))
        blocks, self.free = self.free[:count], self.free[count:]
        for cache, pools in zip(self.caches, self.pools, strict=True):
            index = torch.tensor(blocks, device=cache.k.device)
            for pool, rows in zip(pools, cache.parts(), strict=True):
                pool.index_copy_(0, index, in_blocks(rows[slot], 0, count).transpose(0, 1))
        self.entries[self.next_key] = Entry(tokens, blocks)
        self.next_key += 1
        log.debug("Kept %d prompt tokens for reuse (%d of %d held)", length, self.held, self.capacity)

    def restore(self, slot: int, prompt: list[int], held: int) -> int:
        """Copy into the slot's row the kept K/V that shares the most leading tokens with `prompt`, where it shares
        at least `MIN_GAIN` more than the `held` tokens the row already has; how many tokens the row now holds."""
        best, found = held, None
        for key, entry in self.entries.items():
            shared = common_prefix(entry.tokens, prompt)
            if shared > best:
                best, found = shared, key
        if found is None or best < held + MIN_GAIN:
            return held
        self.entries.move_to_end(found)
        blocks = self.entries[found].blocks
        first, end = held // BLOCK, math.ceil(best / BLOCK)  # the row's own blocks before `held` are the same
        for cache, pools in zip(self.caches, self.pools, strict=True):
            index = torch.tensor(blocks[first:end], device=cache.k.device)
            for pool, rows in zip(pools, cache.parts(), strict=True):
                in_blocks(rows[slot], first, end).copy_(pool.index_select(0, index).transpose(0, 1))
        return best

    def drop(self, key: int) -> None:
        self.free += self.entries.pop(key).blocks


def pool_like(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`count` blocks shaped like a cache row's: [count, kv_heads, BLOCK, head_dim]."""
    _, heads, _, width = rows.shape
    return torch.zeros(count, heads, BLOCK, width, dtype=rows.dtype, device=rows.device)


def in_blocks(row: torch.Tensor, first: int, end: int) -> torch.Tensor:
    """A view of one slot's cache row [kv_heads, length, head_dim] as blocks first..end-1: [kv_heads, n, BLOCK, d]."""
    return row[:, first * BLOCK : end * BLOCK].unflatten(1, (end - first, BLOCK))
