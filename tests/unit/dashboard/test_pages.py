"""The HTML pages and partials: content, escaping, degraded modes, forms."""

from __future__ import annotations

import re

import pytest

from .conftest import XSS, Dashboard

PAGES = ["/", "/workers", "/jobs", "/dead-letters", "/clusters"]
PARTIALS = ["/partials/overview", "/partials/workers", "/partials/jobs", "/partials/dead-letters", "/partials/clusters"]
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def assert_escaped(html: str) -> None:
    assert XSS not in html
    assert "<script>alert" not in html
    # every script element is one of our files: no inline script
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert re.fullmatch(r'<script src="/static/[\w./]+\.js" defer>', tag), tag
    assert " style=" not in html and "<style" not in html  # no inline CSS (the CSP forbids it)
    assert re.search(r"<[^>]+\son[a-z]+\s*=", html) is None  # no inline event handlers


def htmx(d: Dashboard, path: str) -> str:
    r = d.get(path, headers={"HX-Request": "true"})
    assert r.status_code == 200, (path, r.text[:300])
    return str(r.text)


@pytest.mark.parametrize("path", PAGES + [p for p in PARTIALS if p != "/partials/overview"])
def test_pages_escape_markup_with_history(full: Dashboard, path: str) -> None:
    html = htmx(full, path)
    assert_escaped(html)


def test_markup_is_shown_escaped(full: Dashboard) -> None:
    dlq = full.get("/dead-letters").text
    assert ESCAPED in dlq  # job type and error message
    jobs = full.get("/jobs", params={"type": XSS}).text
    assert ESCAPED in jobs
    for job_id in full.ids.values():
        for path in (f"/jobs/{job_id}", f"/dead-letters/{job_id}"):
            html = full.get(path).text
            assert_escaped(html)
    markup = full.get(f"/dead-letters/{full.ids['markup']}").text
    assert "message " + ESCAPED in markup  # error message
    assert "RuntimeError: " + ESCAPED in markup  # traceback
    assert '&#34;note&#34;: &#34;' + ESCAPED + '&#34;' in markup  # kwargs
    run = full.get(f"/jobs/{full.ids['run']}").text
    assert ESCAPED + " exploded" in run and "[REDACTED]" in run and "hunter2" not in run


def test_overview_page(full: Dashboard) -> None:
    html = full.get("/").text
    assert_escaped(html)
    assert 'hx-get="/partials/overview"' in html and 'hx-trigger="every 2s"' in html
    assert "Jobs per minute" in html and 'id="chart-throughput" data-series=' in html and 'id="chart-depth"' in html
    assert "dlq_growth" in html  # an active alert
    assert 'data-total="dead">4<' in html
    assert "success, last hour" in html


def test_pages_without_history_say_how_to_enable_it(plain: Dashboard) -> None:
    for path in ("/workers", "/jobs", "/clusters"):
        html = plain.get(path).text
        assert "Job history is not enabled for this app" in html, path
        assert "extensions=[History(" in html
    overview = plain.get("/").text
    assert "Health monitoring is not enabled for this app" in overview
    assert "No job events seen in this process" in overview
    assert_escaped(overview)
    assert_escaped(plain.get("/dead-letters").text)


def test_job_page_without_history_shows_the_dead_letter(plain: Dashboard) -> None:
    r = plain.get(f"/jobs/{plain.ids['traced']}")
    assert r.status_code == 200
    assert "Job history is not enabled" in r.text
    assert "bad sum" in r.text
    r = plain.get("/jobs", params={"id": plain.ids["traced"]})
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{plain.ids['traced']}"
    assert plain.get("/jobs/nope").status_code == 404


def test_trace_link(plain: Dashboard) -> None:
    html = plain.get(f"/dead-letters/{plain.ids['traced']}").text
    assert 'href="http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"' in html
    assert 'rel="noopener noreferrer"' in html


def test_dead_letter_list_has_csrf_fields_and_checkboxes(plain: Dashboard) -> None:
    html = plain.get("/dead-letters").text
    assert 'name="csrf_token"' in html
    assert html.count('type="checkbox" name="ids"') == 4
    assert 'data-pause-when-checked' in html


def test_bulk_retry_and_delete_with_htmx(plain: Dashboard) -> None:
    ids = plain.ids
    r = plain.post(
        "/dead-letters/action",
        data={"ids": [ids["run"], ids["markup"]], "retry_selected": "1"},
        headers={"HX-Request": "true"},
    )
    assert r.status_code == 200
    assert "Retried 2 dead letters." in r.text
    assert ids["run"] not in r.text and ids["traced"] in r.text
    assert_escaped(r.text)
    # a row's own button acts on that row only, whatever is ticked
    form = {"ids": [ids["run"]], "delete": ids["traced"]}
    r = plain.post("/dead-letters/action", data=form, headers={"HX-Request": "true"})
    assert "Deleted 1 dead letter." in r.text
    remaining = plain.dead_ids()
    assert len(remaining) == 1 and not remaining & set(ids.values())
    r = plain.post("/dead-letters/action", data={"retry_selected": "1"}, headers={"HX-Request": "true"})
    assert "Select at least one dead letter first." in r.text


def test_forms_work_without_javascript(plain: Dashboard) -> None:
    r = plain.post("/dead-letters/action", data={"retry": plain.ids["markup"]})
    assert r.status_code == 303 and r.headers["location"] == "/dead-letters?retried=1"
    assert "Retried 1 dead letter." in plain.get("/dead-letters?retried=1").text
    r = plain.post(f"/dead-letters/{plain.ids['traced']}/delete")
    assert r.status_code == 303 and r.headers["location"] == "/dead-letters?deleted=1"
    assert plain.post(f"/dead-letters/{plain.ids['run']}/explode").status_code == 404


def test_retry_one_from_its_page_with_htmx(plain: Dashboard) -> None:
    job_id = plain.ids["run"]
    r = plain.post(f"/dead-letters/{job_id}/retry", headers={"HX-Request": "true"})
    assert "is no longer in the dead-letter queue" in r.text
    assert job_id not in plain.dead_ids()
    assert plain.get(f"/dead-letters/{job_id}").status_code == 404


def test_cluster_retry_from_the_failures_page(full: Dashboard) -> None:
    html = full.get("/clusters").text
    fingerprint = re.search(r'action="/clusters/([0-9a-f]+)/retry"', html)
    assert fingerprint is not None
    r = full.post(f"/clusters/{fingerprint[1]}/retry", headers={"HX-Request": "true"})
    assert "Retried 2 of 2 dead jobs in the cluster." in r.text
    assert full.ids["run"] not in full.dead_ids()


def test_bad_search_shows_the_error(full: Dashboard) -> None:
    r = full.get("/jobs", params={"since": "<b>later</b>"})
    assert r.status_code == 400
    assert "not a time" in r.text and "<b>later" not in r.text
    r = full.get("/partials/jobs", params={"state": "weird"})
    assert "state must be one of" in r.text


def test_static_assets_are_local(full: Dashboard) -> None:
    html = full.get("/").text
    assert "http://" not in re.sub(r'href="http://jaeger[^"]*"', "", html.split("<body")[0])
    vendor = ("/static/vendor/htmx.min.js", "/static/vendor/uPlot.iife.min.js", "/static/vendor/uPlot.min.css")
    for asset in (*vendor, "/static/app.js", "/static/app.css"):
        r = full.get(asset)
        assert r.status_code == 200, asset
    assert full.get("/static/vendor/htmx.LICENSE").status_code == 200
