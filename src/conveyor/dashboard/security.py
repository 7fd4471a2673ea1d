"""Access control for the dashboard: token, session cookie, CSRF, body limit, headers.

One ASGI middleware, :class:`Guard`, wraps every route:

* ``/healthz`` is open; everything else needs the token, either as
  ``Authorization: Bearer <token>`` or as the session cookie set by the login
  URL ``/?token=<token>`` (HttpOnly, SameSite=Strict).
* The session cookie is ``<sid>.<hmac(token, sid)>``: nothing is stored on the
  server, and changing the token signs everyone out.
* Mutating requests (POST, PUT, PATCH, DELETE) carry the CSRF token of their
  session in the ``X-CSRF-Token`` header or a ``csrf_token`` form field; it is
  ``hmac(token, "csrf:" + sid)`` (``sid`` is ``bearer`` for Bearer clients, who
  read theirs from ``GET /api/session``). Without it: 403.
* Bodies over ``max_body`` bytes get 413; every response gets the security headers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs

from markupsafe import escape
from starlette.datastructures import URL, Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "CONVEYOR_DASHBOARD_TOKEN"
COOKIE = "conveyor_dashboard"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
MAX_BODY = 64 * 1024
MIN_TOKEN_LENGTH = 16
OPEN_PATHS = frozenset({"/healthz"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BEARER_SID = "bearer"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


def resolve_token(explicit: str | None = None) -> tuple[str, bool]:
    """The dashboard token: ``explicit``, else ``$CONVEYOR_DASHBOARD_TOKEN``, else a new one.

    Returns ``(token, generated)``; raises ``ValueError`` for a token shorter than 16 characters.
    """
    token = explicit or os.environ.get(TOKEN_ENV) or ""
    if not token:
        return secrets.token_urlsafe(32), True
    check_token(token)
    return token, False


def check_token(token: str) -> str:
    """``token`` if it is long enough to be a secret; ``ValueError`` otherwise."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters")
    return token


class Keys:
    """Signs session ids and derives CSRF tokens from the dashboard token."""

    def __init__(self, token: str) -> None:
        self.token = check_token(token)
        self._key = hashlib.sha256(b"conveyor-dashboard:" + token.encode()).digest()

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def new_cookie(self) -> str:
        sid = secrets.token_urlsafe(16)
        return f"{sid}.{self._mac('session:' + sid)}"

    def session(self, cookie: str) -> str | None:
        """The session id of a valid cookie value, else None."""
        sid, _, mac = cookie.partition(".")
        if sid and sid != BEARER_SID and hmac.compare_digest(mac.encode(), self._mac("session:" + sid).encode()):
            return sid
        return None

    def csrf(self, sid: str) -> str:
        return self._mac("csrf:" + sid)


def _cookie(headers: Headers) -> str:
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


class BodyTooLarge(Exception):
    """The request body went over the limit."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; :class:`BodyTooLarge` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _form_csrf(headers: Headers, body: bytes) -> str:
    if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return ""
    values = parse_qs(body.decode("utf-8", "replace")).get(CSRF_FIELD, [])
    return values[0] if values else ""


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(self, app: ASGIApp, keys: Keys, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.keys = keys
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        headers = Headers(scope=scope)
        path: str = scope["path"]
        method: str = scope["method"]
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _plain(send, 413, "request body too large")
            return
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        login = QueryParams(scope["query_string"]).get("token")
        if method == "GET" and login is not None and self.keys.token_ok(login):
            await self._login(scope, send)  # even when signed in: the token leaves the address bar
            return
        sid = self._authenticate(headers)
        if sid is None:
            await _unauthorized(send, path, bad_token=login is not None)
            return
        scope.setdefault("state", {})["csrf_token"] = self.keys.csrf(sid)
        if method not in MUTATING:
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            await _plain(send, 413, "request body too large")
            return
        sent = headers.get(CSRF_HEADER) or _form_csrf(headers, body)
        if not sent or not hmac.compare_digest(sent.encode(), self.keys.csrf(sid).encode()):
            await _plain(send, 403, "missing or wrong CSRF token")
            return
        await self.app(scope, _replay(body), send)

    def _authenticate(self, headers: Headers) -> str | None:
        """The session id of an authenticated request, else None."""
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential and self.keys.token_ok(credential.strip()):
            return BEARER_SID
        cookie = _cookie(headers)
        return self.keys.session(cookie) if cookie else None

    async def _login(self, scope: Scope, send: Send) -> None:
        """Set the session cookie and move on to the page without the token in its URL.

        A page that refreshes itself (not a redirect) makes the next request
        same-site, so the SameSite=Strict cookie is sent with it.
        """
        url = URL(scope=scope).remove_query_params("token")
        target = url.path + (f"?{url.query}" if url.query else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={self.keys.new_cookie()}; Path=/; HttpOnly; SameSite=Strict{secure}"
        safe = escape(target)
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0; url={safe}"><title>conveyor</title></head>'
            f'<body><p>Signed in. <a href="{safe}">Continue to the dashboard</a>.</p></body></html>'
        )
        await _respond(send, 200, page.encode(), b"text/html; charset=utf-8", [(b"set-cookie", cookie.encode())])


def _replay(body: bytes) -> Receive:
    done = False

    async def receive() -> Message:
        nonlocal done
        if done:
            return {"type": "http.disconnect"}
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _with_headers(send: Send) -> Send:
    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return wrapped


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, text: str) -> None:
    await _respond(send, status, f'{{"error": "{text}"}}'.encode(), b"application/json")


async def _unauthorized(send: Send, path: str, bad_token: bool) -> None:
    extra = [(b"www-authenticate", b'Bearer realm="conveyor"')]
    if path.startswith("/api/") or path == "/metrics":
        await _respond(send, 401, b'{"error": "authentication required"}', b"application/json", extra)
        return
    why = "That token is not valid." if bad_token else "This dashboard needs its access token."
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>conveyor: sign in</title></head>'
        f"<body><h1>Sign in</h1><p>{why} Open the URL that <code>conveyor dashboard</code> printed at "
        "start-up (it ends in <code>/?token=...</code>), or send <code>Authorization: Bearer TOKEN</code>."
        "</p></body></html>"
    )
    await _respond(send, 401, page.encode(), b"text/html; charset=utf-8", extra)

