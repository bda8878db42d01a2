"""The process's C heap (glibc): keep the pages of a forward's activations between calls.

A forward pass allocates its activations afresh for every layer, tens of MB each (MiniLM's
FFN output for 32 pairs: 26 MB; bge-reranker-v2-m3's for 5 pairs: 30 MB), and frees them at once.
With glibc's defaults a model thread gets its own arena, whose freed pages go back to the system
as soon as they are free, so the next call takes them again one page fault at a time: 30-60k
faults per MiniLM forward, 170-240k per v2-m3 one, 6-10 % of a forward's time on 2 cores.

`tune_heap` sets, once, before the model threads start: one arena for every thread (a thread's
own arena trims itself at once), freed memory kept up to `retain_mb` at the top of the heap
(the activations of the next call reuse it), and a fixed threshold of 32 MiB under which blocks
come from the heap instead of their own mapping (glibc's largest). Memory the server keeps
this way is at most `retain_mb` above what it uses; `trim_heap` still gives back all of it
after a load. Not glibc (musl, macOS): nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging

log = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
MAX_RETAIN_MB = 2047  # mallopt takes an int


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune_heap(retain_mb: int) -> bool:
    """Keep freed heap memory up to `retain_mb` for the next forward (0: glibc's defaults).
    Whether the heap was tuned."""
    if retain_mb <= 0:
        return False
    libc = _libc()
    if libc is None:
        log.info("not glibc: the C heap keeps its defaults")
        return False
    retain = min(retain_mb, MAX_RETAIN_MB) << 20
    done = all(libc.mallopt(p, v) == 1 for p, v in
               ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, retain)))  # fmt: skip
    log.info("C heap: one arena, up to %d MiB of freed activations kept for the next call%s",
             retain >> 20, "" if done else " (glibc refused a setting)")  # fmt: skip
    return done


def trim_heap() -> None:
    """Give the C heap's freed pages back to the system (glibc keeps them otherwise): loading
    leaves tens of MB of them behind, which would count at the load's peak."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
