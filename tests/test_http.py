"""HTTP against the real exporter process on fixture hardware: formats, negotiation, gzip,
health, landing page, the metric contract rendered, and abuse that must end in a 4xx while
the process keeps serving and no counted energy is lost."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, http_get, wait_for
from tests.hwmon_fixtures import HwmonTree

OPENMETRICS = "application/openmetrics-text;version=1.0.0"


def write_gpus(path: Path, energy_mj: int, **extra) -> None:
    path.write_text(json.dumps({"driver": "550.54.15", **extra, "gpus": [
        {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-aaaa", "pci": "00000000:18:00.0",
         "energy_mj": energy_mj, "power_mw": 300000, "limit_mw": 700000},
        {"name": "Tesla P100-PCIE-16GB", "uuid": "GPU-bbbb", "pci": "00000000:3B:00.0",
         "energy_mj": None, "power_mw": 150000, "limit_mw": 250000},
    ]}))


class Node:
    def __init__(self, tmp: Path) -> None:
        self.tree = intel_two_socket(tmp / "sys")
        # an ACPI power meter: the node total is the meter's, the rest is component="other"
        HwmonTree(tmp / "sys").add_acpi_power_meter(microwatts=1_500_000_000)
        self.procfs = ProcfsTree(tmp / "proc")
        self.gpu_state = tmp / "nvml.json"
        self.gpu_mj = 5_000_000
        write_gpus(self.gpu_state, self.gpu_mj)
        self.exporter = ExporterProcess(tmp, [
            f"--path.sysfs={self.tree.sysfs}", f"--path.procfs={self.procfs.procfs}",
            "--sample.interval=100ms", "--carbon.intensity=300", "--carbon.pue=1.2",
            "--power.budget-watts=2000",  # renders carbon_power_budget_watts
        ], fake_nvml_state=self.gpu_state)

    @property
    def url(self) -> str:
        return self.exporter.url

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.exporter.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def raw(self, data: bytes) -> int:
        """Send bytes as they are; the status code of the answer."""
        with socket.create_connection(("127.0.0.1", self.exporter.port), timeout=10) as sock:
            sock.sendall(data)
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1."), answer[:200]
        return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    node = Node(tmp_path_factory.mktemp("http"))
    try:
        node.exporter.wait_ready()
        yield node
    finally:
        node.exporter.stop()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def energy_totals(node: Node) -> dict[tuple, float]:
    return {key: value for key, value in samples(node.exporter.metrics()).items()
            if key[0] in ("carbon_energy_joules_total", "carbon_emissions_grams_total",
                          "carbon_rapl_domain_joules_total")}


def test_text_format(node):
    # the meter's remainder needs two meter readings: wait for the second sample
    wait_for(lambda: b'source="platform_remainder"}' in http_get(node.url + "/metrics")[2], 10,
             "the platform remainder")
    status, headers, body = http_get(node.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["carbon_energy_joules"].type == "counter"
    assert families["carbon_pue_ratio"].samples[0].value == 1.2
    intensity = families["carbon_grid_intensity_grams_per_kwh"].samples[0]
    assert intensity.value == 300.0 and intensity.labels["provider"] == "static"
    devices = {s.labels["device"]: s.labels["source"]
               for s in families["carbon_energy_joules"].samples}
    assert devices == {"package-0": "rapl", "package-1": "rapl", "gpu-0": "nvml",
                       "gpu-1": "power_sample", "power_meter-ACPI000D:00": "platform_remainder"}


def test_openmetrics_by_content_negotiation(node):
    status, headers, body = http_get(node.url + "/metrics", {"Accept": OPENMETRICS})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["carbon_energy_joules"].type == "counter"
    assert any(s.name == "carbon_energy_joules_total" for s in families["carbon_energy_joules"].samples)


def test_gzip_when_asked(node):
    status, headers, body = http_get(node.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("Content-Encoding") == "gzip"
    text = gzip.decompress(body).decode()
    assert "carbon_energy_joules_total{" in text
    plain_status, plain_headers, plain = http_get(node.url + "/metrics")
    assert "Content-Encoding" not in plain_headers
    assert plain.startswith(b"# HELP")


def test_healthz(node):
    status, _, body = http_get(node.url + "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_landing_page_lists_collectors_and_reasons(node):
    status, headers, body = http_get(node.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    for collector, reason in (("rapl", "ok"), ("nvml", "ok"), ("cpu-model", "superseded"),
                              ("dram-model", "superseded")):
        assert f"<td>{collector}</td><td class=\"state {'ok' if reason == 'ok' else reason}\">{reason}</td>" in page
    assert "RAPL package counters measure the CPU" in page
    assert 'href="metrics"' in page  # relative: works behind a path-prefixing proxy
    assert 'data-key="intensity" data-value="300.0">300</span> gCO2e/kWh' in page


def test_landing_page_says_why_sources_are_absent(tmp_path):
    state = tmp_path / "nvml.json"
    write_gpus(state, 0, init_error="NVML_ERROR_DRIVER_NOT_LOADED")
    procfs = ProcfsTree(tmp_path / "proc")
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tmp_path / 'empty-sys'}", f"--path.procfs={procfs.procfs}",
        "--sample.interval=100ms"], fake_nvml_state=state)
    try:
        exporter.wait_ready()
        page = http_get(exporter.url + "/")[2].decode()
        up = samples(exporter.metrics())
    finally:
        exporter.stop()
    assert '<td>rapl</td><td class="state absent">absent</td><td>no RAPL zones under' in page
    assert '<td>nvml</td><td class="state absent">absent</td><td>no NVIDIA driver' in page
    assert ('<td>cpu-model</td><td class="state ok">ok</td>' in page
            and '<td>dram-model</td><td class="state ok">ok</td>' in page)
    assert up[("carbon_exporter_collector_up", (("collector", "rapl"),))] == 0
    assert up[("carbon_exporter_collector_status_info", (("collector", "rapl"), ("reason", "absent")))] == 1
    assert up[("carbon_exporter_collector_up", (("collector", "cpu-model"),))] == 1
    assert up[("carbon_exporter_collector_status_info", (("collector", "cpu-model"), ("reason", "ok")))] == 1
    assert any(k[0] == "carbon_energy_joules_total" and ("source", "model") in k[1] for k in up)


def test_every_contract_metric_is_rendered(node):
    # a counter going back on the psys zone: the glitch counter gets a series too
    psys = node.tree.zones["intel-rapl:2"]
    psys.energy_uj //= 2
    node.tree.write(psys)

    # these need a live intensity provider (this node has a static one): tests/test_carbon_*.py
    live_only = {metrics.GRID_FORECAST_MIN, metrics.GRID_FORECAST_MIN_START, metrics.GRID_INDEX,
                 metrics.GRID_PROVIDER_UP, metrics.GRID_PROVIDER_STATUS,
                 metrics.GRID_PROVIDER_FETCHES, metrics.GRID_PROVIDER_FETCH_DURATION}
    # RAPL measures this node, so no model is in use: tests/test_models_machines.py
    live_only.add(metrics.MODEL_INFO)

    def rendered() -> dict[str, object] | None:
        families = {f.name: f for f in text_string_to_metric_families(node.exporter.metrics())}
        missing = [s.name for s in metrics.ALL if s not in live_only and
                   (s.family_name not in families or not families[s.family_name].samples)]
        if missing or not any(s.value for s in families["carbon_exporter_energy_glitches"].samples):
            return None
        return families

    families = wait_for(rendered, 10, "every metric in exporter.metrics.ALL, and the glitch")
    for spec in metrics.ALL:
        if spec in live_only:
            continue
        family = families[spec.family_name]
        assert family.type == spec.type, spec.name
        assert family.documentation == spec.help, spec.name
        for sample in family.samples:
            bucket = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == set(spec.labels) | bucket, (spec.name, sample.labels)
            if spec.type == "counter":
                assert sample.name in (spec.name, spec.family_name + "_created")
    glitches = families["carbon_exporter_energy_glitches"].samples
    assert {(s.labels["device"], s.labels["reason"]) for s in glitches if s.value} == {("psys", "reset")}


def _chunked(size: int) -> bytes:
    body = b"z" * size
    return (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + f"{size:x}\r\n".encode() + body + b"\r\n0\r\n\r\n")


ODD_REQUESTS = [
    # (what, how, expected status: an int, or a range for "some 4xx")
    ("dot-dot path", lambda n: n.request("GET", "/../etc/passwd"), 404),
    ("encoded dot-dot", lambda n: n.request("GET", "/%2e%2e/%2e%2e/etc/passwd"), 404),
    ("NUL in path", lambda n: n.request("GET", "/metrics%00"), 404),
    ("raw NUL in path", lambda n: n.raw(b"GET /metrics\x00 HTTP/1.1\r\nHost: x\r\n\r\n"), range(400, 500)),
    ("very long path", lambda n: n.request("GET", "/" + "a" * 20000), range(400, 500)),
    ("long path under the line limit", lambda n: n.request("GET", "/" + "b" * 4000), 404),
    ("POST", lambda n: n.request("POST", "/metrics"), 405),
    ("PUT", lambda n: n.request("PUT", "/metrics", body=b"x"), 405),
    ("DELETE", lambda n: n.request("DELETE", "/metrics"), 405),
    ("DELETE on /", lambda n: n.request("DELETE", "/"), 405),
    ("body over 16 KiB", lambda n: n.request("GET", "/metrics", body=b"x" * (17 * 1024)), 413),
    ("chunked body over 16 KiB", lambda n: n.raw(_chunked(40 * 1024)), 413),
    ("declared huge body", lambda n: n.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc"), 413),
    ("small body is ignored", lambda n: n.request("GET", "/metrics", body=b"x" * 100), 200),
    ("oversized header", lambda n: n.request("GET", "/metrics", headers={"X-Big": "a" * 20000}),
     range(400, 500)),
    ("too many headers", lambda n: n.request(
        "GET", "/metrics", headers={f"X-H{i}": "v" for i in range(500)}), range(400, 500)),
    ("header without colon", lambda n: n.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nNo Colon Here\r\n\r\n"), 400),
    ("control characters in a header", lambda n: n.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: \x01\x02;;=,\r\n\r\n"), 400),
    ("negative Content-Length", lambda n: n.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"), 400),
    ("Content-Length with chunked", lambda n: n.raw(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"), 400),
    ("garbage request line", lambda n: n.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
     range(400, 500)),
    ("unknown method", lambda n: n.raw(b"BREW /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), range(400, 500)),
    ("HTTP/9", lambda n: n.raw(b"GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n"), range(400, 500)),
    ("binary header value", lambda n: n.raw(
        b"GET /healthz HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n"), range(200, 500)),
    ("odd Accept", lambda n: n.request("GET", "/metrics", headers={"Accept": "*/*;q=oops, text/html"}), 200),
    ("odd query", lambda n: n.request("GET", "/metrics?%zz=%%&name[]=%00"), 200),
]


def test_odd_requests_get_4xx_and_nothing_is_lost(node):
    before = energy_totals(node)
    injected = 0.0
    failures = []
    for what, send, expected in ODD_REQUESTS:
        node.tree.advance("intel-rapl:0", 0.5)  # energy keeps flowing during the abuse
        injected += 0.5
        result = send(node)
        status = result[0] if isinstance(result, tuple) else result
        ok = status in expected if isinstance(expected, range) else status == expected
        if not ok:
            failures.append(f"{what}: got {status}, expected {expected}")
        assert node.exporter.proc.poll() is None, f"exporter died after {what}"
    assert not failures, failures

    assert http_get(node.url + "/healthz")[0] == 200
    key = ("carbon_energy_joules_total",
           (("component", "cpu"), ("device", "package-0"), ("source", "rapl")))
    wait_for(lambda: energy_totals(node)[key] >= before[key] + injected - 1e-6, 10,
             "the injected joules in package-0's total")
    after = energy_totals(node)
    assert after[key] == pytest.approx(before[key] + injected, abs=1e-6)
    for series, value in before.items():  # nothing went backwards
        assert after[series] >= value, series
