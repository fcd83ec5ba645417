"""Redfish source against real emulators from sushy-tools: sushy-static serving the DMTF-layout
mockup in tests/redfish/mockup (HTTP and HTTPS), and sushy-emulator for HTTP basic auth."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import resolve
from exporter.ledger import PLATFORM
from exporter.sources import ABSENT, ERROR, OK, PERMISSION
from exporter.sources.redfish import MAX_BACKOFF, RedfishSource
from tests.certs import CertificateAuthority
from tests.harness import ExporterProcess, FakeClock, free_port, http_get, require, wait_for
from tests.hwmon_fixtures import HwmonTree

MOCKUP = Path(__file__).resolve().parent / "redfish" / "mockup"


def _have_sushy() -> None:
    try:
        import sushy_tools  # noqa: F401
    except ImportError:
        require("sushy-tools is not installed (pip extra 'test')")


class Emulator:
    """A sushy-tools server on 127.0.0.1 (a child process); pause() makes it a BMC that
    accepts connections and never answers (SIGSTOP), stop() one that is gone."""

    def __init__(self, tmp: Path, args: list[str], scheme: str = "http") -> None:
        _have_sushy()
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = tmp / f"bmc-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *args, "-i", "127.0.0.1",
                                      "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log_path.read_text()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(listening, 30, "the Redfish emulator to listen")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def mockup(tmp_path) -> Path:
    copy = tmp_path / "mockup"
    shutil.copytree(MOCKUP, copy)
    return copy


def edit(mockup: Path, resource: str, **changes) -> None:
    """Change top-level properties of a mockup resource (None removes one)."""
    path = mockup / resource / "index.json"
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


@pytest.fixture
def bmc(tmp_path, mockup):
    servers: list[Emulator] = []

    def start(tls=None) -> Emulator:
        args = ["sushy_tools.static.main", "-m", str(mockup)]
        if tls is not None:
            args += ["-c", str(tls.cert), "-k", str(tls.key)]
        server = Emulator(tmp_path, args, "https" if tls is not None else "http")
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


def config(url: str, **settings):
    flags = {"redfish.url": url, "redfish.poll_interval": "1s", "redfish.timeout": "2s"}
    flags.update({k.replace("__", "."): v for k, v in settings.items()})
    return resolve(flags, None, environ={})


def polled(source: RedfishSource):
    source.poll_once()
    return source.read()


# --- where the reading comes from -------------------------------------------------------------

def test_environment_metrics_power_is_preferred(bmc):
    server = bmc()
    result = polled(RedfishSource(config(server.url)))
    assert result.status.reason == OK, result.status
    [reading] = result.readings
    assert (reading.device, reading.source, reading.domain, reading.component) == (
        "chassis-1U", "redfish", PLATFORM, None)
    assert reading.value == 374.0 and reading.counter is False
    assert "EnvironmentMetrics" in result.status.detail


def test_power_control_chassis_entry_and_never_the_cpu_subsystem(bmc, mockup):
    edit(mockup, "Chassis/1U", EnvironmentMetrics=None)
    result = polled(RedfishSource(config(bmc().url)))
    assert result.status.reason == OK, result.status
    assert result.readings[0].value == 368.0  # not 368 + 190
    assert "PowerControl" in result.status.detail


def test_power_subsystem_sums_the_supplies_input(bmc, mockup):
    edit(mockup, "Chassis/1U", EnvironmentMetrics=None, Power=None)
    result = polled(RedfishSource(config(bmc().url)))
    assert result.status.reason == OK, result.status
    assert result.readings[0].value == 377.0


def test_chassis_without_power_is_absent_with_the_places_tried(bmc, mockup):
    edit(mockup, "Chassis/1U", EnvironmentMetrics=None, Power=None, PowerSubsystem=None)
    result = polled(RedfishSource(config(bmc().url)))
    assert result.status.reason == ABSENT and not result.readings
    assert "/redfish/v1/Chassis/1U" in result.status.detail
    assert "/redfish/v1/Chassis/Enclosure" in result.status.detail


def test_value_changes_are_picked_up_by_the_next_poll(bmc, mockup):
    source = RedfishSource(config(bmc().url))
    assert polled(source).readings[0].value == 374.0
    edit(mockup, "Chassis/1U/EnvironmentMetrics", PowerWatts={"Reading": 401.5})
    assert polled(source).readings[0].value == 401.5


# --- HTTPS ------------------------------------------------------------------------------------

def test_https_with_the_ca_with_insecure_and_untrusted(tmp_path, bmc):
    ca = CertificateAuthority(tmp_path / "pki", "BMC test CA")
    server = bmc(tls=ca.issue("bmc", sans=("127.0.0.1",)))
    trusted = polled(RedfishSource(config(server.url, redfish__ca_file=str(ca.files.cert))))
    assert trusted.status.reason == OK and trusted.readings[0].value == 374.0
    insecure = polled(RedfishSource(config(server.url, redfish__insecure_skip_verify=True)))
    assert insecure.status.reason == OK
    untrusted = polled(RedfishSource(config(server.url)))
    assert untrusted.status.reason == ERROR and not untrusted.readings
    assert "not trusted" in untrusted.status.detail
    assert "redfish.ca_file" in untrusted.status.detail


# --- credentials ------------------------------------------------------------------------------

def test_bad_credentials_give_a_clear_reason_and_the_longest_back_off(tmp_path, monkeypatch):
    """sushy-emulator with an htpasswd file (bcrypt) answers 401 to a wrong password."""
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("admin:" + bcrypt.hashpw(b"right-password", bcrypt.gensalt(4)).decode()
                        + "\n")
    settings = tmp_path / "emulator.conf"
    settings.write_text(f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n")
    server = Emulator(tmp_path, ["sushy_tools.emulator.main", "--fake", "--config", str(settings)])
    user_file = tmp_path / "bmc-user"
    user_file.write_text("admin\n")
    try:
        monkeypatch.setenv("BMC_PASSWORD_TEST", "wrong-password")
        bad = RedfishSource(config(server.url, redfish__username_file=str(user_file),
                                   redfish__password_env="BMC_PASSWORD_TEST"))
        result = polled(bad)
        assert result.status.reason == PERMISSION, result.status
        assert "refused the credentials" in result.status.detail
        assert "HTTP 401" in result.status.detail
        assert "redfish.password_file" in result.status.detail
        assert "wrong-password" not in result.status.detail
        assert bad.next_delay() == MAX_BACKOFF  # retries must not lock the BMC account

        # the right password: the emulator's chassis reports no power, and says so
        monkeypatch.setenv("BMC_PASSWORD_TEST", "right-password")
        good = RedfishSource(config(server.url, redfish__username_file=str(user_file),
                                    redfish__password_env="BMC_PASSWORD_TEST"))
        result = polled(good)
        assert result.status.reason == ABSENT, result.status
        assert "no power reading" in result.status.detail
        # no credentials at all: says that none are configured
        monkeypatch.delenv("BMC_PASSWORD_TEST")
        result = polled(RedfishSource(config(server.url)))
        assert result.status.reason == PERMISSION and "none are configured" in result.status.detail
    finally:
        server.stop()


def test_credentials_only_from_files_or_environment(tmp_path):
    from exporter.config import ConfigError

    with pytest.raises(ConfigError, match="redfish.password_env: environment variable NOPE"):
        RedfishSource(config("https://127.0.0.1:1", redfish__username_env="HOME",
                             redfish__password_env="NOPE_NOT_SET"))
    with pytest.raises(ConfigError, match="unknown key redfish.password"):
        resolve({"redfish.password": "inline"}, None, environ={})


# --- a slow or failing BMC never stalls sampling ---------------------------------------------

def test_slow_bmc_does_not_block_a_read_and_failing_bmc_backs_off(bmc):
    server = bmc()
    source = RedfishSource(config(server.url, redfish__poll_interval="300ms",
                                  redfish__timeout="1s"))
    clock = FakeClock()
    source.clock = clock  # as the sampler does: the value's age is on it
    try:
        source.start()
        wait_for(lambda: source.read().readings, 10, "the first poll")
        server.pause()  # accepts connections, never answers
        # the sampler's side never waits: a read that asked the hung BMC itself would come
        # back only after the 1 s timeout, and say so
        results = [source.read() for _ in range(20)]
        assert all(r.readings and "no answer" not in r.status.detail for r in results), \
            results[-1].status
        # after max_age (3 polls) the old value is no longer used
        clock.advance(source.max_age + 0.1)
        stale = source.read()
        assert not stale.readings
        assert stale.status.reason == ERROR
        assert "old, not used" in stale.status.detail
        wait_for(lambda: "no answer within 1s" in source.read().status.detail, 10, "a timeout")
        assert source.next_delay() > source.poll_interval  # backing off
        server.resume()
        server.stop()  # now gone altogether
        wait_for(lambda: "cannot reach" in source.read().status.detail, 15, "connection refused")
        gone = source.read()  # the old value stays out of use
        assert not gone.readings and "cannot reach" in gone.status.detail
    finally:
        source.close()


def test_exporter_keeps_sampling_with_a_hung_bmc_and_the_total_follows_it_after(tmp_path, bmc):
    """A real exporter: hwmon amdgpu at 300 W as the only component, the BMC paused (hung)
    at start. Samples keep coming every interval; when the BMC answers, the node total is
    the BMC's 374 W and component="other" is the 74 W the GPU does not explain."""
    server = bmc()
    tree = HwmonTree(tmp_path / "sys")
    tree.add_amdgpu("0000:03:00.0", average_uw=300_000_000)
    server.pause()
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={tmp_path / 'proc'}",
        "--sample.interval=200ms", f"--redfish.url={server.url}", "--redfish.timeout=1s",
        "--redfish.poll-interval=500ms", "--no-collector.rapl", "--no-collector.nvml",
        "--no-collector.cpu-model", "--no-collector.dram-model", "--no-collector.attribution",
        "--carbon.intensity=400"])
    try:
        exporter.wait_ready()

        def sample_time() -> float:
            for line in exporter.metrics().splitlines():
                if line.startswith("carbon_exporter_last_sample_timestamp_seconds "):
                    return float(line.split()[1])
            return 0.0
        wait_for(sample_time, 10, "a first sample")
        wait_for(lambda: b"no answer within 1s" in http_get(exporter.url + "/")[2], 10,
                 "the BMC's timeout")
        # cycles keep coming while the BMC hangs (10 s: a hang guard, not a speed bound)
        hung_at = sample_time()
        wait_for(lambda: sample_time() >= hung_at + 1.0, 10, "samples while the BMC hangs")
        body = exporter.metrics()
        assert 'carbon_exporter_collector_up{collector="redfish"' in body
        assert "carbon_platform_power_watts{" not in body  # nothing from the BMC yet
        server.resume()

        def values() -> dict[str, float]:
            out = {}
            for line in exporter.metrics().splitlines():
                if line.startswith(("carbon_power_watts{", "carbon_platform_power_watts{")):
                    name, value = line.rsplit(" ", 1)
                    out[name] = float(value)
            return out
        other = ('carbon_power_watts{component="other",device="chassis-1U",'
                 'source="platform_remainder"}')
        found = wait_for(lambda: (v := values()).get(other) and v, 20, "the remainder series")
        assert found['carbon_platform_power_watts{device="chassis-1U",source="redfish"}'] == 374.0
        gpu = ('carbon_power_watts{component="gpu",device="gpu-0000:03:00.0",'
               'source="power_sample"}')
        assert found[gpu] == pytest.approx(300.0)
        # per sample the lanes read at slightly different times (and a late lane's reading
        # lands in the next cycle), so one sample's remainder wobbles and the cumulative
        # remainder evens it out: over a window the node's energy is the meter's
        assert 0.0 <= found[other] <= 374.0

        def energies() -> tuple[float, float, float]:
            """Node and meter energy, and the sample they are from (one scrape)."""
            node = meter = at = 0.0
            for line in exporter.metrics().splitlines():
                if line.startswith("carbon_energy_joules_total{"):
                    node += float(line.rsplit(" ", 1)[1])
                if line.startswith("carbon_platform_energy_joules_total{"):
                    meter += float(line.rsplit(" ", 1)[1])
                if line.startswith("carbon_exporter_last_sample_timestamp_seconds "):
                    at = float(line.split()[1])
            return node, meter, at
        node_before, meter_before, before = energies()
        node_after, meter_after, after = wait_for(
            lambda: (e := energies())[2] >= before + 4.0 and e, 20, "4 s of samples")
        # over the exporter's own sample times: a slow scrape does not count
        assert meter_after - meter_before == pytest.approx(374.0 * (after - before), rel=0.1)
        # one late component sample (0.2 s x 300 W) is the most the two may differ by
        assert node_after - node_before == pytest.approx(meter_after - meter_before, abs=120.0)
    finally:
        exporter.stop()
