"""`carbon-exporter report` against a real Prometheus loaded with known history (promtool
blocks from tests/history.py): totals, data quality and what-if to the gram, the HTML in
headless Chromium, the JSON schema, and bad input."""

from __future__ import annotations

import io
import json
import math
import shutil
import socket
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jsonschema
import pytest

from exporter.carbon import grid_dataset
from exporter.report import cli as report_cli
from exporter.report.compute import counter_increase
from exporter.report.render_json import schema
from tests import history as h
from tests.harness import ROOT, PrometheusServer, free_port, require_tool, wait_for

WINDOW = ["--from", "2024-03-01T00:00:00Z", "--to", "2024-03-01T04:00:00Z"]
KWH = 3.6e6
GRAM = 1e-3  # "to the gram", with room only for float rounding


@pytest.fixture(scope="module")
def history_blocks(tmp_path_factory) -> Path:
    """TSDB blocks of tests/history.py, made by promtool."""
    require_tool("prometheus", "prometheus")
    require_tool("promtool", "prometheus")
    tmp = tmp_path_factory.mktemp("history")
    source = tmp / "history.om"
    source.write_text(h.openmetrics())
    blocks = tmp / "blocks"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source),
                    str(blocks)], check=True, capture_output=True, timeout=60)
    return blocks


@pytest.fixture(scope="module")
def prometheus(history_blocks, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    data = tmp / "data"
    shutil.copytree(history_blocks, data)  # each server owns (and locks) its data dir
    server = PrometheusServer(tmp, [], data_dir=data)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium():
    return require_tool("chromium", "chromium")


def report(*args: str) -> tuple[int, str, str]:
    """Run the report in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with redirect_stdout(stdout), redirect_stderr(err):
        try:
            code = report_cli.main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    stdout.flush()
    out.write(stdout.buffer.getvalue().decode())
    return code, out.getvalue(), err.getvalue()


def json_report(prometheus, *args: str) -> dict:
    code, out, err = report("--prometheus", prometheus.url, *WINDOW, "--format", "json", *args)
    assert code == 0, err
    document = json.loads(out)
    jsonschema.Draft202012Validator(schema()).validate(document)
    return document


def rows(document: dict) -> dict[str, dict]:
    return {r["scenario"]: r for r in document["what_if"]["rows"]}


def test_node_report_totals_quality_and_what_if_to_the_gram(prometheus):
    # 1 h chunks: the samples on chunk boundaries must be counted once.
    doc = json_report(prometheus, "--selector", 'job="carbon-exporter"', "--chunk", "1h")
    joules = {d: h.device_joules(d) for d in h.DEVICES}
    grams = {d: h.device_grams(d) for d in h.DEVICES}
    total_joules = math.fsum(joules.values())
    assert total_joules == 1.44e6 + 300 * (4 * 3600 - 300) + 144e3 + 50 * (4 * 3600 - 30)
    totals = doc["totals"]
    assert totals["energy_joules"] == pytest.approx(total_joules, abs=1e-6)
    assert totals["operational_grams"] == pytest.approx(math.fsum(grams.values()), abs=GRAM)
    assert totals["embodied_grams"] == pytest.approx(h.EMBODIED_A * 4 * 3600, abs=GRAM)
    facility = {n: math.fsum(j * h.PUE[n] for d, j in joules.items() if d.node == n)
                for n in h.PUE}
    assert totals["facility_energy_kwh"] * KWH == pytest.approx(sum(facility.values()))
    assert totals["pue"] == {"available": True, "min": 1.1, "mean": pytest.approx(1.15),
                             "max": 1.2}
    by_component = {r["component"]: r for r in doc["breakdown"]["component"]}
    assert by_component["gpu"]["operational_grams"] == pytest.approx(
        grams[h.DEVICES[1]], abs=GRAM)
    by_node = {r["instance"]: r for r in doc["breakdown"]["node"]}
    assert by_node[h.NODE_B]["energy_kwh"] * KWH == pytest.approx(50 * (4 * 3600 - 30))
    assert by_node[h.NODE_B]["embodied_grams"] is None
    pods = {r["pod"]: r for r in doc["breakdown"]["workload"]["rows"]}
    assert pods["train-1"]["operational_grams"] == pytest.approx(105.0, abs=GRAM)

    intensity = doc["intensity"]
    assert (intensity["min"], intensity["max"]) == (50.0, 400.0)
    assert intensity["mean"] == pytest.approx((241.25 + 50) / 2)
    assert intensity["zones"] == ["DE", "FR"]
    assert intensity["bases"] == ["lifecycle", "unknown"]
    assert {(s["provider"], s["basis"]) for s in intensity["series"]} == {
        ("electricitymaps", "lifecycle"), ("static", "unknown")}

    quality = doc["data_quality"]
    counted = joules[h.DEVICES[0]] + joules[h.DEVICES[1]]
    assert quality["counter_share"] == pytest.approx(counted / total_joules)
    assert quality["model_share"] == pytest.approx(1 - counted / total_joules)
    # no platform meter in this history: the totals are the components' sum
    assert (quality["totals_basis"], quality["platform_remainder_share"]) == ("components", 0.0)
    assert quality["gaps"] == [{"job": h.JOB, "instance": h.NODE_A,
                                "start": "2024-03-01T01:30:00Z", "end": "2024-03-01T01:40:00Z",
                                "seconds": 600.0, "missing_scrapes": 9}]
    assert quality["counter_resets"] == 1
    assert quality["models"] == [
        {"instance": node, "collector": c, "method": m, "basis": b} for node, c, m, b in h.MODELS]
    assert quality["collector_failures"] == [{
        "instance": h.NODE_A, "collector": "nvml", "reason": "error",
        "start": "2024-03-01T03:30:00Z", "end": "2024-03-01T03:35:00Z", "seconds": 300.0}]
    assert {(a["instance"], a["collector"]) for a in quality["absent_collectors"]} == {
        (h.NODE_B, "rapl"), (h.NODE_B, "nvml")}
    assert quality["provider_failures"] == [{
        "instance": h.NODE_A, "provider": "electricitymaps", "reason": "timeout",
        "start": "2024-03-01T02:01:00Z", "end": "2024-03-01T03:21:00Z", "seconds": 4800.0}]
    stale = quality["stale_intensity"]
    assert [(p["instance"], p["start"], p["end"]) for p in stale["periods"]] == [
        (h.NODE_A, "2024-03-01T03:00:00Z", "2024-03-01T03:21:00Z")]
    assert stale["energy_kwh"] * KWH == pytest.approx(410 * 21 * 60)

    what_if = rows(doc)
    hourly_a = h.hourly_intensity(h.NODE_A)
    assert hourly_a == [400.0, 300.0, 100.0, 165.0]
    # Both nodes used energy in all four hours: the four lowest hours are all of them.
    assert what_if["lowest-intensity hours"]["operational_grams"] == pytest.approx(
        facility[h.NODE_A] / KWH * sum(hourly_a) / 4 + facility[h.NODE_B] / KWH * 50, abs=GRAM)
    assert what_if["lowest-intensity hour"]["operational_grams"] == pytest.approx(
        facility[h.NODE_A] / KWH * 100 + facility[h.NODE_B] / KWH * 50, abs=GRAM)
    forecast = what_if["forecast minimum (next 24 h)"]
    assert forecast["available"] is False and h.NODE_B in forecast["note"]
    for zone in ("WORLD", "FR", "DE", "PL"):
        assert what_if[f"zone {zone}"]["operational_grams"] == pytest.approx(
            sum(facility.values()) / KWH * grid_dataset()[zone].grams_per_kwh, abs=GRAM)
    methodology = doc["methodology"]
    assert methodology["exporter_versions"] == ["0.1.0"]
    assert methodology["observed"]["pue"] == [1.1, 1.2]
    datasets = {d["file"]: d for d in methodology["datasets"]}
    grid = datasets["exporter/data/grid_intensity.csv"]
    assert grid["rows"] == len(grid_dataset()) and grid["world_grams_per_kwh"] == 473.05
    assert sum(grid["years"].values()) == len(grid_dataset()) and "Ember" in grid["source"]
    assert "exporter/data/cpu_power.csv" in datasets


def test_workload_report_by_namespace(prometheus):
    doc = json_report(prometheus, "--namespace", "ml", "--what-if-zones", "FR,DE")
    assert doc["query"]["scope"] == "workload"
    assert [t["instance"] for t in doc["query"]["targets"]] == [h.NODE_A]
    totals = doc["totals"]
    assert totals["energy_kwh"] * KWH == pytest.approx(250 * 3600)
    # 30 min at 400 g/kWh and 30 min at 300 g/kWh, PUE 1.2
    assert totals["operational_grams"] == pytest.approx(0.125 * 1.2 * (400 + 300), abs=GRAM)
    assert totals["embodied_grams"] is None
    assert any("embodied emissions not available" in n for n in totals["notes"])
    assert doc["data_quality"]["energy_basis"] == "nodes of the selected workloads"
    assert doc["data_quality"]["model_share"] == pytest.approx(144e3 / (1.44e6 + 4.23e6 + 144e3))
    facility_kwh = 250 * 3600 * 1.2 / KWH
    what_if = rows(doc)
    assert what_if["as measured"]["grams_per_kwh"] == pytest.approx(350.0)
    # Energy in two hours (00:30-01:30): the two lowest hours are 02:00 (100) and 03:00 (165).
    assert what_if["lowest-intensity hours"]["operational_grams"] == pytest.approx(
        facility_kwh * (100 + 165) / 2, abs=GRAM)
    assert what_if["lowest-intensity hour"]["operational_grams"] == pytest.approx(
        facility_kwh * 100, abs=GRAM)
    assert what_if["forecast minimum (next 24 h)"]["operational_grams"] == pytest.approx(
        facility_kwh * h.FORECAST_MIN_A, abs=GRAM)
    assert what_if["zone FR"]["operational_grams"] == pytest.approx(
        facility_kwh * grid_dataset()["FR"].grams_per_kwh, abs=GRAM)
    assert "zone WORLD" not in what_if


def _coloured_pixels(png: Path) -> int:
    """Pixels with a clear hue: charts draw them, text and table rules are grey."""
    from matplotlib import image
    pixels = image.imread(str(png))[..., :3]
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return int((spread > 0.25).sum())


def _chromium_screenshot(binary: str, page: Path, tmp: Path) -> tuple[Path, list[str]]:
    shot = tmp / f"{page.stem}.png"
    result = subprocess.run([
        binary, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp / ('profile-' + page.stem)}",
        "--enable-logging=stderr", "--v=0", "--window-size=1100,4200",
        f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # Console messages (script errors, CSP violations, failed loads) are logged as CONSOLE.
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return shot, console


def test_html_report_renders_in_chromium(prometheus, chromium, tmp_path):
    page = tmp_path / "report.html"
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "report", "--prometheus", prometheus.url,
         "--node", h.NODE_A, *WINDOW, "--format", "html", "--output", str(page)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    assert html.count('src="data:image/svg+xml;base64,') == 3
    assert "http://" not in html.replace(prometheus.url, "")  # nothing to fetch
    shot, console = _chromium_screenshot(chromium, page, tmp_path)
    assert console == []
    assert _coloured_pixels(shot) > 20_000

    # The checks above can fail: a page whose charts do not load and that breaks its
    # content security policy is caught by both.
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace('src="data:image/svg+xml;base64,',
                                   'src="http://127.0.0.1:9/chart.svg#'))
    shot, console = _chromium_screenshot(chromium, broken, tmp_path)
    assert console and _coloured_pixels(shot) < 1_000


def test_markdown_report_writes_images_beside_it(prometheus, tmp_path):
    output = tmp_path / "ml.md"
    code, _, err = report("--prometheus", prometheus.url, "--namespace", "ml", *WINDOW,
                          "--format", "md", "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    assert "| operational emissions | 105.0 gCO2e |" in text
    for name in ("power", "emissions", "intensity"):
        assert f"](ml_files/{name}.png)" in text
        assert (tmp_path / "ml_files" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml.md", "ml_files"]


def test_json_schema_rejects_a_document_missing_totals(prometheus):
    doc = json_report(prometheus, "--pod", "train-1")
    jsonschema.Draft202012Validator.check_schema(schema())
    version = schema()["properties"]["schema_version"]["const"]
    assert doc["schema_version"] == version
    assert f"**schema version {version}**" in (ROOT / "README.md").read_text()
    del doc["totals"]["operational_grams"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema()).validate(doc)


class SilentServer:
    """Accepts connections and never answers: a Prometheus stuck on a query."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("case", ["unreachable", "no match", "empty window", "no data",
                                  "after the data", "timeout"])
def test_bad_input_one_line_error_and_no_file(case, prometheus, tmp_path):
    output = tmp_path / "report.json"
    output.write_text("previous report\n")
    silent = SilentServer() if case == "timeout" else None
    url = {"unreachable": f"http://127.0.0.1:{free_port()}",
           "timeout": silent.url if silent else ""}.get(case, prometheus.url)
    window = {"empty window": ["--from", "2024-03-01T04:00:00Z", "--to",
                               "2024-03-01T04:00:00Z"],
              "no data": ["--from", "2020-01-01T00:00:00Z", "--to", "2020-01-02T00:00:00Z"],
              # The last samples are at 04:30, inside the lookback for a baseline only.
              "after the data": ["--from", "2024-03-01T04:31:00Z", "--to", "2024-03-01T05:00:00Z"],
              }.get(case, WINDOW)
    selector = ["--namespace", "does-not-exist"] if case == "no match" else ["--node", h.NODE_A]
    try:
        code, out, err = report("--prometheus", url, *selector, *window, "--format", "json",
                                "--output", str(output), "--query-timeout", "1s")
    finally:
        if silent:
            silent.close()
    expected = {"unreachable": "cannot reach Prometheus", "no match": "matches no",
                "empty window": "empty window", "no data": "matches no",
                "after the data": "matches no",
                "timeout": "timed out"}[case]
    assert code != 0
    assert err.count("\n") == 1 and err.startswith("carbon-exporter report: error: "), err
    assert expected in err
    assert out == ""
    assert output.read_text() == "previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_time_and_selector_parsing():
    now = 1_709_265_600.0
    assert report_cli.parse_time("30d", now) == now - 30 * 86400
    assert report_cli.parse_time("2024-03-01T00:00:00Z", now) == h.T0
    assert report_cli.parse_time("2024-03-01T01:00:00+01:00", now) == h.T0
    with pytest.raises(report_cli.UsageError, match="time zone"):
        report_cli.parse_time("2024-03-01T00:00:00", now)
    assert report_cli.parse_matchers('{namespace="ml", pod=~"train-.*"}') == [
        'namespace="ml"', 'pod=~"train-.*"']
    with pytest.raises(report_cli.UsageError, match="label matchers"):
        report_cli.parse_matchers("namespace=ml")
    reset = counter_increase([(0, 5.0), (10, 8.0), (20, 2.0), (30, 4.0)], 0, 30)
    assert (reset.total, reset.resets) == (3.0 + 2.0 + 2.0, 1)


def test_secured_prometheus_with_tls_and_basic_auth(history_blocks, tmp_path):
    """Prometheus's own --web.config.file: TLS from a throwaway CA and a bcrypt user."""
    import bcrypt
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess\n")
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(json.dumps({  # JSON is YAML
        "tls_server_config": {"cert_file": str(tmp_path / "server.pem"),
                              "key_file": str(tmp_path / "server.key")},
        "basic_auth_users": {"audit": hashed}}))
    (tmp_path / "prometheus.yml").write_text("global: {}\n")
    shutil.copytree(history_blocks, tmp_path / "data")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([
        require_tool("prometheus", "prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}", "--storage.tsdb.retention.time=100y",
        f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web}",
        "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
    secured = ["--prometheus", url, "--prometheus.ca-file", str(tmp_path / "ca.pem"),
               "--prometheus.username", "audit"]
    try:
        def ready():
            code, out, _ = report(*secured, "--prometheus.password-file",
                                  str(tmp_path / "pw"), "--pod", "train-1", *WINDOW,
                                  "--format", "json")
            return code == 0 and json.loads(out)
        doc = wait_for(ready, 30, "secured prometheus")
        assert doc["totals"]["energy_kwh"] * KWH == pytest.approx(250 * 3600)

        code, _, err = report(*secured, "--prometheus.password-file", str(tmp_path / "wrong"),
                              "--pod", "train-1", *WINDOW, "--format", "json")
        assert code == 1 and "refused the request (HTTP 401)" in err and err.count("\n") == 1
        code, _, err = report("--prometheus", url, "--pod", "train-1", *WINDOW)
        assert code == 1 and "cannot reach Prometheus" in err and "CERTIFICATE" in err.upper()
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_bearer_token_and_post_queries_reach_the_server(tmp_path):
    """What goes over the wire: a bearer token from its file, queries as POST forms with the
    server-side timeout, and an API error turned into one line."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs

    seen: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            seen.append((self.headers.get("Authorization", ""), parse_qs(body)))
            payload = json.dumps({"status": "error", "errorType": "bad_data",
                                  "error": "parse error at char 3"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    try:
        code, _, err = report("--prometheus", f"http://127.0.0.1:{server.server_port}",
                              "--prometheus.bearer-token-file", str(token), "--node", "a",
                              *WINDOW, "--query-timeout", "7s")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 1
    assert err.strip().endswith("HTTP 400: bad_data: parse error at char 3"), err
    authorization, form = seen[0]
    assert authorization == "Bearer t0ken"
    assert form["timeout"] == ["7s"]
    assert form["query"][0].startswith('carbon_energy_joules_total{instance="a"}[')


def test_progress_bar_only_on_a_terminal():
    from exporter.report.promapi import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown, hidden = Terminal(), io.StringIO()
    for stream in (shown, hidden):
        bar = Progress(4, stream)
        for _ in range(4):
            bar.step("q")
        bar.close()
    assert "[" + "#" * 30 + "] 4/4" in shown.getvalue()
    assert shown.getvalue().endswith("\r") and hidden.getvalue() == ""


def test_report_reads_as_a_new_user_expects(prometheus, tmp_path):
    """Report polish: the cumulative chart runs from 0 at --from to the totals at --to, on the
    tables' buckets; one unit per table column (grams while small); the same number printed
    one way; every bundled dataset with its source and licence; no caption repeating a chart's
    own title."""
    doc = json_report(prometheus, "--node", h.NODE_A)
    series, totals = doc["series"], doc["totals"]
    assert series["t"][0] == h.START
    assert series["cumulative_operational_grams"][-1] == pytest.approx(
        totals["operational_grams"], abs=GRAM)
    assert series["cumulative_embodied_grams"][-1] == pytest.approx(
        totals["embodied_grams"], abs=GRAM)

    output = tmp_path / "node.md"
    code, _, err = report("--prometheus", prometheus.url, "--node", h.NODE_A, *WINDOW,
                          "--format", "md", "--output", str(output))
    assert code == 0, err
    text = output.read_text()
    for table in text.split("\n\n"):
        lines = [line for line in table.splitlines() if line.startswith("|")]
        if len(lines) < 3:
            continue
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
        for column in zip(*cells):
            units = {c.split()[-1] for c in column if c.endswith(("gCO2e", "kgCO2e"))}
            assert len(units) <= 1, (lines[0], units)  # never 985.0 gCO2e above 1.192 kgCO2e
    # small totals in grams, the PUE printed the same way in Totals and Methodology
    assert "| total emissions | 612.8 gCO2e |" in text
    assert "PUE applied: 1.200" in text and "Observed settings: PUE 1.200;" in text
    datasets = [line for line in text.splitlines() if line.startswith("- Dataset ")]
    assert len(datasets) == len(list((ROOT / "exporter" / "data").glob("*.csv")))
    for line in datasets:
        source = line.split("Source: ", 1)[1].split(". Licence: ")[0] if "Source: " in line else ""
        assert source.strip(" .") and "Licence: " in line, line

    page = tmp_path / "node.html"
    code, _, err = report("--prometheus", prometheus.url, "--node", h.NODE_A, *WINDOW,
                          "--format", "html", "--output", str(page))
    assert code == 0, err
    html = page.read_text()
    assert html.count("<img") == 3 and "<figcaption" not in html


def test_cumulative_chart_spans_the_window_exactly():
    """The emissions chart starts at 0 on --from and ends on --to even when the window is not
    a whole number of buckets (the last bucket is cut at --to)."""
    from matplotlib import pyplot as plt

    from exporter.report import charts
    document = {
        "query": {"from": "2024-03-01T00:00:00Z", "to": "2024-03-01T00:50:00Z"},
        "series": {"bucket_seconds": 1200.0, "t": [1709251200.0, 1709252400.0, 1709253600.0],
                   "power_watts": {"cpu": [10.0, 10.0, 10.0]},
                   "cumulative_operational_grams": [1.0, 2.0, 2.5],
                   "cumulative_embodied_grams": None, "intensity": []}}
    seen = {}
    original = plt.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        seen[kwargs.get("label")] = (list(x), list(y))
        return original(self, x, y, *args, **kwargs)
    plt.Axes.plot = spy
    try:
        images = charts.render_all(document, "svg")
    finally:
        plt.Axes.plot = original
    assert set(images) == {"power", "emissions"}
    x, y = seen["operational"]
    from matplotlib.dates import date2num
    assert y == [0.0, 1.0, 2.0, 2.5]
    assert x[0] == pytest.approx(date2num(charts._dt(1709251200.0)))
    assert x[-1] == pytest.approx(date2num(charts._dt(1709254200.0)))  # --to, not 01:00
