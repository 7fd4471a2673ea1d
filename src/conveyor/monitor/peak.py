"""The process's exact peak RSS on Linux: reset the kernel's high-water mark, read it back.

Writing ``5`` to ``/proc/self/clear_refs`` sets ``VmHWM`` (in ``/proc/self/status``)
to the current RSS; from then on ``VmHWM`` is the highest RSS reached, however
short the spike. Elsewhere (macOS, Windows, a kernel before 4.0, a /proc that
refuses the write) :class:`PeakRss` says it is not available, once in the log,
and the resource monitor falls back to sampled RSS.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

log = logging.getLogger("conveyor.monitor.resources")

_HWM = re.compile(rb"^VmHWM:\s+(\d+) kB", re.MULTILINE)


class PeakRss:
    """Peak RSS of this process since the last :meth:`reset`, from ``proc`` (``/proc/self``)."""

    def __init__(self, proc: str | os.PathLike[str] = "/proc/self") -> None:
        self.proc = Path(proc)
        self.available = sys.platform.startswith("linux")
        """False once resetting or reading failed: callers use sampled RSS instead."""

    def reset(self) -> None:
        """Make the current RSS the peak."""
        if not self.available:
            return
        try:
            fd = os.open(self.proc / "clear_refs", os.O_WRONLY)
            try:
                os.write(fd, b"5")
            finally:
                os.close(fd)
        except OSError as exc:
            self._unavailable(f"cannot reset the peak through {self.proc / 'clear_refs'}: {exc}")

    def read(self) -> int | None:
        """Peak RSS in bytes since the last reset; None when not available."""
        if not self.available:
            return None
        try:
            found = _HWM.search((self.proc / "status").read_bytes())
        except OSError as exc:
            self._unavailable(f"cannot read VmHWM from {self.proc / 'status'}: {exc}")
            return None
        if found is None:
            self._unavailable(f"no VmHWM in {self.proc / 'status'}")
            return None
        return int(found.group(1)) * 1024

    def _unavailable(self, why: str) -> None:
        self.available = False
        log.info("per-job peak RSS falls back to sampled RSS: %s", why)
