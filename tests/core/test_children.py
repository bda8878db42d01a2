"""A download or export child process ends with the server that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by init) counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("asks", [True, False])
def test_a_child_that_asks_ends_when_its_server_is_killed(tmp_path: Path, asks: bool) -> None:
    """The server is killed outright (as uvicorn's re-raised SIGTERM ends it during start-up);
    the child that asked ends too, while one that did not runs on (the control)."""
    child = "from compat_api.core.children import die_with_parent\n" * asks + (
        "import time\n" + "die_with_parent()\n" * asks + "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    server = textwrap.dedent(f"""
        import subprocess, sys, time
        from compat_api.core.children import child_environment
        child = subprocess.Popen([sys.executable, "-c", {child!r}], env=child_environment(),
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    with subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as parent:  # fmt: skip
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        try:
            parent.send_signal(signal.SIGKILL)
            parent.wait(timeout=10)
            deadline = time.monotonic() + (10 if asks else 1)
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _alive(pid) is not asks
        finally:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
