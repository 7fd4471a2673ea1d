"""Token, session cookie, CSRF, body limit and security headers."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from conveyor import App
from conveyor.dashboard import create_app, resolve_token
from conveyor.dashboard.security import COOKIE, MAX_BODY, Keys

from .conftest import TOKEN, Dashboard


@pytest.mark.parametrize("path", ["/", "/workers", "/jobs", "/dead-letters", "/clusters", "/static/app.js"])
def test_pages_need_the_token(plain: Dashboard, path: str) -> None:
    r = plain.client.get(path)
    assert r.status_code == 401
    assert "text/html" in r.headers["content-type"]
    assert "token" in r.text


@pytest.mark.parametrize("path", ["/api/overview", "/api/dead-letters", "/api/session", "/api/jobs"])
def test_api_needs_the_token(plain: Dashboard, path: str) -> None:
    r = plain.client.get(path)
    assert r.status_code == 401
    assert r.json() == {"error": "authentication required"}
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_wrong_bearer_token_is_refused(plain: Dashboard) -> None:
    r = plain.client.get("/api/overview", headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
    assert r.status_code == 401


def test_healthz_is_open(plain: Dashboard) -> None:
    r = plain.client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_bearer_token_opens_api_and_pages(plain: Dashboard) -> None:
    assert plain.get("/api/overview").status_code == 200
    assert plain.get("/").status_code == 200


def test_login_url_sets_a_strict_httponly_cookie(plain: Dashboard) -> None:
    r = plain.client.get(f"/?token={TOKEN}")
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie
    # the page moves on to the URL without the token
    assert 'http-equiv="refresh" content="0; url=/"' in r.text
    assert TOKEN not in r.text
    # the cookie now opens the dashboard
    assert plain.client.get("/").status_code == 200
    assert plain.client.get("/api/overview").status_code == 200
    # opening the login URL again still takes the token out of the address bar
    again = plain.client.get(f"/workers?token={TOKEN}")
    assert 'content="0; url=/workers"' in again.text


def test_login_keeps_other_query_parameters(plain: Dashboard) -> None:
    r = plain.client.get(f"/dead-letters?queue=fast&token={TOKEN}")
    assert "url=/dead-letters?queue=fast" in r.text


def test_wrong_login_token_is_refused(plain: Dashboard) -> None:
    r = plain.client.get("/?token=wrong-token-wrong-token")
    assert r.status_code == 401
    assert "not valid" in r.text
    assert "set-cookie" not in r.headers


def test_tampered_cookie_is_refused(plain: Dashboard) -> None:
    plain.client.get(f"/?token={TOKEN}")
    value = plain.client.cookies[COOKIE]
    sid, _, mac = value.partition(".")
    plain.client.cookies.clear()
    plain.client.cookies.set(COOKIE, f"{sid}x.{mac}")
    assert plain.client.get("/api/overview").status_code == 401
    plain.client.cookies.set(COOKIE, "bearer." + mac)
    assert plain.client.get("/api/overview").status_code == 401


def test_changing_the_token_signs_sessions_out(plain_app: App) -> None:
    cookie = Keys(TOKEN).new_cookie()
    with TestClient(create_app(plain_app, token="another-token-0123456789")) as client:
        client.cookies.set(COOKIE, cookie)
        assert client.get("/api/overview").status_code == 401


def test_post_without_csrf_is_forbidden(plain: Dashboard) -> None:
    dead = plain.ids["markup"]
    r = plain.post("/api/dead-letters/retry", csrf=False, json={"ids": [dead]})
    assert r.status_code == 403
    assert plain.delete(f"/api/dead-letters/{dead}", csrf=False).status_code == 403
    r = plain.post("/dead-letters/action", csrf=False, data={"retry": dead})
    assert r.status_code == 403
    r = plain.post(f"/dead-letters/{dead}/delete", csrf=False, data={"csrf_token": "0" * 64})
    assert r.status_code == 403
    assert dead in plain.dead_ids()


def test_csrf_token_is_per_session(plain: Dashboard) -> None:
    plain.client.get(f"/?token={TOKEN}")
    page = plain.client.get("/dead-letters").text
    form_token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert form_token is not None
    bearer_token = plain.csrf()
    assert form_token[1] != bearer_token
    dead = plain.ids["markup"]
    # a Bearer client's CSRF token does not work for a cookie session
    r = plain.client.post("/dead-letters/action", data={"retry": dead, "csrf_token": bearer_token})
    assert r.status_code == 403
    r = plain.client.post("/dead-letters/action", data={"retry": dead, "csrf_token": form_token[1]})
    assert r.status_code == 303
    assert dead not in plain.dead_ids()


def test_csrf_header_works_for_cookie_sessions(plain: Dashboard) -> None:
    plain.client.get(f"/?token={TOKEN}")
    page = plain.client.get("/").text
    match = re.search(r"""hx-headers='\{"X-CSRF-Token": "([0-9a-f]+)"\}'""", page)
    assert match is not None
    dead = plain.ids["traced"]
    r = plain.client.post("/api/dead-letters/delete", json={"ids": [dead]}, headers={"X-CSRF-Token": match[1]})
    assert r.status_code == 200
    assert r.json() == {"deleted": 1, "requested": 1}


def test_oversized_body_gets_413(plain: Dashboard) -> None:
    big = b'{"ids": ["' + b"a" * (MAX_BODY + 10) + b'"]}'
    r = plain.post("/api/dead-letters/retry", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # also when the length is not announced (chunked upload)
    chunks = (b"x" * 8192 for _ in range(MAX_BODY // 8192 + 2))
    r = plain.post("/api/dead-letters/retry", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_body_at_the_limit_is_accepted(plain: Dashboard) -> None:
    body = b'{"ids": []}'.ljust(MAX_BODY, b" ")
    r = plain.post("/api/dead-letters/retry", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200


def test_security_headers_on_every_response(plain: Dashboard) -> None:
    for r in (plain.get("/"), plain.get("/api/overview"), plain.client.get("/healthz"), plain.client.get("/")):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_token_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_DASHBOARD_TOKEN", raising=False)
    token, generated = resolve_token(None)
    assert generated and len(token) >= 32
    assert resolve_token(TOKEN) == (TOKEN, False)
    monkeypatch.setenv("CONVEYOR_DASHBOARD_TOKEN", "from-the-environment-123")
    assert resolve_token(None) == ("from-the-environment-123", False)
    with pytest.raises(ValueError, match="at least 16"):
        resolve_token("short")


def test_create_app_rejects_a_weak_token_and_a_bad_trace_url(plain_app: App) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        create_app(plain_app, token="short")
    with pytest.raises(ValueError, match="trace_id"):
        create_app(plain_app, token=TOKEN, trace_url="javascript:alert(1)//{trace_id}")
    with pytest.raises(ValueError, match="trace_id"):
        create_app(plain_app, token=TOKEN, trace_url="http://jaeger/trace/")
