"""Pure ASGI middleware (BaseHTTPMiddleware would break streaming cancellation).

* :class:`RequestContext`: a request id on every response, one JSON access-log line, the
  request counter by route and status (a client that left mid-request is a 499), and a bounded
  drain of a body the app answered without reading (an early 401 or 413), so that the client,
  still sending, gets to read the answer.
* :class:`AuthGuard`: with API keys configured, checks ``Authorization: Bearer`` from the
  headers alone, before anything reads the body: a wrong key costs the service no bytes.
* :class:`HostGuard`: only the Host names the service answers to (DNS rebinding).
* Security headers on every answer (``nosniff``, no framing) and a Content-Security-Policy on
  the page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid

from . import paths
from .errors import HostNotAllowed, Unauthorized, describe
from .metrics import METRICS

log = logging.getLogger("avchat.service")
LINGER_S = 2.0  # longest a refused body is read (and dropped) before the answer goes out
# Every answer: no MIME sniffing, no framing by other sites, no referrer leaving the page.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# The page: its own scripts and styles only; the chosen video plays from a blob: URL.
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class RequestContext:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or f"req-{uuid.uuid4().hex[:16]}"
        scope.setdefault("state", {})["request_id"] = rid
        body = {
            "done": headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers,
            "gone": False,
        }
        status = {"code": 500}
        start = time.perf_counter()

        async def tracked_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                body["gone"] = True
            elif not message.get("more_body", False):
                body["done"] = True
            return message

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [(b"x-request-id", rid.encode("latin-1")), *SECURITY_HEADERS]
                if scope["path"] == paths.PAGE or scope["path"].startswith("/static/"):
                    extra.append((b"content-security-policy", PAGE_CSP))
                if not body["done"] and not body["gone"]:
                    await _linger(tracked_receive, body)
                    extra.append((b"connection", b"close"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, tracked_receive, send_with_id)
        finally:
            path = scope["path"]
            route = path if path in paths.ROUTES else "other"
            code = 499 if body["gone"] and status["code"] in (499, 500) else status["code"]
            METRICS.requests.labels(route, str(code)).inc()
            log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": rid,
                        "method": scope["method"],
                        "path": path,
                        "status": code,
                        "ms": round((time.perf_counter() - start) * 1000, 1),
                    }
                },
            )


async def _linger(receive, body: dict) -> None:
    """Reads and drops what is left of the body, for at most LINGER_S."""
    deadline = time.monotonic() + LINGER_S
    while not body["done"] and not body["gone"]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(receive(), remaining)
        except asyncio.TimeoutError:
            return


def owner_of(key: str) -> str:
    """What a video belongs to: a digest of the key (the key itself is never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else ""


class AuthGuard:
    """401 (with ``WWW-Authenticate: Bearer``) for ``/v1/*`` without a known key, decided from
    the headers; the caller's owner id goes into the scope for the routes."""

    def __init__(self, app, keys: list[str], protect_metrics: bool, protect_docs: bool):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.protected = (
            (paths.API_PREFIX,) + ((paths.METRICS,) if protect_metrics else ()) + (paths.DOCS if protect_docs else ())
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys:
            return await self.app(scope, receive, send)
        key = _bearer(dict(scope.get("headers") or []).get(b"authorization", b""))
        known = False
        for candidate in self.keys:  # every key is compared, in constant time
            known |= hmac.compare_digest(candidate, key)
        if known:
            scope.setdefault("state", {})["owner"] = owner_of(key.decode("latin-1"))
        elif scope["path"].startswith(self.protected):
            await _refuse(
                send,
                Unauthorized("missing or invalid API key; send 'Authorization: Bearer <key>'"),
                ((b"www-authenticate", b'Bearer realm="avchat"'),),
            )
            return
        await self.app(scope, receive, send)


class HostGuard:
    """400 for a request whose Host header is not a name this service answers to, so that a page
    on another site cannot reach it through DNS rebinding (a name of theirs, re-pointed at
    127.0.0.1). ``names`` None answers every name (bound to all addresses, or AVCHAT_ALLOWED_HOSTS=*)."""

    def __init__(self, app, names: set[str] | None):
        self.app, self.names = app, names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        host = _host_name(dict(scope.get("headers") or []).get(b"host", b""))
        if host not in self.names:
            await _refuse(send, HostNotAllowed(f"this service does not answer to the host {host or '(none)'!r}"))
            return
        await self.app(scope, receive, send)


def _host_name(header: bytes) -> str:
    """The name of a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


async def _refuse(send, exc: Exception, headers: tuple = ()) -> None:
    """Answers an error from a middleware, before the app has seen the request."""
    status, payload, _ = describe(exc)
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _bearer(header: bytes) -> bytes:
    scheme, _, key = header.partition(b" ")
    return key.strip() if scheme.lower() == b"bearer" else b""
