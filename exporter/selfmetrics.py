"""The exporter's metrics about itself, like node_exporter's: process (CPU, memory, open fds)
and Python GC collectors, HTTP requests by handler and code, and the intensity providers'
fetches by outcome and latency.

These change with every request or fetch, so unlike the sample snapshot (rendered once per
sample and cached, see server.MetricsHandler) they are rendered at each scrape, from a
registry of their own. `--web.disable-exporter-metrics` leaves out the process, Python and
HTTP families, as node_exporter's flag of that name leaves out process_*, go_* and promhttp_*.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge,
    Histogram, disable_created_metrics,
)

from exporter import metrics
from exporter.metrics import MetricSpec

# Request latencies of a cached exposition are sub-millisecond; refusals and TLS handshakes
# are not: buckets from 0.5 ms to 10 s.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Provider APIs answer in tens to hundreds of milliseconds; timeouts default to 10 s.
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OTHER_HANDLER = "other"  # unknown paths: one label value, whatever is asked


def _counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    return Counter(spec.family_name, spec.help, spec.labels, registry=registry)


def _histogram(spec: MetricSpec, registry: CollectorRegistry, buckets) -> Histogram:
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=buckets)


class FetchMetrics:
    """Requests to intensity providers; the provider chain calls observe() per attempt."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.fetches = _counter(metrics.GRID_PROVIDER_FETCHES, registry)
        self.duration = _histogram(metrics.GRID_PROVIDER_FETCH_DURATION, registry, FETCH_BUCKETS)

    def observe(self, provider: str, outcome: str, seconds: float) -> None:
        self.fetches.labels(provider, outcome).inc()
        self.duration.labels(provider).observe(seconds)


class HttpMetrics:
    """An aiohttp middleware counting every answer by handler and code. It goes first, so
    refusals by the later middlewares (413, 401, 403, 503) are counted too."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = _counter(metrics.HTTP_REQUESTS, registry)
        self.duration = _histogram(metrics.HTTP_DURATION, registry, HTTP_BUCKETS)
        self.in_flight = Gauge(metrics.HTTP_IN_FLIGHT.name, metrics.HTTP_IN_FLIGHT.help,
                               registry=registry)

    @staticmethod
    def handler_name(request: web.Request) -> str:
        resource = request.match_info.route.resource
        return resource.canonical if resource is not None else OTHER_HANDLER

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        started = time.perf_counter()
        code = 500
        self.in_flight.inc()
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            self.in_flight.dec()
            name = self.handler_name(request)
            self.requests.labels(name, str(code)).inc()
            self.duration.labels(name).observe(time.perf_counter() - started)


class SelfMetrics:
    """One registry rendered at every scrape: provider fetches always, the rest unless
    disabled."""

    def __init__(self, exporter_metrics: bool = True) -> None:
        disable_created_metrics()  # no *_created series: node_exporter has none either
        self.registry = CollectorRegistry(auto_describe=True)
        self.fetch = FetchMetrics(self.registry)
        self.http: HttpMetrics | None = None
        if exporter_metrics:
            self.http = HttpMetrics(self.registry)
            # prometheus_client's own collectors, registered on our registry instead of the
            # global one: process_* (CPU seconds, RSS, virtual memory, open and max fds,
            # start time), python_gc_* (collections and objects per generation), python_info.
            for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
                self.registry.register(collector)
