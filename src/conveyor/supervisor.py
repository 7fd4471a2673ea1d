"""``conveyor worker --processes N``: run N worker processes, restart the ones that die."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("conveyor.supervisor")


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0


def describe_exit(code: int) -> str:
    """Why a process ended, from its return code."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs ``argv`` (a ``conveyor worker`` command line) in ``processes`` child processes.

    A child that dies is restarted after a backoff that grows while children keep
    dying quickly; its exit status is logged. SIGTERM/SIGINT are forwarded so the
    children shut down gracefully; a second signal is forwarded too (forced stop).
    In burst mode a child that exits with code 0 is done and not restarted.
    """

    def __init__(
        self, argv: Sequence[str], processes: int, burst: bool = False, env: dict[str, str] | None = None
    ) -> None:
        self.argv = list(argv)
        self.processes = processes
        self.burst = burst
        self.env = env
        self.children: dict[int, _Child] = {}
        self.exits: list[tuple[int, int, str]] = []
        """(slot, pid, why) for every child that ended."""
        self._signals = 0

    def _spawn(self, slot: int, restarts: int = 0) -> None:
        env = dict(os.environ if self.env is None else self.env)
        env["CONVEYOR_WORKER_SLOT"] = str(slot)
        proc = subprocess.Popen(self.argv, env=env)
        self.children[slot] = _Child(slot, proc, restarts=restarts)
        log.info("started worker process %d (pid %d)", slot, proc.pid)

    def _forward(self, signum: int, _frame: object) -> None:
        self._signals += 1
        log.info("forwarding %s to %d worker processes", signal.Signals(signum).name, len(self.children))
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signum)

    def _forget_metrics(self, pid: int) -> None:
        """Drop a dead child's live gauges from the shared Prometheus files, if any."""
        env = self.env if self.env is not None else dict(os.environ)
        if "PROMETHEUS_MULTIPROC_DIR" in env:
            from .telemetry.cli import mark_worker_process_dead

            mark_worker_process_dead(pid, env)

    def run(self) -> int:
        """Supervise until every child has stopped; return 0 if all stopped cleanly."""
        previous = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            status = 0
            while self.children:
                time.sleep(0.1)
                for slot, child in list(self.children.items()):
                    code = child.proc.poll()
                    if code is None:
                        continue
                    del self.children[slot]
                    self._forget_metrics(child.proc.pid)
                    why = describe_exit(code)
                    self.exits.append((slot, child.proc.pid, why))
                    if self._signals or (self.burst and code == 0):
                        log.info("worker process %d (pid %d) %s", slot, child.proc.pid, why)
                        status = status or (code if code > 0 else 0)
                        continue
                    quick = time.monotonic() - child.started < 5
                    restarts = child.restarts + 1 if quick else 0
                    delay = min(0.5 * 2**restarts, 30.0) if quick else 0.5
                    log.error(
                        "worker process %d (pid %d) %s; restarting in %.1fs", slot, child.proc.pid, why, delay
                    )
                    time.sleep(delay)
                    if not self._signals:
                        self._spawn(slot, restarts)
            return status
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--name V`` or ``--name=V``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def child_argv(argv: Sequence[str]) -> list[str]:
    """The command line for one child: this ``conveyor`` command without ``--processes``."""
    return [sys.executable, "-m", "conveyor", *without_option(argv, "--processes")]
