"""The JSON API, with and without the History and Monitor extensions."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from conveyor import App
from conveyor.dashboard import create_app
from conveyor.history import WorkerRecord

from .conftest import TOKEN, TRACE_ID, XSS, Dashboard, store_of


def test_session_reports_features(plain: Dashboard, full: Dashboard) -> None:
    data = plain.get("/api/session").json()
    assert len(data["csrf_token"]) == 64
    assert data["features"]["history"] is False and data["features"]["monitor"] is False
    assert "History" in data["features"]["history_help"]
    assert full.get("/api/session").json()["features"]["history"] is True


def test_queues_lists_counts(plain: Dashboard) -> None:
    queues = {q["queue"]: q for q in plain.get("/api/queues").json()}
    assert set(queues) == {"default", "fast"}
    assert queues["default"]["dead"] == 3
    assert queues["fast"]["dead"] == 1
    assert set(queues["default"]) == {"queue", "ready", "delayed", "in_flight", "dead", "oldest_age_s"}


def test_overview_without_history(plain: Dashboard) -> None:
    o = plain.get("/api/overview").json()
    assert o["totals"]["dead"] == 4
    assert o["alerts"] is None
    assert o["rates"]["source"] == "process"
    assert o["throughput"]["source"] == "process"
    assert o["depth"]["series"][0]["label"] == "ready"
    assert len(o["depth"]["x"]) >= 1  # the lifespan took a first sample


def test_overview_counts_outcomes_seen_in_this_process(plain_app: App) -> None:
    with TestClient(create_app(plain_app, token=TOKEN)) as client:
        plain_app.send_jobs([plain_app.message("ok.add", [1, 2])])
        from conveyor.testing import run_until_idle

        run_until_idle(plain_app)
        o = client.get("/api/overview", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert o["throughput"]["seen"] == 1
    completed = next(s for s in o["throughput"]["series"] if s["label"] == "completed")
    assert sum(completed["values"]) == 1
    assert o["rates"]["last_5m"]["completed"] == 1 and o["rates"]["last_5m"]["success_rate"] == 1.0


def test_overview_with_history_and_monitor(full: Dashboard) -> None:
    o = full.get("/api/overview").json()
    assert o["rates"]["source"] == "history"
    last = o["rates"]["last_1h"]
    assert last["completed"] == 1 and last["failures"] == 4
    assert last["failure_rate"] == 0.8
    assert o["throughput"]["source"] == "history" and len(o["throughput"]["x"]) == 60
    dead = next(s for s in o["throughput"]["series"] if s["label"] == "dead")
    assert sum(dead["values"]) >= 2
    assert set(o["alerts"]) == {"active", "resolved"}
    # the default monitor thresholds: new dead letters are a warning
    assert any(a["name"] == "dlq_growth" for a in o["alerts"]["active"])


def test_health_report(full: Dashboard, plain: Dashboard) -> None:
    health = full.get("/api/health").json()
    assert health["status"] in ("ok", "warning", "critical")
    assert "queue_latency" in health["checks"]
    r = plain.get("/api/health")
    assert r.status_code == 501
    assert r.json()["error"] == "not_enabled" and "Monitor" in r.json()["detail"]


def test_dead_letters_are_listed_with_redacted_payloads(plain: Dashboard) -> None:
    letters = {d["id"]: d for d in plain.get("/api/dead-letters").json()}
    assert set(plain.ids.values()) <= set(letters)
    run = letters[plain.ids["run"]]
    assert run["reason"] == "max_attempts_exceeded" and run["attempts"] == 2
    assert run["error_type"] == "RuntimeError" and "Traceback" in run["traceback"]
    assert run["payload"]["args"] == ["[REDACTED]", XSS]  # "password" is a sensitive parameter name
    assert "hunter2" not in str(run)
    markup = letters[plain.ids["markup"]]
    assert markup["payload"]["kwargs"] == {"api_key": "[REDACTED]", "note": XSS}
    assert markup["reason"] == "poison" and markup["error_type"] == XSS
    traced = letters[plain.ids["traced"]]
    assert traced["trace_id"] == TRACE_ID
    assert traced["trace_url"] == f"http://jaeger:16686/trace/{TRACE_ID}"
    assert traced["payload"]["headers"]["token"] == "[REDACTED]"
    assert "body" not in traced


def test_json_escapes_markup(plain: Dashboard) -> None:
    r = plain.get("/api/dead-letters")
    assert "<script>" not in r.text
    assert "\\u003cscript\\u003e" in r.text
    assert r.headers["content-type"] == "application/json"


def test_dead_letters_by_queue_and_one_by_id(plain: Dashboard) -> None:
    fast = plain.get("/api/dead-letters", params={"queue": "fast"}).json()
    assert [d["id"] for d in fast] == [plain.ids["traced"]]
    one = plain.get(f"/api/dead-letters/{plain.ids['traced']}").json()
    assert one["type"] == "ok.add"
    r = plain.get("/api/dead-letters/no-such-id")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert plain.get("/api/dead-letters", params={"limit": "0"}).status_code == 400


def test_retry_and_delete_in_bulk_and_one(plain: Dashboard) -> None:
    ids = plain.ids
    r = plain.post("/api/dead-letters/retry", json={"ids": [ids["run"], ids["markup"], "missing"]})
    assert r.json() == {"retried": 2, "requested": 3}
    queues = {q["queue"]: q for q in plain.get("/api/queues").json()}
    assert queues["default"]["ready"] == 2
    r = plain.delete(f"/api/dead-letters/{ids['traced']}")
    assert r.json() == {"deleted": 1}
    assert plain.delete(f"/api/dead-letters/{ids['traced']}").status_code == 404
    remaining = plain.dead_ids()
    assert ids["run"] not in remaining and ids["traced"] not in remaining and len(remaining) == 1
    r = plain.post("/api/dead-letters/delete", json={"ids": list(remaining)})
    assert r.json() == {"deleted": 1, "requested": 1}
    assert plain.dead_ids() == set()


def test_bad_bodies_are_400(plain: Dashboard) -> None:
    for body in (b"not json", b"[]", b'{"ids": "x"}', b'{"ids": [1]}', b'{"ids": ["a b"]}'):
        r = plain.post("/api/dead-letters/retry", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, body
        assert r.json()["error"] == "bad_request"


def test_history_routes_say_how_to_enable_history(plain: Dashboard) -> None:
    for path in ("/api/jobs", f"/api/jobs/{plain.ids['run']}", "/api/workers", "/api/clusters", "/api/retry-loops"):
        r = plain.get(path)
        assert r.status_code == 501, path
        assert "extensions=[History" in r.json()["detail"]
    r = plain.post("/api/clusters/abc/retry")
    assert r.status_code == 501


def test_job_search(full: Dashboard) -> None:
    def search(**params: str) -> list[str]:
        r = full.get("/api/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()]

    run = full.ids["run"]
    assert search(id=run) == [run]
    assert search(id=run[:30]) == [run]
    assert set(search(type=XSS, state="dead")) >= {run}
    assert search(state="completed", queue="fast") and not search(state="completed", queue="default")
    assert run in search(since="10m") and search(until="2000-01-01T00:00:00") == []
    assert run in search(since=str(time.time() - 600), until=str(time.time() + 60))
    for bad in ({"state": "bogus"}, {"since": "yesterday"}, {"limit": "5000"}):
        assert full.get("/api/jobs", params=bad).status_code == 400


def test_job_timeline_with_payload_and_trace(full: Dashboard) -> None:
    job = full.get(f"/api/jobs/{full.ids['run']}").json()
    assert job["job"]["state"] == "dead" and job["job"]["dead_reason"] == "max_attempts_exceeded"
    assert [a["outcome"] for a in job["attempts"]] == ["failed", "failed"]
    assert "Traceback" in job["attempts"][0]["error"]["traceback"]
    assert job["attempts"][0]["error"]["fingerprint"]
    assert [e["kind"] for e in job["events"]][:3] == ["enqueued", "started", "failed"]
    assert job["dead_letter"]["payload"]["args"][0] == "[REDACTED]"
    assert full.get("/api/jobs/unknown-id").status_code == 404
    ambiguous = full.get(f"/api/jobs/{full.ids['run'][:4]}")  # every UUIDv7 of this run starts alike
    assert ambiguous.status_code == 400 and "several jobs" in ambiguous.json()["detail"]
    assert full.get(f"/jobs/{full.ids['run'][:4]}").status_code == 400


def test_workers_flag_stalled_ones(full: Dashboard) -> None:
    store = store_of(full.app)
    now = time.time()
    store.heartbeat(WorkerRecord("w-stalled", "host-a", 11, ["default"], 2, now - 600, now - 300, 5.0))
    store.heartbeat(WorkerRecord("w-live", "host-b", 12, ["default"], 2, now - 10, now, 5.0, rss_bytes=50_000_000))
    workers = {w["id"]: w for w in full.get("/api/workers").json()}
    assert workers["w-stalled"]["stalled"] is True
    assert workers["w-live"]["stalled"] is False
    assert workers["w-live"]["host"] == "host-b" and workers["w-live"]["pid"] == 12
    assert workers["w-live"]["heartbeat_age"] < 5
    assert set(workers["w-live"]["charts"]) == {"rss", "cpu"}


def test_clusters_and_cluster_retry(full: Dashboard) -> None:
    clusters = full.get("/api/clusters").json()
    runtime = next(c for c in clusters if c["job_type"] == XSS and c["error_type"] == "RuntimeError")
    assert runtime["dead"] == 2 and runtime["count"] == 4
    r = full.post(f"/api/clusters/{runtime['fingerprint']}/retry")
    assert r.json() == {"retried": 2, "dead_in_cluster": 2}
    assert full.ids["run"] not in full.dead_ids()
    timeline = store_of(full.app).get_job(full.ids["run"])
    assert timeline.events[-1].kind == "manual_retry"


def test_retry_loops(full: Dashboard) -> None:
    loops = full.get("/api/retry-loops", params={"min_attempts": "2"}).json()
    assert loops["min_attempts"] == 2
    assert {j["job_id"] for j in loops["jobs"]} >= {full.ids["run"]}
    assert full.get("/api/retry-loops").json()["min_attempts"] == 5  # the monitor's setting
    assert full.get("/api/retry-loops", params={"min_attempts": "1"}).status_code == 400


def test_metrics_only_when_asked(plain_app: App) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(plain_app, token=TOKEN)) as client:
        assert client.get("/metrics", headers=auth).status_code == 404
    with TestClient(create_app(plain_app, token=TOKEN, metrics=True)) as client:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers=auth)
    assert r.status_code == 200
    assert 'conveyor_broker_queue_jobs{queue="default",state="dead"}' in r.text
