"""The exporter's metrics about itself, on the real process: they pass `promtool check
metrics`, count HTTP answers by handler and code (refusals included), count provider fetches
by outcome, and go away with --web.disable-exporter-metrics."""

from __future__ import annotations

import base64
import concurrent.futures
import subprocess

import bcrypt
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from tests.fake_grid import FakeGrid
from tests.harness import ExporterProcess, http_get, require_tool, wait_for

PASSWORD = "s3cret"
# cost 12: a check takes long enough (~0.2 s) that concurrent bad logins pile up in flight
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()


def auth(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def start(tmp_path, *extra: str, web_config: dict | None = None, env=None) -> ExporterProcess:
    args = [f"--path.sysfs={tmp_path / 'no-sysfs'}", "--no-collector.nvml",
            "--sample.interval=200ms", *extra]
    if web_config is not None:
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(web_config))
        args.append(f"--web.config.file={path}")
    exporter = ExporterProcess(tmp_path, args, env=env)
    exporter.wait_ready()
    return exporter


def test_self_metrics_pass_promtool_check_metrics(tmp_path):
    promtool = require_tool("promtool", "prometheus")
    exporter = start(tmp_path)
    try:
        http_get(exporter.url + "/nowhere")
        text = exporter.metrics()
    finally:
        exporter.stop()
    found = families(text)
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_max_fds", "python_gc_collections", "python_info",
                 "carbon_exporter_http_requests", "carbon_exporter_http_request_duration_seconds"):
        assert name in found and found[name].samples, name
    # every family, the exporter's own and the domain ones, passes promtool's lint
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr
    assert value(text, "carbon_exporter_http_requests_total", handler="other", code="404") == 1
    assert value(text, "carbon_exporter_http_requests_total", handler="/healthz", code="200") >= 1


def test_http_requests_by_handler_and_code_count_401_and_503(tmp_path):
    exporter = start(tmp_path, "--web.max-requests=1",
                     web_config={"basic_auth_users": {"prometheus": HASH}})
    good = auth(PASSWORD)
    try:
        assert http_get(exporter.url + "/metrics")[0] == 401
        assert http_get(exporter.url + "/metrics", auth("wrong"))[0] == 401
        # good passwords in parallel: with one slot (counted after authentication) the
        # requests that arrive while one is in flight are refused with 503
        seen: set[int] = set()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                seen.update(pool.map(lambda _: http_get(exporter.url + "/metrics", good)[0],
                                     range(8)))
                if {200, 503} <= seen:
                    break
        assert {200, 503} <= seen, seen

        def counted():
            text = http_get(exporter.url + "/metrics", good)[2].decode()
            return text if value(text, "carbon_exporter_http_requests_total",
                                 handler="/metrics", code="200") else None
        text = wait_for(counted, 15, "a 200 on /metrics")
    finally:
        exporter.stop()
    # 401 and 503 were counted under the handler asked for, with the code answered
    assert value(text, "carbon_exporter_http_requests_total", handler="/metrics", code="401") >= 2
    assert value(text, "carbon_exporter_http_requests_total", handler="/metrics", code="503") >= 1
    assert value(text, "carbon_exporter_http_request_duration_seconds_count",
                 handler="/metrics") >= 3
    assert value(text, "carbon_exporter_http_requests_in_flight") == 1  # this scrape


def test_disable_exporter_metrics_leaves_only_the_domain_metrics(tmp_path):
    exporter = start(tmp_path, "--web.disable-exporter-metrics")
    try:
        text = exporter.metrics()
    finally:
        exporter.stop()
    names = set(families(text))
    assert not {n for n in names if n.startswith(("process_", "python_", "carbon_exporter_http"))}
    assert "carbon_energy_joules" in names and "carbon_exporter_collector_up" in names
    assert metrics.HTTP_REQUESTS.family_name not in names


def test_provider_fetches_by_outcome_and_latency(tmp_path):
    grid = FakeGrid()  # its JSON feed wants a token the feed is not given: 401
    try:
        config = tmp_path / "carbon.yml"
        config.write_text(yaml.safe_dump({"carbon": {"zone": "GB", "providers": [
            {"type": "ukgrid", "url": f"{grid.url}/uk", "refresh": 0.3, "timeout": 1},
            {"type": "http_json", "name": "feed", "url": f"{grid.url}/json",
             "field": "reading.co2", "refresh": 0.3, "timeout": 1, "retries": 0}]}}))
        exporter = start(tmp_path, f"--config.file={config}")
        try:
            def fetched():
                text = exporter.metrics()
                ok = value(text, "carbon_grid_provider_fetches_total", provider="ukgrid",
                           outcome="ok")
                bad = value(text, "carbon_grid_provider_fetches_total", provider="feed",
                            outcome="auth")
                return text if ok and ok >= 2 and bad and bad >= 2 else None
            text = wait_for(fetched, 20, "fetches counted by outcome")
        finally:
            exporter.stop()
    finally:
        grid.close()
    assert value(text, "carbon_grid_provider_fetch_duration_seconds_count", provider="ukgrid") >= 2
    assert value(text, "carbon_grid_provider_up", provider="feed") == 0
    assert value(text, "carbon_grid_provider_status_info", provider="feed",
                 reason="auth") == 1
