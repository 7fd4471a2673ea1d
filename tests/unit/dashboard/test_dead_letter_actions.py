"""The dashboard's dead letters go through the App's DLQ API: signals, prefixes, paging."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.dashboard import pages
from conveyor.testing import capture_signals

from .conftest import Dashboard

DASHBOARD_SRC = Path(pages.__file__).parent


def shared_prefix(ids: list[str]) -> str:
    n = 0
    while all(len(i) > n and i[n] == ids[0][n] for i in ids):
        n += 1
    return ids[0][:n]


def test_api_retry_and_delete_emit_dlq_signals_from_the_dashboard(plain: Dashboard) -> None:
    ids = plain.ids
    with capture_signals(plain.app, ["dlq.retried", "dlq.purged"]) as events:
        r = plain.post("/api/dead-letters/retry", json={"ids": [ids["run"], "missing"]})
        assert r.json() == {"retried": 1, "requested": 2}
        assert plain.delete(f"/api/dead-letters/{ids['traced']}").json() == {"deleted": 1}
    assert [e.name for e in events] == ["dlq.retried", "dlq.purged"]
    retried, purged = events
    assert (retried.name, dict(retried.attrs)) == (
        "dlq.retried", {"count": 1, "job_ids": ids["run"], "queue": "", "requested_by": "dashboard"},
    )  # fmt: skip
    assert (purged.name, dict(purged.attrs)) == (
        "dlq.purged", {"count": 1, "job_ids": ids["traced"], "queue": "", "requested_by": "dashboard"},
    )  # fmt: skip


def test_page_actions_emit_dlq_signals_from_the_dashboard(plain: Dashboard) -> None:
    with capture_signals(plain.app, ["dlq.retried", "dlq.purged"]) as events:
        plain.post("/dead-letters/action", data={"retry": plain.ids["markup"]})
        plain.post(f"/dead-letters/{plain.ids['traced']}/delete")
    assert [(e.name, e.get("job_ids"), e.get("requested_by")) for e in events] == [
        ("dlq.retried", plain.ids["markup"], "dashboard"),
        ("dlq.purged", plain.ids["traced"], "dashboard"),
    ]


def test_retry_from_the_dashboard_is_recorded_in_history(full: Dashboard) -> None:
    job_id = full.ids["run"]
    assert full.post("/api/dead-letters/retry", json={"ids": [job_id]}).json()["retried"] == 1
    timeline = full.get(f"/api/jobs/{job_id}").json()
    assert timeline["job"]["state"] == "enqueued"
    assert timeline["events"][-1]["kind"] == "manual_retry"


def test_a_dead_letter_opens_by_unique_prefix_and_an_ambiguous_one_lists_candidates(plain: Dashboard) -> None:
    dead = sorted(plain.dead_ids())
    job_id = plain.ids["traced"]
    prefix = next(job_id[:n] for n in range(1, len(job_id)) if sum(d.startswith(job_id[:n]) for d in dead) == 1)
    assert plain.get(f"/api/dead-letters/{prefix}").json()["id"] == job_id
    assert job_id in plain.get(f"/dead-letters/{prefix}").text
    shared = shared_prefix(dead)
    r = plain.get(f"/api/dead-letters/{shared}")
    assert r.status_code == 400 and all(d in r.json()["detail"] for d in dead[:10]), r.text
    page = plain.get(f"/dead-letters/{shared}")
    assert page.status_code == 400 and "matches several dead letters" in page.text
    r = plain.post(f"/dead-letters/{shared}/retry", headers={"HX-Request": "true"})
    assert r.status_code == 400 and "matches several dead letters" in r.text
    assert sorted(plain.dead_ids()) == dead  # nothing retried


def test_api_pages_dead_letters_with_a_next_cursor(plain: Dashboard) -> None:
    everything = [d["id"] for d in plain.get("/api/dead-letters").json()]
    assert len(everything) == 4
    seen: list[str] = []
    params = {"limit": "3"}
    while True:
        r = plain.get("/api/dead-letters", params=params)
        seen += [d["id"] for d in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        params = {"limit": "3", "after": cursor}
    assert seen == everything
    r = plain.get("/api/dead-letters", params={"after": "nonsense"})
    assert r.status_code == 400 and "cursor" in r.json()["detail"]


def test_the_dead_letters_page_links_to_the_next_page(plain: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "DLQ_PAGE", 2)
    html = plain.get("/dead-letters").text
    link = re.search(r'href="[^"]*/dead-letters\?after=([^"&]+)"', html)
    assert link is not None, html
    second = plain.get(f"/dead-letters?after={link.group(1)}").text
    first_ids = set(re.findall(r'data-id="([^"]+)"', html))
    second_ids = set(re.findall(r'data-id="([^"]+)"', second))
    assert len(first_ids) == 2 and len(second_ids) == 2 and not first_ids & second_ids


def test_dashboard_code_reaches_dead_letters_only_through_the_app() -> None:
    calls = [
        f"{path.name}: {line.strip()}"
        for path in DASHBOARD_SRC.glob("*.py")
        for line in path.read_text().splitlines()
        if re.search(r"\.dlq_\w+\(", line)
    ]
    assert calls == []
