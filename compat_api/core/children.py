"""Child processes that end with the server.

A model download or export runs in a child process for minutes. If the server is stopped
meanwhile (SIGTERM during start-up: uvicorn ends the process at once), the child must not run on
alone, filling the disk for nobody. On Linux the child asks the kernel for SIGTERM when the
thread that started it ends (`prctl(PR_SET_PDEATHSIG)`), and exits at once if that already
happened; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger(__name__)

PARENT_VARIABLE = "COMPAT_API_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should end with this process."""
    return {**(os.environ if base is None else base), PARENT_VARIABLE: str(os.getpid())}


def die_with_parent() -> None:
    """In a child started with `child_environment`: end when the parent ends."""
    parent = os.environ.get(PARENT_VARIABLE, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("cannot ask to end with the server (errno %d)", ctypes.get_errno())
            return
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to end with the server: %s", exc)
        return
    if os.getppid() != int(parent):  # the server ended before the request took effect
        os._exit(1)
