"""What this CPU is: its vendor and feature flags, read once from /proc/cpuinfo.

The choice of oneDNN or MKL for fp32 Linear layers reads the vendor and flags here, and the
native bf16 and int8 dot-product checks fall back on these flags where torch has no probe for
them, so all of them see the same processor and a test can pass in a fake cpuinfo file.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The first processor's `vendor_id` (empty where absent) and `flags`."""

    vendor: str
    flags: frozenset[str]


def parse(cpuinfo: Path = CPUINFO) -> CpuInfo | None:
    """The vendor and flags of the first processor listed in `cpuinfo`; None if it cannot be read."""
    vendor, flags = "", frozenset[str]()
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if vendor and flags:
                    break
    except OSError:
        return None
    return CpuInfo(vendor, flags)


@lru_cache(maxsize=1)
def this_cpu() -> CpuInfo | None:
    """This machine's CPU (parsed once a process)."""
    return parse()
