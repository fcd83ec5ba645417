"""HTTP: the telemetry path, /healthz and a landing page, with aiohttp."""

from __future__ import annotations

import time

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.collector import SnapshotCollector
from exporter.landing import Landing
from exporter.sampler import Sampler
from exporter.selfmetrics import SelfMetrics
from exporter.webconfig import WebSecurity

# No endpoint takes a body; anything bigger than this is refused with 413.
MAX_REQUEST_BYTES = 16 * 1024
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
        await request.read()
    return await handler(request)


def make_registry(sampler: Sampler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(lambda: sampler.snapshot))
    return registry


class MetricsHandler:
    """The telemetry path. The snapshot changes once per sample, so the exposition is rendered
    once per snapshot and format and every scrape in between gets those bytes: many scrapers
    cost little. Format by content negotiation (text or OpenMetrics, as prometheus_client's
    own handler does), `name[]` filtering, and gzip when Accept-Encoding allows it."""

    def __init__(self, sampler: Sampler, live: SelfMetrics | None = None) -> None:
        self.sampler = sampler
        self.registry = make_registry(sampler)
        self.live = live  # the exporter's own metrics: rendered at every scrape, not cached
        self.cache: dict[str, tuple[object, bytes]] = {}  # content type -> (snapshot, body)

    async def __call__(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        names = request.query.getall("name[]", [])
        if names:
            body = encoder(self.registry.restricted_registry(names))
        else:
            snapshot = self.sampler.snapshot
            cached = self.cache.get(content_type)
            if cached is None or cached[0] is not snapshot:
                cached = self.cache[content_type] = (snapshot, encoder(self.registry))
            body = cached[1]
        if self.live is not None:
            live = self.live.registry
            live_body = encoder(live.restricted_registry(names) if names else live)
            eof = b"# EOF\n"  # OpenMetrics ends once: drop the first part's end marker
            if body.endswith(eof):
                body = body[: -len(eof)]
            body += live_body
        response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # only when the client's Accept-Encoding allows it
        return response


def make_app(sampler: Sampler, telemetry_path: str = "/metrics",
             security: WebSecurity | None = None,
             live: SelfMetrics | None = None,
             landing: Landing | None = None) -> web.Application:
    # Cheap refusals first: oversized bodies, then auth and the concurrency limit; the HTTP
    # request metrics wrap them all, so refusals are counted too.
    middlewares = [refuse_large_bodies] + ([security.middleware] if security else [])
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
