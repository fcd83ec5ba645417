"""A real long-term store for remote_write tests: Debian's `victoria-metrics` (single-node
VictoriaMetrics) on 127.0.0.1 with a free port and its own -storageDataPath, so it never
touches a system instance that may run on the default port."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path

from tests.harness import free_port, http_get, require_tool, wait_for


class VictoriaMetrics:
    def __init__(self, tmp: Path) -> None:
        binary = require_tool("victoria-metrics", "victoria-metrics")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = f"{self.url}/api/v1/write"  # Prometheus remote_write endpoint
        self.dir = tmp / f"victoria-metrics-{self.port}"
        self.dir.mkdir()
        self.log_path = self.dir / "victoria-metrics.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([
            binary, f"-storageDataPath={self.dir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
            # answer with what has arrived, not only what is older than 30 s (the default)
            "-search.latencyOffset=0s", "-search.disableCache",
            "-loggerLevel=WARN",
        ], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, "victoria-metrics /health")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"victoria-metrics exited:\n{self.log_path.read_text()}")
        return http_get(self.url + "/health", timeout=1)[0] == 200

    def api(self, path: str, **params) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http_get(url, timeout=30)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {payload}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def memory_bytes(self) -> float:
        """Resident memory of the store process (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
