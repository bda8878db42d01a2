"""The one cpuinfo reader: vendor and flags of the first processor, and the flag fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat_api.core.models import cpu, runtime
from compat_api.core.models.cpu import CpuInfo

TWO_PROCESSORS = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
    "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2\n"
)


def test_the_first_processor_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(TWO_PROCESSORS)
    assert cpu.parse(path) == CpuInfo("AuthenticAMD", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))


def test_an_unreadable_file_is_none_and_a_file_without_fields_is_empty(tmp_path: Path) -> None:
    assert cpu.parse(tmp_path / "missing") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    assert cpu.parse(tmp_path / "cpuinfo") == CpuInfo("", frozenset())


def test_this_machine_is_parsed_once() -> None:
    assert cpu.this_cpu() is cpu.this_cpu()


def test_without_torch_probes_the_flags_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe name torch does not have stands for an older torch: the cpuinfo flags answer,
    as whole flags (avx512_bf16 does not match a flag named avx512_bf16x)."""
    monkeypatch.setattr(runtime, "this_cpu", lambda: CpuInfo("AuthenticAMD", frozenset({"avx2", "avx512_bf16x"})))
    assert runtime._cpu_has(("no_such_probe",), ("avx2",)) is True
    assert runtime._cpu_has(("no_such_probe",), ("avx512_bf16",)) is False
    monkeypatch.setattr(runtime, "this_cpu", lambda: None)
    assert runtime._cpu_has(("no_such_probe",), ("avx2",)) is False
