"""A real long-term store for remote_write tests: Debian's `victoria-metrics` (single-node
VictoriaMetrics) on 127.0.0.1 with a free port and its own -storageDataPath, so it never
touches a system instance that may run on the default port."""

from __future__ import annotations

from pathlib import Path

from tests.harness import PromQLServer, free_port, require_tool


class VictoriaMetrics(PromQLServer):
    def __init__(self, tmp: Path) -> None:
        binary = require_tool("victoria-metrics", "victoria-metrics")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = f"{self.url}/api/v1/write"  # Prometheus remote_write endpoint
        self.dir = tmp / f"victoria-metrics-{self.port}"
        self.dir.mkdir()
        self.log_path = self.dir / "victoria-metrics.log"
        self._start("victoria-metrics", [
            binary, f"-storageDataPath={self.dir / 'data'}",
            f"-httpListenAddr=127.0.0.1:{self.port}", "-retentionPeriod=100y",
            # answer with what has arrived, not only what is older than 30 s (the default)
            "-search.latencyOffset=0s", "-search.disableCache",
            "-loggerLevel=WARN",
        ], "/health")

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values"))
