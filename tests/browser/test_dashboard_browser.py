"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

The dashboard runs under uvicorn in a background thread, on a free port, for a
SQLite-broker app with History and Monitor and a few dead letters. Without
/usr/bin/chromium (or the playwright package) the tests are skipped, except
under CI=true, where they fail. The overview's screenshot goes to
test-artifacts/, and to docs/img/dashboard-overview.png (the README's) when that
file is missing or CONVEYOR_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from conveyor import App, Backoff, NonRetryable
from conveyor.dashboard import DashboardServer
from conveyor.history import Change, ErrorRecord, History, history_of
from conveyor.monitor.extension import Monitor
from conveyor.testing import run_until_idle

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TOKEN = "browser-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "dashboard-overview.png"
ARTIFACT = ROOT / "test-artifacts" / "dashboard-overview.png"
FAST = Backoff(base=0.01, maximum=0.02)


def in_thread(fn: Any, *args: Any) -> Any:
    """Run ``fn`` on another thread: Playwright's sync API keeps an event loop running in this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def _unavailable(why: str) -> NoReturn:
    pytest.fail(f"browser tests need {why}: `make browser` (Debian's chromium) and `pip install playwright`")


def make_app() -> App:
    """An app like a small production one (in the current directory): three job types,
    some failing for good."""
    app = App("sqlite:///jobs.db", extensions=[History(heartbeat_interval=0.5), Monitor(sinks=[])])

    @app.job(name="email.send", queue="emails", max_attempts=2, backoff=FAST)
    def send_email(to: str, password: str = "") -> None:
        if to.startswith("bounce"):
            raise ConnectionError(f"SMTP 550 mailbox unavailable for {to}")

    @app.job(name="report.build", queue="reports")
    def build_report(report_id: int) -> str:
        if report_id % 7 == 0:
            raise NonRetryable(f"report {report_id}: source data is corrupt")
        return "ok"

    @app.job(name="data.process", queue="data")
    def process(batch: int) -> int:
        return batch

    jobs: list[Any] = [app.message("email.send", [f"user{i}@example.com"]) for i in range(40)]
    jobs += [app.message("email.send", [f"bounce{i}@example.com", "hunter2"]) for i in range(4)]
    jobs += [app.message("report.build", [i]) for i in range(1, 30)]
    jobs += [app.message("data.process", [i]) for i in range(60)]
    app.send_jobs(jobs)
    app.send_jobs([app.message("data.process", [i], delay=3600) for i in range(12)])
    run_until_idle(app)
    app.send_jobs([app.message("report.build", [100 + i]) for i in range(25)])  # waiting for a worker
    backfill_history(app)
    return app


def backfill_history(app: App) -> None:
    """An hour of recorded history before this run, so the throughput chart has a shape."""
    rng = random.Random(7)
    now = time.time()
    changes: list[Change] = []
    for minute in range(60, 1, -1):
        start = now - minute * 60
        for n in range(int(40 + 25 * abs(((minute % 20) - 10) / 10)) + rng.randint(0, 10)):
            job_id, at = f"past-{minute}-{n}", start + rng.uniform(0, 55)
            job_type, queue = rng.choice([("email.send", "emails"), ("data.process", "data")])
            common: dict[str, Any] = {"job_id": job_id, "job_type": job_type, "queue": queue, "worker_id": "w-past"}
            changes += [Change("enqueued", at=at, **common), Change("started", at=at + 0.1, attempt=1, **common)]
            if rng.random() < 0.06:
                error = ErrorRecord("ConnectionError", "SMTP timeout", "", "past")
                changes.append(Change("failed", at=at + 0.3, attempt=1, duration=0.2, error=error, **common))
            else:
                changes.append(Change("completed", at=at + 0.3, attempt=1, duration=0.2, **common))
    history = history_of(app)
    history.flush()
    history.store.record(changes)


class Served:
    """The dashboard of an app, served by uvicorn on a background thread's event loop."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.server = DashboardServer(
            app, port=0, token=TOKEN, trace_url="http://jaeger:16686/trace/{trace_id}", sample_interval=0.5
        )
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the dashboard did not start"

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            await self.server.start()
            self._ready.set()
            await self.server.serve_until(self._stop)

        self._loop.run_until_complete(main())

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the JSON API with the Bearer token (and the CSRF token for changes)."""
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if method != "GET":
            headers["X-CSRF-Token"] = self.api("GET", "/api/session")["csrf_token"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.server.url + path.lstrip("/"), data, headers, method=method)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the dev extra
        _unavailable("the playwright package")
    if not os.path.exists(CHROMIUM):
        _unavailable(CHROMIUM)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def close_app(app: App) -> None:
    for ext in app.extensions:
        ext.close()  # type: ignore[attr-defined]
    app.close()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.chdir(tmp_path)  # a short broker URL in the screenshot
    app = in_thread(make_app)
    s = Served(app)
    yield s
    s.close()
    in_thread(close_app, app)


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = context.new_page()
    pg.console_messages = []
    pg.on("console", lambda m: pg.console_messages.append(m.text))
    pg.goto(served.server.login_url)
    pg.wait_for_url(served.server.url)
    yield pg
    context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def no_csp_violations(page: Any) -> None:
    bad = [m for m in page.console_messages if "Content Security Policy" in m or "Refused" in m]
    assert bad == []


def test_overview_renders_charts_and_updates_live(page: Any, served: Served) -> None:
    page.wait_for_selector("#chart-throughput .uplot canvas")
    page.wait_for_selector("#chart-depth .uplot canvas")
    assert page.locator("h1").inner_text() == "Overview"
    assert page.locator("table.grid tbody tr").count() == 3  # data, emails, reports
    dead = page.locator('[data-total="dead"]')
    assert dead.inner_text() == "8"  # 4 bounced emails, 4 corrupt reports
    page.wait_for_timeout(4500)  # a few samples for the depth chart, shown at the next polls
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACT))
    assert 20_000 < ARTIFACT.stat().st_size < 400_000
    if not SCREENSHOT.exists() or os.environ.get("CONVEYOR_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(ARTIFACT.read_bytes())
    # a change made elsewhere shows up through polling, without reloading the page
    page.evaluate("window.__sameDocument = true")
    letters = served.api("GET", "/api/dead-letters?queue=reports")
    served.api("POST", "/api/dead-letters/delete", {"ids": [d["id"] for d in letters]})
    expect(dead).to_have_text("4", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    no_csp_violations(page)


def test_open_a_dead_job_and_retry_it(page: Any, served: Served) -> None:
    page.click("nav >> text=Dead letters")
    page.wait_for_selector("table.dlq tbody tr[data-id]")
    row = page.locator("table.dlq tbody tr[data-id]", has_text="email.send").first
    job_id = row.get_attribute("data-id")
    row.locator(f"a[href='/dead-letters/{job_id}']").click()
    page.wait_for_selector("#retry-one")
    assert "SMTP 550 mailbox unavailable" in page.content()
    assert "hunter2" not in page.content() and "[REDACTED]" in page.content()
    page.evaluate("window.__sameDocument = true")
    page.click("#retry-one")
    page.wait_for_selector("text=is no longer in the dead-letter queue")
    assert page.evaluate("window.__sameDocument") is True  # swapped in place, no reload
    assert job_id not in {d["id"] for d in served.api("GET", "/api/dead-letters")}
    page.click("nav >> text=Dead letters")
    page.wait_for_selector("table.dlq tbody tr[data-id]")
    assert page.locator(f"tr[data-id='{job_id}']").count() == 0
    no_csp_violations(page)


def test_bulk_retry_with_checkboxes(page: Any, served: Served) -> None:
    page.goto(served.server.url + "dead-letters?queue=reports")
    rows = page.locator("table.dlq tbody tr[data-id]")
    rows.first.wait_for()
    assert rows.count() == 4
    ids = [rows.nth(i).get_attribute("data-id") for i in range(2)]
    page.evaluate("window.__sameDocument = true")
    for job_id in ids:
        page.check(f"input[name=ids][value='{job_id}']")
    page.wait_for_timeout(2500)  # polling pauses while rows are ticked, so the ticks survive
    assert page.is_checked(f"input[name=ids][value='{ids[0]}']")
    page.click("button[name=retry_selected]")
    page.wait_for_selector("text=Retried 2 dead letters.")
    assert rows.count() == 2
    assert page.evaluate("window.__sameDocument") is True
    # a whole failure cluster at once
    page.click("nav >> text=Failures")
    page.wait_for_selector("text=Failure clusters")
    button = page.locator("button", has_text="Retry 4 dead")
    button.click()
    page.wait_for_selector("text=Retried 4 of 4 dead jobs in the cluster.")
    remaining = served.api("GET", "/api/dead-letters")
    assert [d["type"] for d in remaining] == ["report.build", "report.build"]
    no_csp_violations(page)
