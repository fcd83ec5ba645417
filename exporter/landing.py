"""The landing page (`/`) and its data (`/status.json`): live node power by component,
emissions per second, today's energy and emissions, the grid intensity in force, the
forecast's cleanest window, the collectors' and providers' state, and a small live chart.

Cheap by construction: per sample the exporter only appends one small tuple to an in-memory
ring (the chart's last minutes) and keeps the counter totals at the start of the day; the
page and its JSON are computed from the current snapshot only when requested. The page is
self-contained (inline CSS and script, the chart is SVG drawn in the browser, a Content
Security Policy that forbids loading anything from elsewhere), so it works offline and
behind the web config's TLS and basic auth like every other path.

Every number is rendered with `data-value` holding the exact value the snapshot gives, and
the page carries the snapshot's timestamp, so a test can compare it with /metrics at the
same moment (tests/test_landing.py).
"""

from __future__ import annotations

import html
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from exporter import __version__
from exporter.carbon.secrets import redact
from exporter.sampler import Sample, Snapshot

CHART_SECONDS = 600.0  # the chart's window: the last ten minutes
MAX_POINTS = 1200
JOULES_PER_KWH = 3.6e6
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True, slots=True)
class Point:
    timestamp: float
    watts: tuple[tuple[str, float], ...]  # (component, watts), in a stable order
    grams_per_second: float | None


def _totals(snap: Snapshot) -> tuple[float, float, float]:
    """(joules, operational grams, embodied grams) since the exporter started."""
    return (sum(s.joules for s in snap.energy), sum(s.grams for s in snap.energy),
            sum(g for _, _, g in snap.embodied))


def _power_by_component(snap: Snapshot) -> dict[str, float]:
    watts: dict[str, float] = {}
    for s in snap.energy:
        if s.watts is not None:
            watts[s.component] = watts.get(s.component, 0.0) + s.watts
    return watts


def _local_day(day: tuple[int, int, int]) -> tuple[float, float]:
    """Unix times of the local midnights that begin and end a date (mktime normalises the
    day after the month's last; -1: the C library decides daylight saving time)."""
    year, month, mday = day
    return (time.mktime((year, month, mday, 0, 0, 0, 0, 0, -1)),
            time.mktime((year, month, mday + 1, 0, 0, 0, 0, 0, -1)))


class Landing:
    """Keeps the ring and the day's start; renders on request."""

    def __init__(self, interval: float, started: float | None = None) -> None:
        points = int(min(MAX_POINTS, max(2, math.ceil(CHART_SECONDS / max(interval, 0.01)))))
        self.ring: deque[Point] = deque(maxlen=points)
        self.interval = interval
        self.started = time.time() if started is None else started
        self.day: tuple[int, int, int] | None = None
        # [start, end) in unix time of self.day, local time: a sample inside it needs no
        # time.localtime() to know its date
        self._day_span = (0.0, 0.0)
        self.day_start = self.started
        self.day_totals = (0.0, 0.0, 0.0)  # the counters start at 0 with the process
        self._last_totals = (0.0, 0.0, 0.0)
        self._last_stamp = self.started

    def record(self, sample: Sample) -> None:
        """Called once per sample in the sampler thread (a Sampler listener): one comparison
        and one append. The
        sampler passes the sums the page needs (a Sample), so no Snapshot is built for it."""
        totals = (sample.joules, sample.grams, sample.embodied_grams)
        stamp = sample.timestamp
        if not self._day_span[0] <= stamp < self._day_span[1]:  # the local date may differ
            day = time.localtime(stamp)[:3]
            if self.day is not None and day != self.day:
                # the first sample of a new day: what was counted before it is yesterday's
                self.day_totals, self.day_start = self._last_totals, self._last_stamp
            self.day = day
            self._day_span = _local_day(day)
        self._last_totals, self._last_stamp = totals, sample.timestamp
        self.ring.append(Point(sample.timestamp, sample.watts, sample.grams_per_second))

    # --- what the page shows ----------------------------------------------------------------

    def status(self, snap: Snapshot) -> dict[str, Any]:
        joules, operational, embodied = _totals(snap)
        day_joules, day_operational, day_embodied = self.day_totals
        intensity = snap.intensity
        grid = snap.grid
        forecast = grid.forecast_min if grid is not None else None
        now = snap.timestamp or time.time()
        return {
            "version": __version__,
            "timestamp": snap.timestamp,
            "interval": self.interval,
            "power": {
                "total": sum(_power_by_component(snap).values()),
                "components": _power_by_component(snap),
                "devices": [{"component": s.component, "device": s.device, "source": s.source,
                             "watts": s.watts} for s in snap.energy if s.watts is not None],
            },
            "emissions_rate": {"operational": snap.grams_per_second,
                               "embodied": snap.embodied_grams_per_second},
            "today": {
                "since": max(self.day_start, self.started),
                "since_start": self.day_start <= self.started,
                "timezone": time.strftime("%Z", time.localtime(now)),
                "joules": joules - day_joules,
                "kwh": (joules - day_joules) / JOULES_PER_KWH,
                "operational_grams": operational - day_operational,
                "embodied_grams": embodied - day_embodied,
            },
            "intensity": None if intensity is None else {
                "grams_per_kwh": intensity.grams_per_kwh,
                "grid_zone": intensity.grid_zone,
                "provider": intensity.provider,
                "kind": intensity.kind,
                "basis": getattr(intensity, "basis", None),
                "age_seconds": snap.intensity_age,
                "pue": snap.pue,
            },
            "forecast": None if forecast is None else {
                "grams_per_kwh": forecast.grams_per_kwh,
                "start": forecast.start,
                "provider": forecast.provider,
                "grid_zone": forecast.grid_zone,
                "saving": (1 - forecast.grams_per_kwh / intensity.grams_per_kwh)
                if intensity is not None and intensity.grams_per_kwh > 0 else None,
            },
            "collectors": [{"name": c.name, "up": c.status.up, "reason": c.status.reason,
                            "detail": redact(c.status.detail)} for c in snap.collectors],
            "providers": [{"name": p.name, "type": p.type, "source": p.description,
                           "reason": p.reason, "detail": redact(p.detail),
                           "grams_per_kwh": None if p.value is None else p.value.grams_per_kwh,
                           "basis": None if p.value is None else
                           f"{p.value.kind}, {getattr(p.value, 'basis', '')}".strip(", "),
                           "in_force": p.in_force}
                          for p in (grid.providers if grid is not None else ())],
            # list(): one C-level copy, atomic against the sampler thread's append
            "chart": [[p.timestamp, dict(p.watts), p.grams_per_second] for p in list(self.ring)],
        }

    def fragment(self, snap: Snapshot) -> str:
        """The page's changing part: the numbers, tables and the chart's data."""
        status = self.status(snap)
        # JSON inside <script>: only "</" could end it early
        data = json.dumps(_finite(status)).replace("</", "<\\/")
        return _body(status) + f'<script id=data type="application/json">{data}</script>'

    def page(self, snap: Snapshot, telemetry_path: str) -> str:
        return PAGE.format(
            version=html.escape(__version__),
            metrics=html.escape(telemetry_path.lstrip("/"), quote=True),
            body=self.fragment(snap),
            refresh=max(2.0, self.interval),
        )

    # --- HTTP -------------------------------------------------------------------------------

    def routes(self, app: web.Application, sampler_key: web.AppKey, path_key: web.AppKey) -> None:
        async def page(request: web.Request) -> web.Response:
            snap = request.app[sampler_key].snapshot
            body = (self.fragment(snap) if "fragment" in request.query
                    else self.page(snap, request.app[path_key]))
            return web.Response(text=body, content_type="text/html", headers={
                "Content-Security-Policy": CSP, "Cache-Control": "no-store"})

        async def status(request: web.Request) -> web.Response:
            text = json.dumps(_finite(self.status(request.app[sampler_key].snapshot)))
            return web.Response(text=text, content_type="application/json",
                                headers={"Cache-Control": "no-store"})
        app.router.add_get("/", page)
        app.router.add_get("/status.json", status)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _human(value: float, digits: int) -> str:
    """At least `digits` decimals, more for small values so three significant digits show
    (0.000917, not 0.0009 or 0.0)."""
    if value != 0 and abs(value) < 1:
        digits = max(digits, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{min(digits, 9)}f}"


def _num(value: float | None, unit: str, digits: int, key: str) -> str:
    """A number with its exact value in data-value (what tests compare with /metrics)."""
    if value is None:
        return f'<span class="num" data-key="{key}">n/a</span>'
    return (f'<span class="num" data-key="{key}" data-value="{value!r}">'
            f'{_human(value, digits)}</span> {html.escape(unit)}')


def _plain(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _clock(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(stamp))


def _body(s: dict[str, Any]) -> str:
    e = html.escape
    power = s["power"]
    components = "".join(
        f"<tr><td>{e(c)}</td><td class=r>{_num(w, 'W', 1, f'power.{c}')}</td></tr>"
        for c, w in sorted(power["components"].items())) or "<tr><td colspan=2>no sample yet</td></tr>"
    rate = s["emissions_rate"]
    today = s["today"]
    since = ("since the exporter started at " if today["since_start"] else "since ") + _clock(today["since"])
    i = s["intensity"]
    if i is None:
        intensity = "<p>none</p>"
    else:
        details = [f"zone {e(i['grid_zone'] or 'world average')}",
                   f"provider {e(i['provider'])}", f"{e(i['kind'])}"]
        if i["basis"]:
            details.append(f"basis {e(str(i['basis']))}")
        details.append(f"age <span data-key=\"intensity.age\" data-value=\"{i['age_seconds']!r}\">"
                       f"{_age(i['age_seconds'])}</span>")
        details.append(f"PUE {_num(i['pue'], '', 2, 'pue')}")
        intensity = (f"<p class=big>{_num(i['grams_per_kwh'], 'gCO2e/kWh', 0, 'intensity')}</p>"
                     f"<p>{', '.join(details)}</p>")
    f = s["forecast"]
    if f is None:
        forecast = "<p>no forecast (a live provider with a forecast gives one)</p>"
    else:
        when = "now" if f["start"] <= (s["timestamp"] or 0) else _clock(f["start"])
        saving = f" ({f['saving']:.0%} less than now)" if f["saving"] and f["saving"] > 0 else ""
        forecast = (f"<p class=big>{_num(f['grams_per_kwh'], 'gCO2e/kWh', 0, 'forecast')}</p>"
                    f"<p>cleanest hour of the next 24 h starts <b data-key=\"forecast.start\" "
                    f"data-value=\"{f['start']!r}\">{e(when)}</b>{e(saving)}, "
                    f"from {e(f['provider'])}</p>")
    collectors = "".join(
        f"<tr><td>{e(c['name'])}</td><td class=\"state {'ok' if c['up'] else e(c['reason'])}\">"
        f"{e(c['reason'])}</td><td>{e(c['detail'])}</td></tr>"
        for c in s["collectors"]) or "<tr><td colspan=3>no sample yet</td></tr>"
    providers = "".join(
        f"<tr><td>{e(p['name'])}</td><td>{e(p['type'])}</td><td>{e(p['source'])}</td>"
        f"<td>{e(p['reason'])}</td><td>{e(p['detail'])}</td>"
        f"<td class=r>{_plain(p['grams_per_kwh'])}</td><td>{e(p['basis'] or '')}</td>"
        f"<td>{'yes' if p['in_force'] else ''}</td></tr>"
        for p in s["providers"])
    providers_table = (
        "<h2>Intensity providers</h2><table><tr><th>provider</th><th>type</th><th>source</th>"
        "<th>state</th><th>detail</th><th>gCO2e/kWh</th><th>kind, basis</th><th>in force</th></tr>"
        f"{providers}</table>") if providers else ""
    stamp = s["timestamp"]
    taken = ("no sample yet" if stamp is None else
             "sample of " + time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp)))
    return f"""
<p class=muted id=stamp data-value="{stamp!r}">{e(taken)}</p>
<div class=cards>
 <section><h2>Node power</h2>
  <p class=big>{_num(power['total'], 'W', 1, 'power.total')}</p>
  <table>{components}</table></section>
 <section><h2>Emissions now</h2>
  <p class=big>{_num(rate['operational'], 'gCO2e/s', 0, 'rate.operational')}</p>
  <p>operational (energy x intensity x PUE); embodied share
   {_num(rate['embodied'], 'gCO2e/s', 0, 'rate.embodied')}</p></section>
 <section><h2>Today</h2>
  <p class=big>{_num(today['kwh'], 'kWh', 1, 'today.kwh')}</p>
  <p>{_num(today['operational_grams'], 'gCO2e', 1, 'today.operational')} operational,
   {_num(today['embodied_grams'], 'gCO2e', 1, 'today.embodied')} embodied, {e(since)}</p></section>
 <section><h2>Grid intensity in force</h2>{intensity}</section>
 <section><h2>Cleanest window</h2>{forecast}</section>
</div>
<h2>Power, last minutes</h2>
<svg id=chart viewBox="0 0 800 220" role="img" aria-label="node power by component"></svg>
<div id=legend></div>
<h2>Collectors</h2>
<table><tr><th>collector</th><th>state</th><th>detail</th></tr>{collectors}</table>
{providers_table}
"""


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>carbon-exporter</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px;
       padding: 0 1em; color: #1d2330; background: #fbfcfd; }}
h1 {{ font-size: 1.4em; margin-bottom: .2em; }} h2 {{ font-size: 1.05em; margin: 1em 0 .4em; }}
a {{ color: #0b62c4; }} .muted {{ color: #667; margin-top: 0; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .8em; }}
section {{ background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: .2em 1em .6em; }}
.big {{ font-size: 1.8em; font-weight: 600; margin: .2em 0; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .7em .2em 0; text-align: left;
       vertical-align: top; border-bottom: 1px solid #eef1f4; }} .r {{ text-align: right; }}
.state {{ font-weight: 600; color: #8a6d00; }} .state.ok {{ color: #187a2f; }}
.state.error, .state.permission {{ color: #b3261e; }}
#chart {{ width: 100%; max-width: 800px; height: 220px; background: #fff;
         border: 1px solid #dde3ea; border-radius: 6px; }}
#legend span {{ margin-right: 1.2em; }} #legend i {{ display: inline-block; width: .9em;
         height: .9em; margin-right: .3em; vertical-align: -1px; }}
</style></head>
<body>
<h1>carbon-exporter {version}</h1>
<p class=muted><a href="{metrics}">Metrics</a> &middot; <a href="status.json">Status (JSON)</a>
 &middot; <a href="healthz">Health</a></p>
<main id=main>{body}</main>
<script>
"use strict";
const COLOURS = {{cpu: "#1f77b4", dram: "#2ca02c", gpu: "#d62728", other: "#9467bd"}};
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs) {{
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}}
function draw(status) {{
  const svg = document.getElementById("chart");
  const legend = document.getElementById("legend");
  if (!svg) return;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  legend.textContent = "";
  const points = status.chart;
  const W = 800, H = 220, L = 48, B = 22, T = 8;
  if (points.length < 2) {{
    const t = el("text", {{x: L, y: H / 2}}); t.textContent = "collecting samples...";
    svg.appendChild(t); return;
  }}
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const components = [...new Set(points.flatMap(p => Object.keys(p[1])))].sort();
  const totals = points.map(p => Object.values(p[1]).reduce((a, b) => a + b, 0));
  const top = Math.max(1, ...totals) * 1.1;
  const x = t => L + (W - L - 4) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = v => H - B - (H - B - T) * v / top;
  for (let i = 0; i <= 4; i++) {{
    const v = top * i / 4;
    svg.appendChild(el("line", {{x1: L, x2: W - 4, y1: y(v), y2: y(v), stroke: "#eef1f4"}}));
    const label = el("text", {{x: L - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11,
                               fill: "#667"}});
    label.textContent = v.toFixed(v >= 100 ? 0 : 1) + " W"; svg.appendChild(label);
  }}
  const span = el("text", {{x: W - 4, y: H - 5, "text-anchor": "end", "font-size": 11, fill: "#667"}});
  span.textContent = "last " + Math.round((t1 - t0) / 60 * 10) / 10 + " min";
  svg.appendChild(span);
  // stacked areas, bottom to top in the legend's order
  const base = points.map(() => 0);
  for (const c of components) {{
    const upper = points.map((p, i) => base[i] + (p[1][c] || 0));
    const line = points.map((p, i) => x(p[0]).toFixed(1) + "," + y(upper[i]).toFixed(1));
    const back = points.map((p, i) => x(p[0]).toFixed(1) + "," + y(base[i]).toFixed(1)).reverse();
    const colour = COLOURS[c] || "#8c564b";
    svg.appendChild(el("polygon", {{points: line.concat(back).join(" "), fill: colour,
                                    "fill-opacity": 0.35, "data-component": c}}));
    svg.appendChild(el("polyline", {{points: line.join(" "), fill: "none", stroke: colour,
                                     "stroke-width": 1.5, "data-component": c,
                                     "data-points": points.length}}));
    upper.forEach((v, i) => base[i] = v);
    const item = document.createElement("span");
    const swatch = document.createElement("i"); swatch.style.background = colour;
    item.appendChild(swatch); item.appendChild(document.createTextNode(c));
    legend.appendChild(item);
  }}
}}
function load() {{ draw(JSON.parse(document.getElementById("data").textContent)); }}
load();
// Refresh in place: the server renders the changing part from one snapshot, the page swaps
// it in and redraws the chart from the same data. location.origin, not a relative URL: a
// page opened as http://user:pass@host/ must not put credentials into fetch().
async function refresh() {{
  try {{
    const base = location.origin + location.pathname.replace(/[^/]*$/, "");
    const answer = await fetch(base + "?fragment=1", {{cache: "no-store", credentials: "same-origin"}});
    if (!answer.ok) return;
    document.getElementById("main").innerHTML = await answer.text();
    load();
  }} catch (e) {{ /* the exporter restarted: try again at the next tick */ }}
}}
setInterval(refresh, {refresh} * 1000);
</script>
</body></html>
"""
