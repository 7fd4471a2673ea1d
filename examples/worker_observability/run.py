"""Run the seed scenario through the real CLI and show what telemetry saw.

    python examples/worker_observability/run.py [--port 9100]

Enqueues 100 ``email`` jobs in a temporary SQLite database, starts
``conveyor worker app:app --concurrency 10 --log-format json --metrics-port PORT``
(one worker process running 10 jobs at once), scrapes /metrics until all 100
jobs are accounted for, stops the worker with SIGTERM and prints the metrics
and the ``job.failed`` log lines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHOWN = ("jobs_completed_total{", "jobs_failed_total{", "job_duration_ms_count{", "queue_depth{")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        return str(resp.read().decode())


def sample(text: str, prefix: str) -> float:
    """The value of the first sample line starting with ``prefix`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def worker_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("conveyor")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "conveyor"]
    return [*cli, "worker", "app:app", "--concurrency", "10", "--log-format", "json",
            "--metrics-port", str(port)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    port = parser.parse_args().port
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CONVEYOR_BROKER_URL": f"sqlite:///{tmp}/jobs.db"}
        os.environ.update(env)
        sys.path.insert(0, str(HERE))
        import app as example

        example.enqueue_all(example.app)
        example.app.close()
        logs = Path(tmp) / "worker.log"
        with open(logs, "wb") as err:
            proc = subprocess.Popen(worker_command(port), cwd=HERE, env=env, stderr=err)
            try:
                text = wait_for_jobs(port, example.JOBS)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        print("\n".join(line for line in text.splitlines() if line.startswith(SHOWN)))
        failed = [json.loads(line) for line in logs.read_text().splitlines()
                  if line.startswith("{") and '"signal":"job.failed"' in line]
        print(f"\n{len(failed)} job.failed log lines, e.g.:")
        if failed:
            print(json.dumps({k: v for k, v in failed[0].items() if k != "error"}, indent=2))
    return 0


def wait_for_jobs(port: int, total: int, timeout: float = 60.0) -> str:
    """Scrape until completed + failed reaches ``total``; returns the last exposition."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(port)
        except OSError:
            time.sleep(0.1)
            continue
        done = sample(text, "jobs_completed_total{") + sample(text, "jobs_failed_total{")
        if done >= total:
            return text
        time.sleep(0.2)
    raise TimeoutError(f"not all {total} jobs finished within {timeout}s")


if __name__ == "__main__":
    raise SystemExit(main())
