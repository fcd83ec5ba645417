"""The landing page in headless Chromium, against the real exporter on a GPU node's fixture
trees with a live provider that has a forecast: every number on the page equals /metrics at
the same moment (the same sample), the chart draws, and the page works behind basic auth.

`python -m tests.test_landing docs/landing.png` writes the README's screenshot."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import bcrypt
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import FleetNode
from tests.harness import http_get, require_tool, wait_for

PASSWORD = "landing-page"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
HOURLY_PROFILE = {"hourly": [300 + 10 * abs(hour - 12) for hour in range(24)]}


class Dom(HTMLParser):
    """The values a rendered page shows: data-key -> data-value, the sample stamp, the
    collectors table and the chart's polylines."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, float] = {}
        self.stamp: float | None = None
        self.polylines: list[dict[str, str]] = []
        self.polygons = 0
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "stamp" and a.get("data-value") not in (None, "None"):
            self.stamp = float(a["data-value"])
        if "data-key" in a and "data-value" in a:
            self.values[a["data-key"]] = float(a["data-value"])
        if tag == "polyline":
            self.polylines.append(a)
        if tag == "polygon":
            self.polygons += 1
        if tag == "tr":
            self._row = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


def chromium(binary: str, url: str, tmp: Path, *, screenshot: Path | None = None) -> str:
    """The DOM after the page's script ran (or a screenshot); console errors fail."""
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=1500", "--window-size=1100,1250"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # no script error, no CSP violation, nothing fetched elsewhere
    return result.stdout


def metrics(url: str) -> dict[str, list]:
    families: dict[str, list] = defaultdict(list)
    for family in text_string_to_metric_families(http_get(url + "/metrics")[2].decode()):
        for s in family.samples:
            families[s.name].append(s)
    return families


def total(found: dict[str, list], name: str, **labels) -> float:
    return sum(s.value for s in found[name]
               if all(s.labels.get(k) == v for k, v in labels.items()))


class Node:
    """A GPU node on fixture trees whose counters move in the background."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.node = FleetNode(tmp / "node", "gpu", 0)
        self.exporter_started = time.time()
        profile = tmp / "intensity.json"
        profile.write_text(json.dumps(HOURLY_PROFILE))
        config = tmp / "carbon.yml"
        config.write_text(yaml.safe_dump({"carbon": {"providers": [
            {"type": "file", "path": str(profile)}]}, "embodied": {"server_model": "gpu-server"}}))
        self.node.start(tmp, "http://127.0.0.1:9", interval="2s",
                        extra=[f"--config.file={config}", "--kubernetes.metadata=none", *extra])
        assert self.node.exporter is not None
        self.exporter = self.node.exporter
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._advance, daemon=True)
        self.thread.start()

    def _advance(self) -> None:
        while not self.stop_event.wait(0.5):
            self.node.advance(0.5)

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        self.exporter.stop()


@pytest.fixture
def node(tmp_path):
    running = Node(tmp_path)
    running.exporter.wait_ready()
    yield running
    running.close()


def test_landing_page_numbers_equal_metrics_and_the_chart_draws(node, tmp_path):
    binary = require_tool("chromium", "chromium")
    url = node.exporter.url
    # a few samples for the chart
    wait_for(lambda: len(json.loads(http_get(url + "/status.json")[2])["chart"]) >= 4, 30,
             "four samples in the chart's ring")

    def same_moment():
        dom = Dom()
        dom.feed(chromium(binary, url + "/", tmp_path))
        found = metrics(url)
        stamp = found["carbon_exporter_last_sample_timestamp_seconds"][0].value
        return (dom, found) if dom.stamp == stamp else None
    dom, found = wait_for(same_moment, 60, "a page and /metrics from the same sample", 0.2)
    v = dom.values
    approx = lambda x: pytest.approx(x, rel=1e-12, abs=1e-12)  # noqa: E731 - sums in another order

    power = found["carbon_power_watts"]
    assert v["power.total"] == approx(sum(s.value for s in power))
    components = {s.labels["component"] for s in power}
    assert components == {"cpu", "dram", "gpu"}
    for component in components:
        assert v[f"power.{component}"] == approx(total(found, "carbon_power_watts",
                                                       component=component))
    assert v["rate.operational"] == total(found, "carbon_emissions_grams_per_second",
                                          scope="operational")
    assert v["rate.embodied"] == total(found, "carbon_emissions_grams_per_second",
                                       scope="embodied")
    # the exporter started today (unless the test ran over midnight): today = since start
    if time.localtime(dom.stamp)[:3] == time.localtime(node.exporter_started)[:3]:
        assert v["today.kwh"] * 3.6e6 == approx(total(found, "carbon_energy_joules_total"))
        assert v["today.operational"] == approx(total(found, "carbon_emissions_grams_total",
                                                      scope="operational"))
        assert v["today.embodied"] == approx(total(found, "carbon_emissions_grams_total",
                                                   scope="embodied"))
    (intensity,) = found["carbon_grid_intensity_grams_per_kwh"]
    assert v["intensity"] == intensity.value and intensity.labels["provider"] == "file"
    assert v["intensity.age"] == found["carbon_grid_intensity_age_seconds"][0].value
    assert v["pue"] == found["carbon_pue_ratio"][0].value
    assert v["forecast"] == found["carbon_grid_intensity_forecast_min_grams_per_kwh"][0].value
    assert v["forecast.start"] == \
        found["carbon_grid_intensity_forecast_min_start_timestamp_seconds"][0].value
    # the collectors' state is the reason in their status_info series
    reasons = {s.labels["collector"]: s.labels["reason"]
               for s in found["carbon_exporter_collector_status_info"]}
    shown = {row[0]: row[1] for row in dom.rows if len(row) == 3 and row[0] in reasons}
    assert shown == reasons

    # the chart: one stacked line per component, through every sample in the ring
    lines = {p["data-component"]: p for p in dom.polylines}
    assert set(lines) == components and dom.polygons == len(components)
    for line in lines.values():
        points = line["points"].split()
        assert len(points) == int(line["data-points"]) >= 4
        ys = {float(p.split(",")[1]) for p in points}
        assert len(ys) > 1 or min(ys) < 190  # drawn above the axis, not flat on it
    shot = tmp_path / "landing.png"
    chromium(binary, url + "/", tmp_path, screenshot=shot)
    assert coloured_pixels(shot) > 20_000  # the chart's areas, the state colours


def coloured_pixels(png: Path) -> int:
    from matplotlib import image
    pixels = image.imread(str(png))[..., :3]
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 0.15).sum())


def test_landing_page_works_behind_basic_auth(tmp_path):
    binary = require_tool("chromium", "chromium")
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"admin": HASH}}))
    running = Node(tmp_path, f"--web.config.file={web}")
    try:
        url = running.exporter.url
        wait_for(lambda: http_get(url + "/healthz")[0] == 200, 30, "/healthz")
        good = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
        for path in ("/", "/status.json", "/?fragment=1"):
            assert http_get(url + path)[0] == 401, path
            assert http_get(url + path, good)[0] == 200, path
        wait_for(lambda: len(json.loads(http_get(url + "/status.json", good)[2])["chart"]) >= 3,
                 30, "three samples in the chart's ring")
        # the browser opens the page with credentials; its script refreshes with them
        dom = Dom()
        dom.feed(chromium(binary, url.replace("http://", f"http://admin:{PASSWORD}@") + "/",
                          tmp_path))
        assert dom.values["power.total"] > 0 and dom.polylines
    finally:
        running.close()


def main(path: str) -> None:
    """Write a screenshot of the page on the fixture GPU node (for the README)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        running = Node(Path(tmp))
        try:
            running.exporter.wait_ready()
            time.sleep(40)  # a chart worth looking at
            chromium("chromium", running.exporter.url + "/", Path(tmp), screenshot=Path(path))
        finally:
            running.close()


if __name__ == "__main__":
    main(sys.argv[1])


@pytest.mark.parametrize("zone, midnight", [
    ("Europe/Berlin", (2026, 3, 29)),  # the day clocks go forward: 23 hours long
    ("Europe/Berlin", (2026, 10, 25)),  # back: 25 hours
    ("America/Sao_Paulo", (2026, 11, 30)),
])
def test_today_starts_at_local_midnight(monkeypatch, zone: str, midnight: tuple[int, int, int]
                                        ) -> None:
    """"Today" restarts with the first sample of a new local date, and only then: what was
    counted up to the last sample before midnight is yesterday's; a clock stepped back
    across midnight starts the day again from the date it shows."""
    from exporter.landing import Landing
    from exporter.sampler import Sample

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        year, month, mday = midnight
        start = time.mktime((year, month, mday, 0, 0, 0, 0, 0, -1))
        end = time.mktime((year, month, mday + 1, 0, 0, 0, 0, 0, -1))
        landing = Landing(1.0, started=start - 7200)

        def record(stamp: float, joules: float) -> None:
            landing.record(Sample(stamp, joules, joules / 10, joules / 100, (), None))

        record(start - 3600, 1.0)
        record(start - 1, 2.0)
        assert landing.day_totals == (0.0, 0.0, 0.0)
        record(start, 3.0)  # the first sample of the date
        assert landing.day_totals == (2.0, 0.2, 0.02) and landing.day_start == start - 1
        for stamp, joules in ((start + 3600, 4.0), (end - 1, 5.0)):  # the same date all along
            record(stamp, joules)
            assert landing.day_totals == (2.0, 0.2, 0.02)
        record(end, 6.0)
        assert landing.day_totals == (5.0, 0.5, 0.05) and landing.day_start == end - 1
        record(end - 10, 7.0)  # stepped back into the day before: a date change again
        assert landing.day_totals == (6.0, 0.6, 0.06) and landing.day_start == end
        assert (end - start) / 3600 == {(2026, 3, 29): 23, (2026, 10, 25): 25}.get(midnight, 24)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
