"""Daemon mode, the run's side: ask the node's exporter (over its local Unix socket) to put
this process into a cgroup named after the run, and at the end, for the run's totals from
the exporter's own sample-by-sample split.
"""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request

from exporter.carbon import Intensity
from exporter.runs.account import ComponentTotal, IntensitySeen, RunAccount
from exporter.runs.protocol import DEFAULT_SOCKET, ProtocolError, request


class DaemonUnavailable(Exception):
    pass


def daemon_up(url: str, timeout: float = 1.0) -> bool:
    """Any HTTP answer from /healthz means an exporter listens there (auth may refuse)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def intensity_from_wire(i: dict) -> Intensity:
    value = Intensity(float(i["grams_per_kwh"]), i["grid_zone"], i["provider"], i["kind"])
    if i.get("basis") and "basis" in Intensity.__dataclass_fields__:  # a newer Intensity
        value = dataclasses.replace(value, **{"basis": i["basis"]})
    return value


def account_from_wire(data: dict) -> RunAccount:
    account = RunAccount()
    for component, c in data.get("components", {}).items():
        account.components[component] = ComponentTotal(
            float(c["joules"]), float(c["grams"]), float(c["embodied_grams"]),
            dict(c.get("devices", {})))
    account.node_joules = {k: float(v) for k, v in data.get("node_joules", {}).items()}
    account.node_grams = float(data.get("node_grams", 0.0))
    account.idle_joules = float(data.get("idle_joules", 0.0))
    account.samples = int(data.get("samples", 0))
    account.seconds = float(data.get("seconds", 0.0))
    account.peak_watts = float(data.get("peak_watts", 0.0))
    account.pue = float(data.get("pue", 1.0))
    account.intensities = [IntensitySeen(intensity_from_wire(i), float(i["joules"]))
                           for i in data.get("intensities", [])]
    return account


class DaemonTracker:
    mode = "daemon"

    def __init__(self, name: str, url: str, socket_path: str | None,
                 interval: float = 1.0) -> None:
        self.name = name
        self.url = url
        self.socket = socket_path or DEFAULT_SOCKET
        if not daemon_up(url):
            raise DaemonUnavailable(f"no exporter answers at {url}")
        try:
            hello = request(self.socket, {"op": "hello"}, timeout=5.0)
        except ProtocolError as exc:
            raise DaemonUnavailable(str(exc)) from None
        self.interval = float(hello.get("interval", interval))
        self.method = ("daemon: the exporter's own split of each sample to the run's cgroup "
                       f"({hello.get('cgroup_version', '?')}), as for any workload")
        self.run_id = ""
        self.cgroup: str | None = None
        self.workload_job: str | None = name
        self._statuses: list[tuple[str, str, str]] = []
        self._intensity: Intensity | None = None

    def start(self) -> None:
        try:
            answer = request(self.socket, {"op": "start", "name": self.name}, timeout=10.0)
        except ProtocolError as exc:
            raise RuntimeError(f"daemon mode: {exc}") from None
        self.run_id = answer["run_id"]
        self.cgroup = answer.get("cgroup")
        self.workload_job = answer.get("workload_job", self.name)

    def stop(self) -> RunAccount:
        answer = request(self.socket, {"op": "end", "run_id": self.run_id},
                         timeout=max(30.0, 5 * self.interval))
        self._statuses = [tuple(s) for s in answer.get("collectors", [])]
        i = answer.get("intensity")
        if i:
            self._intensity = intensity_from_wire(i)
        return account_from_wire(answer["account"])

    def statuses(self) -> list[tuple[str, str, str]]:
        return self._statuses

    def intensity_state(self) -> Intensity | None:
        return self._intensity
