"""Real processes for integration tests: the carbon-exporter daemon and a Prometheus server
(Debian's /usr/bin/prometheus), both on 127.0.0.1 with free ports, stopped at teardown."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"


class FakeClock:
    """A monotonic clock a test moves by hand: sources stamp readings with it (Source.clock,
    set by the sampler), so a test advances time instead of sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Timeline:
    """Injected time for asyncio code (the provider chain): a monotonic and a wall FakeClock
    and a `sleep` that parks the caller until the test moves time past its deadline, so a
    test says "an hour passes" instead of sleeping. Real I/O (HTTP on 127.0.0.1) still takes
    real time: settle() waits for it, under a generous hang guard."""

    def __init__(self, wall: float = 1_780_000_000.0, start: float = 1000.0) -> None:
        self.clock = FakeClock(start)
        self.wall = FakeClock(wall)  # a fixed unix time: no hour boundary races a test
        self.delays: list[tuple[str, float]] = []  # (task name, seconds) per sleep, in order
        self._parked: dict[asyncio.Task, tuple[float, asyncio.Future]] = {}
        self._tasks: list[asyncio.Task] = []
        self._changed: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    async def sleep(self, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.delays.append((task.get_name(), delay))
        woken = asyncio.get_running_loop().create_future()
        self._parked[task] = (self.clock() + max(0.0, delay), woken)
        self._event().set()
        try:
            await woken
        finally:
            self._parked.pop(task, None)

    def watch(self, tasks: list[asyncio.Task]) -> None:
        """The tasks that run on this timeline (settle() waits for each to park or end)."""
        self._tasks = tasks
        for task in tasks:
            task.add_done_callback(lambda _task: self._event().set())

    async def settle(self, guard: float = 30.0) -> None:
        """Until every watched task is parked in sleep() or done: their I/O has finished."""
        changed = self._event()
        async with asyncio.timeout(guard):  # a hang guard, not a speed bound
            while not all(t.done() or t in self._parked for t in self._tasks):
                changed.clear()
                await changed.wait()

    async def advance(self, seconds: float) -> None:
        """Move both clocks by `seconds`, waking each sleeper at its deadline, in order, and
        letting what it starts finish (settle) before the next."""
        end = self.clock() + seconds
        await self.settle()
        while True:
            due = [deadline for deadline, _ in self._parked.values() if deadline <= end]
            if not due:
                break
            self._move_to(min(due))
            for task, (deadline, woken) in list(self._parked.items()):
                if deadline <= self.clock():
                    del self._parked[task]  # awake: settle() waits until it parks again
                    woken.set_result(None)
            await self.settle()
        self._move_to(end)

    def _move_to(self, at: float) -> None:
        step = max(0.0, at - self.clock())
        self.clock.advance(step)
        self.wall.advance(step)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0):
    """(status, headers, body bytes); HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling until the deadline
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class ExporterProcess:
    """`python -m exporter` as a child process; fake_nvml_state puts tests/fakes first on the
    path so `import pynvml` finds the fake (driven by the JSON file in FAKE_NVML_STATE)."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None,
                 fake_nvml_state: Path | None = None, preexec_fn=None) -> None:
        self.port = free_port()
        self.log_path = tmp / f"exporter-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
        environ.update(env or {})
        if fake_nvml_state is not None:
            environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES), environ.get("PYTHONPATH")]))
            environ["FAKE_NVML_STATE"] = str(fake_nvml_state)
        self.cmd = [sys.executable, "-m", "exporter", f"--web.listen-address=127.0.0.1:{self.port}", *args]
        if fake_nvml_state is not None:
            # The fake stands for the driver too: imported before the exporter starts, so the
            # exporter's check for libnvidia-ml.so.1 (which no CI machine has) is left to it,
            # as for any pynvml a process already imported.
            self.cmd[1:3] = ["-c", "import pynvml, runpy; "
                             "runpy.run_module('exporter', run_name='__main__', alter_sys=True)"]
        self.log = open(self.log_path, "wb")
        # preexec_fn: run in the child before exec (drop privileges, kernel restrictions).
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=environ, cwd=ROOT, preexec_fn=preexec_fn)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited with {self.proc.returncode}:\n{self.output()}")
            return http_get(self.url + "/healthz", timeout=1)[0] == 200
        wait_for(healthy, timeout, "exporter /healthz")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        status, _, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return body.decode()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def require(message: str) -> None:
    """Something the tests need is missing: in CI (CI=true) a failure, since scripts/test.sh
    installs everything; elsewhere a skip that says what to install."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (scripts/test.sh installs it)")
    pytest.skip(message + ": run ./scripts/test.sh")


def require_tool(binary: str, package: str) -> str:
    """Path of a program the tests need (see require())."""
    path = shutil.which(binary)
    if path is None:
        require(f"{binary} is not installed (Debian package {package})")
    return path


class ServerProcess:
    """A real server binary on 127.0.0.1 (Prometheus, VictoriaMetrics, Alertmanager): started
    with its output in a log file, waited on until its readiness endpoint answers 200, and
    stopped (terminate, then kill) at teardown."""

    url: str
    log_path: Path

    def _start(self, name: str, argv: list[str], ready_path: str, timeout: float = 30.0) -> None:
        self._name = name
        self._ready_url = self.url + ready_path
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, timeout, f"{name} {ready_path}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:  # fail with the log, not after the whole timeout
            raise RuntimeError(f"{self._name} exited:\n{self.log_path.read_text()}")
        return http_get(self._ready_url, timeout=1)[0] == 200

    def memory_bytes(self) -> float:
        """Resident memory of the server process (VmRSS)."""
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


class PromQLServer(ServerProcess):
    """A server with the Prometheus HTTP query API (Prometheus itself, VictoriaMetrics)."""

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


class PrometheusServer(PromQLServer):
    """A real Prometheus scraping `targets` every `interval`, loading `rule_files`.
    data_dir: serve an existing TSDB (e.g. blocks made by promtool) instead of a fresh one;
    retention is then unlimited so that old history is not deleted at start-up.
    config: a whole prometheus.yml (as a dict) instead of the one built from the rest;
    extra_config: top-level keys added to either (e.g. remote_write)."""

    def __init__(self, tmp: Path, targets: list[str], interval: str = "1s",
                 rule_files: list[Path] | None = None, job: str = "carbon-exporter",
                 data_dir: Path | None = None, config: dict | None = None,
                 extra_config: dict | None = None) -> None:
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed: run ./scripts/test.sh, which installs it")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp / f"prometheus-{self.port}"
        self.dir.mkdir()
        config = config or {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}]
            if targets else [],
        }
        if rule_files:
            config["rule_files"] = [str(p) for p in rule_files]
        config.update(extra_config or {})  # e.g. remote_write
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "prometheus.log"
        self._start("prometheus", [
            binary, f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={data_dir or self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle", "--log.level=warn",
            *(["--storage.tsdb.retention.time=100y"] if data_dir else []),
        ], "/-/ready")

    def scalar(self, expr: str, at: float | None = None) -> float:
        result = self.query(expr, at)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])



def read_as_nobody(read: Callable[[], dict], failed: dict) -> dict:
    """read() in a forked child that has dropped root to nobody (chmod does not stop root);
    its dict comes back through a pipe, or `failed` with the exception's repr as detail."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            payload = read()
        except BaseException as exc:
            payload = {**failed, "detail": repr(exc)}
        os.write(write_fd, json.dumps(payload).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)
