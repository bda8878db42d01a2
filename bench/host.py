"""How much of the CPU the hypervisor took from a benchmark: steal time from /proc/stat.

A virtual machine's cores are shared with other guests; time the host gives them is counted as
`steal` on this guest. A few per cent is normal; at 20 % and more the same system's rounds spread
widely and a ratio between systems says more about the host than about them. The benchmarks
print the share stolen during their run under their table, so a reader can tell a verdict from
noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAT = Path("/proc/stat")
NOISY = 0.05  # above this share stolen, say that the ratios are not a verdict


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate `cpu` line's busy-or-idle ticks and the ticks stolen by the host."""

    total: int
    steal: int


def read(stat: Path = STAT) -> CpuTimes | None:
    """The machine's CPU ticks so far; None where /proc/stat is missing or has no steal field."""
    try:
        with stat.open() as lines:
            first = lines.readline().split()
    except OSError:
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    ticks = [int(v) for v in first[1:9]]
    return CpuTimes(total=sum(ticks), steal=ticks[7])


def stolen(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of CPU time stolen between two readings (0-1); None without both readings."""
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


def steal_note(share: float | None) -> str:
    """One line for under a benchmark's table."""
    if share is None:
        return "Host steal time: not available on this machine."
    line = f"Host steal time during the run: {share:.0%} of the CPU (/proc/stat)."
    if share > NOISY:
        line += " The host took a large share: rounds disagree and the ratios are not a verdict."
    return line
