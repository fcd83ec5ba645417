"""HTTP: the telemetry path, /healthz and a landing page, with aiohttp."""

from __future__ import annotations

import html
import time

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from exporter import __version__
from exporter.carbon.secrets import redact
from exporter.collector import SnapshotCollector
from exporter.sampler import Sampler

# No endpoint takes a body; anything bigger than this is refused with 413.
MAX_REQUEST_BYTES = 16 * 1024
SAMPLER_KEY = web.AppKey("sampler", Sampler)
PATH_KEY = web.AppKey("telemetry_path", str)


async def landing(request: web.Request) -> web.Response:
    sampler = request.app[SAMPLER_KEY]
    snap = sampler.snapshot
    path = request.app[PATH_KEY]
    rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.status.reason)}</td>"
        f"<td>{html.escape(c.status.detail)}</td></tr>"
        for c in snap.collectors
    ) or "<tr><td colspan=3>no sample yet</td></tr>"
    intensity = snap.intensity
    carbon = (
        f"{intensity.grams_per_kwh:g} gCO2e/kWh, zone {html.escape(intensity.grid_zone or '-')}, "
        f"provider {html.escape(intensity.provider)}, PUE {snap.pue:g}"
        if intensity else "none"
    )
    grid = getattr(snap, "grid", None)
    providers = "".join(
        f"<tr><td>{html.escape(p.name)}</td><td>{html.escape(p.type)}</td>"
        f"<td>{html.escape(p.description)}</td><td>{html.escape(p.reason)}</td>"
        f"<td>{html.escape(redact(p.detail))}</td>"
        f"<td>{'' if p.value is None else f'{p.value.grams_per_kwh:g}'}</td>"
        f"<td>{'yes' if p.in_force else ''}</td></tr>"
        for p in (grid.providers if grid is not None else ())
    )
    if providers:
        carbon += ("<table border=\"1\" cellpadding=\"4\"><tr><th>provider</th><th>type</th>"
                   "<th>source</th><th>state</th><th>detail</th><th>gCO2e/kWh</th>"
                   f"<th>in force</th></tr>{providers}</table>")
    body = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>carbon-exporter</title></head>
<body>
<h1>carbon-exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(path)}">Metrics</a> &middot; <a href="/healthz">Health</a></p>
<h2>Collectors</h2>
<table border="1" cellpadding="4"><tr><th>collector</th><th>state</th><th>detail</th></tr>{rows}</table>
<h2>Carbon intensity</h2><p>{carbon}</p>
</body></html>
"""
    return web.Response(text=body, content_type="text/html")


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


def make_registry(sampler: Sampler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(lambda: sampler.snapshot))
    return registry


def make_app(sampler: Sampler, telemetry_path: str = "/metrics") -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[SAMPLER_KEY] = sampler
    app[PATH_KEY] = telemetry_path
    metrics_handler = make_aiohttp_handler(make_registry(sampler))
    app.router.add_get(telemetry_path, metrics_handler)
    app.router.add_get("/healthz", healthz)
    if telemetry_path != "/":
        app.router.add_get("/", landing)
    return app
