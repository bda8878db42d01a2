"""bench.host: the share of CPU time the hypervisor stole during a benchmark."""

from __future__ import annotations

from pathlib import Path

from bench import host


def stat(tmp_path: Path, name: str, user: int, idle: int, steal: int) -> Path:
    path = tmp_path / name
    path.write_text(f"cpu  {user} 0 10 {idle} 0 0 0 {steal} 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\n")
    return path


def test_the_share_stolen_between_two_readings(tmp_path: Path) -> None:
    before = host.read(stat(tmp_path, "a", user=100, idle=100, steal=0))
    after = host.read(stat(tmp_path, "b", user=160, idle=120, steal=20))
    assert before == host.CpuTimes(total=210, steal=0)
    share = host.stolen(before, after)
    assert share is not None and abs(share - 0.2) < 1e-9
    assert "20%" in host.steal_note(share) and "not a verdict" in host.steal_note(share)
    assert "not a verdict" not in host.steal_note(0.01)


def test_no_reading_says_so_instead_of_a_number(tmp_path: Path) -> None:
    assert host.read(tmp_path / "missing") is None
    (tmp_path / "old").write_text("cpu  1 2 3 4\n")  # a kernel without the steal field
    assert host.read(tmp_path / "old") is None
    assert host.stolen(None, host.CpuTimes(1, 0)) is None
    same = host.CpuTimes(10, 1)
    assert host.stolen(same, same) is None
    assert "not available" in host.steal_note(None)


def test_this_machine_reads() -> None:
    now = host.read()
    assert now is None or (now.total > 0 and 0 <= now.steal <= now.total)
