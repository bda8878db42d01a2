"""A bounded LRU cache of document scores, so repeated (query, document) pairs skip the model.

Keys are 16-byte BLAKE2 digests of (model, options, query, document), so an entry's size does
not depend on the texts and the memory bound is a fixed number of entries. An entry (the key,
a slotted value and the dict's share) was measured at about 260 bytes with tracemalloc
(tests/core/test_cache.py holds a full cache to its bound); ENTRY_BYTES leaves room for the
allocator. The cache is per model version and per instance, and may be lost at any time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

ENTRY_BYTES = 320


@dataclass(frozen=True, slots=True)
class CachedScore:
    raw: float
    tokens: int


class ScoreCache:
    """LRU of document scores bounded by memory (`max_bytes`); thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.capacity = max(0, max_bytes // ENTRY_BYTES)
        self._entries: OrderedDict[bytes, CachedScore] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(namespace: str, query: str, document: str) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for part in (namespace, query, document):
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.digest()

    def get(self, key: bytes) -> CachedScore | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: bytes, value: CachedScore) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
