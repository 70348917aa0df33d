"""What keeps the HTTP server's work bounded and its requests its own.

- :class:`CancellableDeadline`: a ``time.monotonic()`` deadline that can also be called off early
  (client gone, server stopping); decoding stops at its next check either way.
- :class:`Gate`: at most ``capacity`` recognitions at once, a short bounded queue behind them, and
  an immediate refusal beyond it (the caller answers 503 with ``Retry-After``).
- :class:`SameOriginMiddleware`: refuses requests whose ``Host`` is not this server's (DNS
  rebinding) and state-changing requests sent by pages of other origins (cross-site forgery).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class CancellableDeadline(float):
    """A ``time.monotonic()`` deadline that :meth:`cancel` moves into the past.

    It is a float, so it goes wherever a deadline does; comparisons ``now > deadline`` (how
    decoding checks its budget) turn true at once after ``cancel()``.
    """

    cancelled: bool

    def __new__(cls, at: float) -> CancellableDeadline:
        self = super().__new__(cls, at)
        self.cancelled = False
        return self

    def cancel(self) -> None:
        """Make the deadline count as passed from now on."""
        self.cancelled = True

    def remaining(self) -> float:
        """Seconds left (0 once passed or cancelled)."""
        return 0.0 if self.cancelled else max(0.0, float(self) - time.monotonic())

    # ``now > deadline`` asks the deadline first (it is a float subclass): answer "passed".
    def __lt__(self, other: object) -> bool:
        return True if self.cancelled else float.__lt__(self, other)

    def __le__(self, other: object) -> bool:
        return True if self.cancelled else float.__le__(self, other)

    def __gt__(self, other: object) -> bool:
        return False if self.cancelled else float.__gt__(self, other)

    def __ge__(self, other: object) -> bool:
        return False if self.cancelled else float.__ge__(self, other)


class Gate:
    """Admission for CPU work on one event loop: ``capacity`` jobs run at once, at most
    ``max_pending`` are admitted in all (running or waiting); waiters are served in order."""

    def __init__(self, capacity: int, max_pending: int):
        self.capacity = max(1, capacity)
        self.max_pending = max(0, max_pending)
        self.running = 0
        self.closed = False
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    def full(self) -> bool:
        """Whether one more request would exceed ``max_pending``."""
        return self.running + self.waiting >= self.max_pending

    async def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot; False when none came, the gate is full or
        it was closed."""
        if self.closed or self.full():
            return False
        if self.running < self.capacity and not self.waiting:
            self.running += 1
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self._give_up(fut)
        except asyncio.CancelledError:
            if self._give_up(fut):
                self.release()
            raise
        finally:
            if fut in self._waiters and fut.done():
                self._waiters.remove(fut)

    def _give_up(self, fut: asyncio.Future) -> bool:
        """Stop waiting on ``fut``; True if a slot was granted to it meanwhile (then it is held)."""
        if fut.done() and not fut.cancelled():
            return fut.result()
        fut.cancel()
        return False

    def close(self) -> None:
        """Admit nothing more: every waiter is turned away now (server shutting down)."""
        self.closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)

    def release(self) -> None:
        """Free a slot and hand it to the first waiter still waiting."""
        self.running -= 1
        while self._waiters and not self.closed:
            fut = self._waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(True)
                break


def _hostname(host: str) -> str:
    """The host name of a ``Host`` header value, without port or IPv6 brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SameOriginMiddleware:
    """Refuse what a web page elsewhere could make a browser send to this local server.

    - ``Host`` must name this server (one of ``allowed_hosts``; ``None`` allows any): a page
      whose domain re-resolves to 127.0.0.1 (DNS rebinding) sends its own name and is refused.
    - A request that is not GET/HEAD/OPTIONS and comes from a browser page must come from this
      server's own origin: its ``Origin`` header, when present, must equal this server's, and
      ``Sec-Fetch-Site``, when present, must be ``same-origin`` or ``none``. Clients that are
      not browsers send neither header and are unaffected.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None = LOOPBACK_HOSTS):
        self.app = app
        self.allowed = None if allowed_hosts is None else {_hostname(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, str] = {}
        for key, value in scope.get("headers", []):
            headers.setdefault(key, value.decode("latin-1"))
        host = headers.get(b"host", "")
        if self.allowed is not None and _hostname(host) not in self.allowed:
            shown = host[:100] or "(none)"
            await _refuse(send, 400, "bad_host", f"Host header {shown!r} does not name this server")
            return
        if scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get(b"origin")
            site = headers.get(b"sec-fetch-site")
            own = f"{scope.get('scheme', 'http')}://{host.strip().lower()}"
            if (origin is not None and _origin(origin) != own) or (
                site is not None and site.lower() not in ("same-origin", "none")
            ):
                await _refuse(
                    send,
                    403,
                    "cross_origin",
                    "requests from other web sites are refused: use the page this server "
                    "serves, or a client that is not a browser",
                )
                return
        await self.app(scope, receive, send)


def _origin(value: str) -> str:
    """An ``Origin`` header normalized as scheme://host[:port] ("null" stays unmatched)."""
    parts = urlsplit(value.strip().lower())
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"detail": message, "code": code}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
