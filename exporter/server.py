"""HTTP: the telemetry path, /healthz and a landing page, with aiohttp."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.collector import SnapshotCollector
from exporter.connections import BACKLOG, ConnectionGuard
from exporter.landing import Landing
from exporter.sampler import Sampler
from exporter.selfmetrics import SelfMetrics
from exporter.webconfig import OPEN_PATHS, WebSecurity

# No endpoint takes a body; anything bigger than this is refused with 413.
MAX_REQUEST_BYTES = 16 * 1024
BODY_READ_TIMEOUT = 10.0  # seconds
WRITE_TIMEOUT = 10.0  # seconds a counted request may take to hand its answer to the client
# Renderings kept per snapshot: the plain and OpenMetrics bodies, gzipped or not, and a few
# `name[]` selections (bigger selections are rendered every time, not kept).
MAX_CACHED_BODIES = 32
MAX_CACHED_NAMES = 64
EOF = b"# EOF\n"
SAMPLER_KEY = web.AppKey("sampler", Sampler)
PATH_KEY = web.AppKey("telemetry_path", str)


async def healthz(request: web.Request) -> web.Response:
    """200 while samples are fresh; 503 before the first one or when the sampler stalls."""
    sampler = request.app[SAMPLER_KEY]
    stamp = sampler.snapshot.timestamp
    if stamp is None:
        return web.Response(status=503, text="no sample yet\n")
    age = time.time() - stamp
    if age > max(3 * sampler.interval, 5.0):
        return web.Response(status=503, text=f"last sample {age:.1f} s ago\n")
    return web.Response(text="ok\n")


@web.middleware
async def refuse_large_bodies(request: web.Request, handler):
    """GET handlers never read the body, so aiohttp's client_max_size alone would let any
    size through: refuse a declared large one at once, and read a chunked one, which raises
    413 above MAX_REQUEST_BYTES."""
    size = request.content_length
    if size is not None and size > MAX_REQUEST_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES, actual_size=size)
    if request.body_exists:
        try:  # a body trickled in byte by byte must not hold the connection for ever
            await asyncio.wait_for(request.read(), BODY_READ_TIMEOUT)
        except asyncio.TimeoutError:
            raise web.HTTPRequestTimeout() from None
    return await handler(request)


def make_registry(sampler: Sampler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(lambda: sampler.snapshot))
    return registry


def accepts_gzip(values: list[str]) -> bool:
    """Whether Accept-Encoding allows gzip (RFC 9110: a coding with q=0 is refused)."""
    for part in ",".join(values).split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        name, _, q = params.strip().partition("=")
        try:
            if name.strip().lower() != "q" or float(q) > 0:
                return True
        except ValueError:
            return True
    return False


class MetricsHandler:
    """The telemetry path. The snapshot changes once per sample, so the exposition is rendered
    (and gzipped, when asked for) once per snapshot, format and selection, and every scrape
    in between gets those bytes: many scrapers cost little. Format by content negotiation
    (text or OpenMetrics, as prometheus_client's own handler does), `name[]` filtering, and
    gzip when Accept-Encoding allows it."""

    def __init__(self, sampler: Sampler, live: SelfMetrics | None = None) -> None:
        self.sampler = sampler
        self.registry = make_registry(sampler)
        self.live = live  # the exporter's own metrics: rendered at every scrape, not cached
        self.cached_for: object = None  # the snapshot the cache holds bodies of
        self.cache: dict[tuple[str, tuple[str, ...], bool], bytes] = {}

    def _snapshot_body(self, encoder, content_type: str, names: tuple[str, ...],
                       zipped: bool) -> bytes:
        snapshot = self.sampler.snapshot
        if snapshot is not self.cached_for:
            self.cache.clear()
            self.cached_for = snapshot
        key = (content_type, names, zipped)
        body = self.cache.get(key)
        if body is None:
            registry = self.registry.restricted_registry(names) if names else self.registry
            body = encoder(registry)
            if self.live is not None and body.endswith(EOF):
                body = body[: -len(EOF)]  # OpenMetrics ends once: after the live part
            if zipped:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            if len(self.cache) < MAX_CACHED_BODIES and len(names) <= MAX_CACHED_NAMES:
                self.cache[key] = body
        return body

    async def __call__(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        names = tuple(request.query.getall("name[]", []))
        zipped = accepts_gzip(request.headers.getall(hdrs.ACCEPT_ENCODING, []))
        body = self._snapshot_body(encoder, content_type, names, zipped)
        if self.live is not None:
            live = self.live.registry
            live_body = encoder(live.restricted_registry(names) if names else live)
            # A gzip stream may hold several members (RFC 1952) and every decoder reads
            # them all: the snapshot's member is the cached one, only this small part is
            # compressed per scrape.
            body += gzip.compress(live_body, compresslevel=6, mtime=0) if zipped else live_body
        headers = {hdrs.CONTENT_TYPE: content_type, hdrs.VARY: hdrs.ACCEPT_ENCODING}
        if zipped:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)


class RequestLimit:
    """--web.max-requests: requests in flight at once, counted after authentication (a
    client without the password cannot take the scraper's place) until the response is
    written; more get 503. Each request yields to the event loop once before it is served,
    so requests that arrive together are in flight together, as they would be on threads:
    without that, on one event loop, each request would finish before the next one began
    and no limit would ever bind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @staticmethod
    async def _send(request: web.Request, response: web.StreamResponse) -> None:
        await response.prepare(request)
        await response.write_eof()

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if not self.limit or request.path in OPEN_PATHS:
            return await handler(request)
        if self.in_flight >= self.limit:
            return web.Response(status=503, text="too many concurrent requests\n",
                                headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            await asyncio.sleep(0)
            response = await handler(request)
            try:  # aiohttp skips both when it finishes the response
                await asyncio.wait_for(self._send(request, response), WRITE_TIMEOUT)
            except asyncio.TimeoutError:
                # a client that does not read its answer must not hold a place for ever
                if request.transport is not None:
                    request.transport.abort()
            return response
        finally:
            self.in_flight -= 1


def make_app(sampler: Sampler, telemetry_path: str = "/metrics",
             security: WebSecurity | None = None, live: SelfMetrics | None = None,
             max_requests: int = 0, guard: ConnectionGuard | None = None,
             landing: Landing | None = None) -> web.Application:
    # The HTTP request metrics wrap everything, so refusals are counted too; then connection
    # bookkeeping, cheap refusals (oversized bodies, authentication) and only then the limit
    # on requests in flight.
    middlewares = ([guard.middleware] if guard else []) + [refuse_large_bodies] \
        + ([security.middleware] if security else []) + [RequestLimit(max_requests).middleware]
    if live is not None and live.http is not None:
        middlewares.insert(0, live.http.middleware)
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=middlewares)
    if security:
        app.on_response_prepare.append(security.add_headers)
    app[SAMPLER_KEY] = sampler
    app[PATH_KEY] = telemetry_path
    app.router.add_get(telemetry_path, MetricsHandler(sampler, live))
    app.router.add_get("/healthz", healthz)
    if telemetry_path != "/":
        # the page's ring of recent samples is fed by the sampler from now on
        landing = landing or Landing(sampler.interval)
        sampler.listeners.append(landing.record)
        landing.routes(app, SAMPLER_KEY, PATH_KEY)
    return app


async def listen(runner: web.AppRunner, guard: ConnectionGuard, host: str | None, port: int,
                 ssl_context: ssl.SSLContext | None) -> asyncio.AbstractServer:
    """Listen with every connection behind the guard (aiohttp's TCPSite, but wrapped).
    Raises OSError when the address cannot be bound."""
    assert runner.server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(guard.exception_handler)
    return await loop.create_server(
        guard.factory(runner.server), host, port, ssl=ssl_context, backlog=BACKLOG,
        # a TLS client that never finishes its handshake is bounded like a silent one
        ssl_handshake_timeout=guard.read_header_timeout if ssl_context else None)
