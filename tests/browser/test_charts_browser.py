"""The dashboard's uPlot charts in a real browser: axes, ranges and legends people can read.

Each chart is rendered by the dashboard's own ``chart`` macro from the data the
dashboard's samplers produce, on a page that loads the dashboard's static files,
in Debian's Chromium (UTC, en-GB, so the expected texts are fixed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.dashboard.filters import TEMPLATES, templates
from conveyor.dashboard.sampler import Outcomes, Series

from .test_dashboard_browser import ARGS, CHROMIUM, _unavailable

STATIC = Path(TEMPLATES).parent / "static"
NOW = 1_796_155_934.5  # 2026-12-01 20:12:14.5 UTC
STAMP = re.compile(r"^\d{1,2} [A-Z][a-z]{2} \d{4}, \d\d:\d\d:\d\d$")  # e.g. "1 Dec 2026, 20:12:14"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the dev extra
        _unavailable("the playwright package")
    if not Path(CHROMIUM).exists():
        _unavailable(CHROMIUM)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def chart_page(browser: Any, tmp_path: Path, charts: dict[str, dict[str, Any]]) -> Any:
    """A page with one dashboard chart per entry, rendered by the real macro and app.js."""
    chart = templates().env.get_template("_macros.html").module.chart  # type: ignore[attr-defined]
    figures = "".join(str(chart(name, data, name)) for name, data in charts.items())
    page_file = tmp_path / "charts.html"
    page_file.write_text(
        "<!doctype html><html><head>"
        f'<link rel="stylesheet" href="{STATIC.as_uri()}/vendor/uPlot.min.css">'
        f'<link rel="stylesheet" href="{STATIC.as_uri()}/app.css">'
        f'<script src="{STATIC.as_uri()}/vendor/uPlot.iife.min.js" defer></script>'
        f'<script src="{STATIC.as_uri()}/app.js" defer></script>'
        f'</head><body><section class="charts" style="width: 640px">{figures}</section></body></html>'
    )
    context = browser.new_context(viewport={"width": 700, "height": 1000}, locale="en-GB", timezone_id="UTC")
    page = context.new_page()
    page.goto(page_file.as_uri())
    for name in charts:
        page.wait_for_selector(f"#chart-{name} .uplot canvas")
    return page


def state(page: Any, name: str) -> dict[str, Any]:
    """What the chart shows: its x range, the tick labels drawn on each axis and its legend."""
    result: dict[str, Any] = page.evaluate(
        """id => {
            const u = window.conveyorCharts.get(id);
            const legend = Array.from(u.root.querySelectorAll(".u-legend .u-series")).map(
                row => [row.querySelector(".u-label").textContent, row.querySelector(".u-value").textContent]);
            return {x: [u.scales.x.min, u.scales.x.max], xTicks: u.axes[0]._values,
                    yTicks: u.axes[1]._values, legend: legend};
        }""",
        f"chart-{name}",
    )
    return result


def test_a_single_sample_gets_a_range_of_minutes_around_it(browser: Any, tmp_path: Path) -> None:
    one = Series()
    one.add(NOW, {"rss_mb": 42.5})
    page = chart_page(browser, tmp_path, {"rss": one.chart(["rss_mb"])})
    shown = state(page, "rss")
    low, high = shown["x"]
    assert low < NOW < high and high - low <= 600, shown["x"]
    assert shown["xTicks"] == ["20:11:30", "20:12:00", "20:12:30", "20:13:00"]
    page.context.close()


def test_a_few_seconds_of_queue_depth_read_as_clock_times(browser: Any, tmp_path: Path) -> None:
    depth = Series()
    for i in range(6):  # the dashboard samples every 0.5-5 s; a page open for a few seconds
        depth.add(NOW - 3 + i * 0.5, {"ready": 3 + i % 2, "in_flight": 1, "delayed": 0})
    page = chart_page(browser, tmp_path, {"depth": depth.chart()})
    shown = state(page, "depth")
    assert shown["xTicks"], "no x-axis labels"
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in shown["xTicks"]), shown["xTicks"]
    assert all(re.fullmatch(r"\d+", t) for t in shown["yTicks"]), shown["yTicks"]
    page.context.close()


def test_legends_show_the_latest_sample_and_follow_the_cursor(browser: Any, tmp_path: Path) -> None:
    outcomes = Outcomes(clock=lambda: NOW)
    depth = Series()
    for i in range(6):
        depth.add(NOW - 50 + i * 10, {"ready": i, "in_flight": 1, "delayed": 0})
    page = chart_page(browser, tmp_path, {"throughput": outcomes.per_minute(), "depth": depth.chart()})
    assert state(page, "throughput")["legend"] == [
        ["Time", "1 Dec 2026, 20:12:00"], ["completed", "0"], ["failed", "0"], ["dead", "0"],
    ]  # fmt: skip
    ticks = state(page, "throughput")["xTicks"]  # whole minutes on an hour-long axis
    assert ticks and all(re.fullmatch(r"\d\d:[0-5][05]", t) for t in ticks), ticks
    latest = [["Time", "1 Dec 2026, 20:12:14"], ["delayed", "0"], ["in_flight", "1"], ["ready", "5"]]
    assert state(page, "depth")["legend"] == latest
    over = page.locator("#chart-depth .u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2)  # over the first sample
    page.wait_for_function(
        "() => window.conveyorCharts.get('chart-depth').cursor.idx === 0", timeout=10_000
    )
    hovered = state(page, "depth")["legend"]
    assert hovered[0] == ["Time", "1 Dec 2026, 20:11:24"] and hovered[3] == ["ready", "0"]
    assert STAMP.match(hovered[0][1])
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] + 200)  # off the chart
    page.wait_for_function(
        "() => window.conveyorCharts.get('chart-depth').cursor.idx == null", timeout=10_000
    )
    assert state(page, "depth")["legend"] == latest
    page.context.close()
