"""End to end, real components: the real exporter sampling a fixture powercap tree every
second, a real Prometheus scraping it every 15 s with the shipped rule files, and a real
Alertmanager (Debian prometheus-alertmanager) sending to a webhook receiver in this test.

A 5-second burst above the configured budget (power.budget_watts) arrives at the receiver as
CarbonPowerAboveBudget, although no scrape falls inside it; a 5-second burst below the budget
sends nothing.

Shortened for the test, and only here: the rule groups without their own interval are
evaluated every 15 s instead of the shipped prometheus.yml's 1m (so the test waits less),
and Alertmanager's group_wait is 1 s instead of 1m. Scrape interval, rule files, peak window
(the default 1m) and the alert expressions are the shipped ones.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.fixtures import PowercapTree, ProcfsTree
from tests.harness import (
    ROOT, ExporterProcess, PrometheusServer, ServerProcess, free_port, require_tool, wait_for,
)
from tests.power_load import PowerLoad

RULE_FILES = [ROOT / "prometheus" / "rules" / "carbon.rules.yml",
              ROOT / "prometheus" / "rules" / "sci.rules.yml",
              ROOT / "prometheus" / "alerts" / "carbon.alerts.yml"]
BUDGET = 150.0  # W, the node's budget in the exporter's config
BASE = 100.0  # W the fixture node draws between bursts


class Receiver:
    """A webhook receiver: every notification Alertmanager POSTs, as parsed JSON."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str) -> list[dict]:
        return [alert for n in list(self.notifications) for alert in n["alerts"]
                if alert["labels"].get("alertname") == name]

    def stop(self) -> None:
        self.server.shutdown()


class Alertmanager(ServerProcess):
    """Debian's prometheus-alertmanager, one receiver (the webhook), no clustering."""

    def __init__(self, tmp: Path, webhook: str) -> None:
        binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory = tmp / f"alertmanager-{self.port}"
        directory.mkdir()
        config = {
            "route": {"receiver": "test", "group_by": ["alertname", "instance"],
                      "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "test", "webhook_configs": [
                {"url": webhook, "send_resolved": False}]}],
        }
        (directory / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.log_path = directory / "alertmanager.log"
        self._start("alertmanager", [
            binary, f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=", "--log.level=warn",
        ], "/-/ready")


def _peak(prom: PrometheusServer) -> float:
    result = prom.query("max_over_time(carbon_power_peak_watts[20s])")
    return float(result[0]["value"][1]) if result else 0.0


@pytest.mark.usefixtures("prometheus_required")
def test_a_five_second_burst_above_budget_reaches_alertmanager(tmp_path):
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone("intel-rapl:0", "package-0")
    procfs = ProcfsTree(tmp_path / "proc")
    config = tmp_path / "exporter.yml"
    config.write_text(yaml.safe_dump({"power": {"budget_watts": BUDGET}}))
    receiver = Receiver()
    alertmanager = prom = None
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}", "--sample.interval=1s",
        "--no-collector.nvml", "--no-collector.cpu-model", "--no-collector.dram-model",
        "--no-collector.attribution", f"--config.file={config}", "--carbon.intensity=300"])
    try:
        with PowerLoad(tree, "intel-rapl:0", BASE) as load:
            exporter.wait_ready()
            alertmanager = Alertmanager(tmp_path, receiver.url)
            prom = PrometheusServer(tmp_path, [], config={
                "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
                "rule_files": [str(p) for p in RULE_FILES],
                "alerting": {"alertmanagers": [{"static_configs": [
                    {"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]},
                "scrape_configs": [{"job_name": "carbon-exporter", "static_configs": [
                    {"targets": [f"127.0.0.1:{exporter.port}"]}]}],
            })
            wait_for(lambda: prom.query("carbon_power_budget_watts"), 40, "a first scrape")
            assert _peak(prom) < BUDGET - 20  # the node's steady draw

            # below the budget: the burst is scraped (through the peak), nothing is sent
            load.burst(BUDGET - 10, 5.0)
            wait_for(lambda: _peak(prom) > BUDGET - 15, 30, "the below-budget burst scraped")
            time.sleep(35)  # two rule evaluations and Alertmanager's group_wait
            assert not prom.query('ALERTS{alertname="CarbonPowerAboveBudget"}')
            assert receiver.alerts("CarbonPowerAboveBudget") == []

            # above the budget: arrives at the receiver, named and labelled
            burst_at = time.time()
            load.burst(BUDGET + 100, 5.0)
            wait_for(lambda: receiver.alerts("CarbonPowerAboveBudget"), 90,
                     "CarbonPowerAboveBudget at the webhook receiver")
            arrived = time.time() - burst_at
        (alert,) = receiver.alerts("CarbonPowerAboveBudget")
        assert alert["status"] == "firing"
        assert alert["labels"] == {"alertname": "CarbonPowerAboveBudget", "severity": "warning",
                                   "job": "carbon-exporter",
                                   "instance": f"127.0.0.1:{exporter.port}"}
        assert alert["annotations"]["runbook_url"].endswith("runbook.md#carbonpowerabovebudget")
        drew = re.search(r"drew ([0-9.]+)W", alert["annotations"]["description"])
        assert drew and 240 < float(drew.group(1)) < 265, alert["annotations"]["description"]
        assert arrived < 75, f"{arrived:.0f} s from the burst to the receiver"
    finally:
        if prom is not None:
            prom.stop()
        if alertmanager is not None:
            alertmanager.stop()
        receiver.stop()
        assert exporter.stop() == 0, exporter.output()
