"""Bounds on client connections, so that idle, silent or half-sent connections cannot use up
file descriptors (which the sampler needs too), memory or the log.

- A connection must deliver a complete request head within --web.read-header-timeout of
  its first byte (or of being opened), else it is closed. An idle keep-alive connection is
  closed after --web.idle-timeout (aiohttp's keep-alive timer).
- A request head may be at most MAX_HEADER_BYTES: a bigger one is answered 431 and the
  connection closed, so the memory held per connection is bounded.
- At most `cap` connections are open, below the file-descriptor limit with room for the
  sampler. At the cap, a new connection closes the longest-idle one (a connection with a
  request in progress is never closed for this); if every one is busy, the new one is
  refused. So an attacker's idle connections cannot lock a scraper out.
- Refusals and accept() failures (EMFILE and the like) are logged once when they start and
  once when they stop, never per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from typing import Any, Callable

from aiohttp import web

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024
# File descriptors kept free for everything but client connections: sampler reads, NVML,
# provider requests, the log. At least this many, or an eighth of the limit.
FD_RESERVE = 64
HEADER_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                    b"Content-Length: 0\r\n\r\n")


# asyncio accepts up to `backlog` connections in one go before any of them reaches the guard,
# and the idle ones they push out free their descriptors only after the burst: the cap
# leaves room for two bursts.
BACKLOG = 64
# asyncio retries a failed accept() every second; it counts as working again only after
# this long without a failure, so a run of failures is one log line, not one per retry.
# Likewise the cap: "below the limit again" only after this long without pressure.
CALM_SECONDS = 5.0


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to fit under the process's soft RLIMIT_NOFILE with a reserve for
    the rest of the process and for one accept burst."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    room = soft - max(FD_RESERVE, soft // 8) - 2 * BACKLOG
    return max(1, min(wanted, room))


class GuardedProtocol(asyncio.Protocol):
    """Stands in front of aiohttp's protocol for one connection: counts it, times the
    request head and its size, and passes everything else through."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is in the application
        self.head_bytes = 0  # bytes of the request head read so far
        self.head_done = False  # the head's blank line has been seen
        self.tail = b""  # the last bytes seen, to find a blank line split between reads
        self.timer: asyncio.TimerHandle | None = None
        self.admitted = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.guard.admit(self):
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        guard = self.guard
        guard.touch(self)
        if not self.busy and not self.head_done:
            if self.timer is None:  # first bytes of a new request
                self.head_bytes = 0
                self.tail = b""
                self._arm()
            end = (self.tail + data).find(b"\r\n\r\n")
            self.head_bytes += len(data) if end < 0 else end + 4 - len(self.tail)
            self.tail = data[-3:]
            self.head_done = end >= 0  # what follows is a body or the next request
            if self.head_bytes > MAX_HEADER_BYTES:
                self._close(HEADER_TOO_LARGE)
                return
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted:
            self.guard.release(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # request life, told by the middleware
    def request_started(self) -> None:
        self.busy = True
        self._disarm()

    def request_finished(self) -> None:
        self.busy = False
        self.head_done = False
        self.guard.touch(self)

    def _arm(self) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(
            self.guard.read_header_timeout, self._close, b"")

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self, farewell: bytes) -> None:
        self._disarm()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if farewell:
                transport.write(farewell)
                transport.close()
            else:
                transport.abort()


class ConnectionGuard:
    def __init__(self, max_connections: int, read_header_timeout: float) -> None:
        self.cap = connection_cap(max_connections)
        self.read_header_timeout = read_header_timeout
        self.open: OrderedDict[GuardedProtocol, None] = OrderedDict()  # least recent first
        self.by_transport: dict[object, GuardedProtocol] = {}
        self.full = False  # logged state: at the cap
        self.accept_failing = False  # logged state: accept() failing
        self.accept_failed_at = 0.0
        self.pressed_at = 0.0  # last time a connection was closed or refused at the cap
        self.evicted = 0
        self.refused = 0
        if self.cap < max_connections:
            log.info("at most %d client connections (--web.max-connections %d lowered to fit "
                     "the open-files limit)", self.cap, max_connections)

    def factory(self, inner_factory: Callable[[], Any]) -> Callable[[], GuardedProtocol]:
        def make() -> GuardedProtocol:
            if self.accept_failing and time.monotonic() - self.accept_failed_at > CALM_SECONDS:
                self.accept_failing = False
                log.warning("accepting connections again")
            return GuardedProtocol(self, inner_factory())
        return make

    def admit(self, conn: GuardedProtocol) -> bool:
        self._maybe_calm()
        if len(self.open) >= self.cap:
            self.pressed_at = time.monotonic()
            idle = next((c for c in self.open if not c.busy), None)
            if idle is None:
                self.refused += 1
                self._set_full(True, "every connection has a request in progress: new ones "
                                     "are refused")
                return False
            self.evicted += 1
            self._set_full(True, "closing the longest-idle connection for each new one")
            idle._close(b"")
            self.release(idle)
        self.open[conn] = None
        self.by_transport[conn.transport] = conn
        return True

    def touch(self, conn: GuardedProtocol) -> None:
        if conn in self.open:
            self.open.move_to_end(conn)

    def release(self, conn: GuardedProtocol) -> None:
        if conn in self.open:
            del self.open[conn]
            self.by_transport.pop(conn.transport, None)
        self._maybe_calm()

    def _maybe_calm(self) -> None:
        # back to normal only below the cap and after a quiet spell, so the log cannot flap
        if (self.full and len(self.open) < self.cap * 0.9
                and time.monotonic() - self.pressed_at > CALM_SECONDS):
            self._set_full(False, "")

    def _set_full(self, full: bool, how: str) -> None:
        if full == self.full:
            return
        self.full = full
        if full:
            log.warning("%d client connections open, the limit: %s (logged once until "
                        "the number falls)", self.cap, how)
        else:
            log.warning("client connections below the limit again (%d closed idle, %d refused "
                        "meanwhile)", self.evicted, self.refused)

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio reports accept() failures (EMFILE, ENFILE, ENOBUFS) here, once per retry:
        log the first of a run, and "accepting again" when a connection comes through."""
        if "socket.accept()" in str(context.get("message", "")):
            self.accept_failed_at = time.monotonic()
            if not self.accept_failing:
                self.accept_failing = True
                log.error("cannot accept connections: %s (logged once until it works again)",
                          context.get("exception"))
            return
        loop.default_exception_handler(context)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        conn = self.by_transport.get(request.transport)
        if conn is None:
            return await handler(request)
        conn.request_started()
        try:
            return await handler(request)
        finally:
            conn.request_finished()
