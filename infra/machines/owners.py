"""Who owns a sandbox: a flow run and the process working for it.

The janitor reaps a sandbox whose run is still "Running" in Prefect when the process that
owned it is gone (a killed worker leaves such runs behind). A pid alone could be reused, so
the process start time (from /proc) is kept with it.
"""

from __future__ import annotations

import os

from pydantic import BaseModel


def _start_ticks(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except OSError:
        return None
    # Field 22 (starttime) counted after the ")" that closes the command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


class Owner(BaseModel):
    """A flow run and, while code runs for it, the owning process."""

    run: str | None = None
    pid: int | None = None
    pid_start: int | None = None

    @classmethod
    def this_process(cls, run: str | None) -> Owner:
        pid = os.getpid()
        return cls(run=run, pid=pid, pid_start=_start_ticks(pid))

    def process_alive(self) -> bool | None:
        """True/False for a recorded process; None when no process owns it (e.g. suspended)."""
        if self.pid is None:
            return None
        return _start_ticks(self.pid) == self.pid_start
