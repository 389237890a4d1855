"""What every request passes before a route sees it, and what every answer carries.

A server on this machine without --api-key trusts whoever can reach it, and any web page the user
visits can reach it: the browser sends that page's requests from the user's own machine. So:

- A POST must say `Content-Type: application/json` (else 415). A page may send another origin a
  "simple" request (text/plain) without asking; a JSON one needs a preflight this server never grants.
- A browser request made by a page of another origin (its `Origin` header) is refused (403) unless
  `--allow-origin` lists that origin, which also answers its preflight (CORS).
- On a loopback address the `Host` header must name this machine (403 otherwise): a page whose own
  domain was re-pointed at 127.0.0.1 (DNS rebinding) is same-origin with the server, but its requests
  still carry its own name.

Every answer gets `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`. Errors are
logged once: an unexpected exception is one traceback and a 500; a client that went away is normal,
one debug line.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from chatforge.serve.protocol import ApiError

log = logging.getLogger("chatforge.serve")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class Guard:
    """ASGI middleware: the checks above, the headers, and errors logged once.

    trusted_hosts: the names the Host header may carry, or None for any (a server on a public address
    cannot know the names it is reached by; --api-key guards it). allowed_origins: other origins whose
    pages may call the API ("*" for all)."""

    def __init__(self, app, *, trusted_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
                 allowed_origins: tuple[str, ...] = ()):
        self.trusted_hosts, self.allowed_origins = trusted_hosts, tuple(allowed_origins)
        self.app = app
        if self.allowed_origins:  # answers their preflights and adds Access-Control-Allow-Origin
            self.app = CORSMiddleware(app, allow_origins=list(self.allowed_origins), allow_methods=["GET", "POST"],
                                      allow_headers=["authorization", "content-type"])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = self.refusal(scope["method"], Headers(scope=scope))
        if refusal is not None:
            await error_response(refusal)(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except ClientDisconnect:
            log.debug("%s %s: the client went away before the answer was sent", scope["method"], scope["path"])
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if not started:
                await error_response(ApiError(500, "internal error", kind="server_error"))(scope, receive,
                                                                                          send_with_headers)
            else:  # mid-answer: end it where it is (a stream then lacks its [DONE])
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def refusal(self, method: str, headers: Headers) -> ApiError | None:
        """The ApiError that refuses this request, or None."""
        host = headers.get("host", "")
        if self.trusted_hosts is not None and host_name(host) not in self.trusted_hosts:
            return ApiError(403, f"Host {host!r} is not this machine: the server answers only requests addressed to "
                                 f"{', '.join(self.trusted_hosts)}.", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return ApiError(403, f"Requests from pages of {origin} are refused; start the server with "
                                 f"--allow-origin {origin} to allow them.", code="origin_not_allowed")
        if method == "POST":
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return ApiError(415, f"The body must be sent as 'Content-Type: application/json'; got "
                                     f"{media_type or 'none'!r}.", code="unsupported_media_type")
        return None

    def origin_allowed(self, origin: str, host: str) -> bool:
        """The server's own page (same host and port), or an origin --allow-origin names."""
        return "*" in self.allowed_origins or origin in self.allowed_origins or urlsplit(origin).netloc == host


def host_name(host: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" -> "::1", "localhost:8000" -> "localhost"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)
