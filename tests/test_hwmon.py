"""hwmon source over fixture trees in the kernel's layout (tests/hwmon_fixtures.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from exporter.ledger import PLATFORM, Ledger
from exporter.sources import ABSENT, ERROR, OK, PERMISSION
from exporter.sources.hwmon import HwmonSource
from tests.harness import FakeClock, read_as_nobody
from tests.hwmon_fixtures import HwmonTree


def test_acpi_power_meter_is_the_platform_reading(tmp_path):
    tree = HwmonTree(tmp_path)
    tree.add_cpu_temperature()
    tree.add_acpi_power_meter(microwatts=412_000_000)
    result = HwmonSource(tree.sysfs).read()
    assert result.status.reason == OK, result.status
    [reading] = result.readings
    assert (reading.device, reading.source, reading.domain, reading.component) == (
        "power_meter-ACPI000D:00", "hwmon", PLATFORM, None)
    assert reading.counter is False and reading.value == pytest.approx(412.0)
    assert "power1_average" in result.status.detail


def test_battery_meter_is_not_a_platform(tmp_path):
    tree = HwmonTree(tmp_path)
    tree.add_acpi_power_meter(microwatts=9_000_000, battery=True)
    result = HwmonSource(tree.sysfs).read()
    assert result.status.reason == ABSENT and not result.readings


def test_amdgpu_power_prefers_power1_input_and_is_a_gpu_power_sample(tmp_path):
    tree = HwmonTree(tmp_path)
    old = tree.add_amdgpu("0000:03:00.0", average_uw=150_000_000)
    new = tree.add_amdgpu("0000:04:00.0", average_uw=200_000_000, input_uw=230_000_000)
    result = HwmonSource(tree.sysfs).read()
    assert result.status.reason == OK
    by_device = {r.device: r for r in result.readings}
    assert set(by_device) == {"gpu-0000:03:00.0", "gpu-0000:04:00.0"}
    assert by_device["gpu-0000:03:00.0"].value == pytest.approx(150.0)
    assert by_device["gpu-0000:04:00.0"].value == pytest.approx(230.0)
    for reading in by_device.values():
        assert (reading.component, reading.source, reading.counter) == (
            "gpu", "power_sample", False)
    # power samples are integrated by the ledger (trapezoid)
    ledger, clock = Ledger(), FakeClock()
    source = HwmonSource(tree.sysfs)
    source.clock = clock
    ledger.update(source.read().readings, 0.0)
    clock.advance(1.0)
    tree.write(old, "power1_average", 170_000_000)
    ledger.update(source.read().readings, 0.0)
    track = ledger.tracks[("gpu", "", "gpu-0000:03:00.0", "power_sample")]
    assert track.watts == pytest.approx(170.0)
    assert track.joules == pytest.approx((150.0 + 170.0) / 2)  # trapezoid over 1 s
    assert new  # two cards, two series


def test_intel_card_energy_counter_is_a_counter_with_reset_handling(tmp_path):
    """xe: energy1 (card) is read, energy2 (pkg, inside the card) is not; i915's per-tile
    sensors are inside the card too. A counter going back is a glitch, never a decrease."""
    tree = HwmonTree(tmp_path)
    xe = tree.add_xe("0000:03:00.0", card_uj=5_000_000, pkg_uj=4_000_000)
    i915 = tree.add_i915("0000:05:00.0", energy_uj=1_000_000, tiles=2)
    source, ledger, clock = HwmonSource(tree.sysfs), Ledger(), FakeClock()
    source.clock = clock
    first = source.read()
    assert first.status.reason == OK, first.status
    assert sorted((r.device, r.source, r.counter) for r in first.readings) == [
        ("gpu-0000:03:00.0", "hwmon", True), ("gpu-0000:05:00.0", "hwmon", True)]
    ledger.update(first.readings, 0.0)
    clock.advance(1.0)
    tree.write(xe, "energy1_input", 5_000_000 + 3_000_000)  # 3 J
    tree.write(xe, "energy2_input", 9_999_999_999)  # pkg: ignored whatever it does
    tree.write(i915, "energy1_input", 1_000_000 + 2_000_000)  # 2 J
    ledger.update(source.read().readings, 0.0)
    clock.advance(1.0)
    tree.write(xe, "energy1_input", 1_000)  # driver reload: the counter starts over
    ledger.update(source.read().readings, 0.0)
    clock.advance(1.0)
    tree.write(xe, "energy1_input", 1_000 + 1_000_000)  # 1 J after the reset
    ledger.update(source.read().readings, 0.0)
    xe_track = ledger.tracks[("gpu", "", "gpu-0000:03:00.0", "hwmon")]
    assert xe_track.joules == pytest.approx(4.0)
    assert ledger.tracks[("gpu", "", "gpu-0000:05:00.0", "hwmon")].joules == pytest.approx(2.0)
    assert ledger.glitches[("hwmon", "gpu-0000:03:00.0", "", "reset")] == 1


def test_identity_is_name_and_device_link_not_the_hwmon_number(tmp_path):
    first, second = HwmonTree(tmp_path / "a"), HwmonTree(tmp_path / "b")
    first.add_acpi_power_meter(400_000_000)
    first.add_amdgpu("0000:03:00.0", 100_000_000)
    second.add_amdgpu("0000:03:00.0", 100_000_000)  # another boot: numbered the other way
    second.add_acpi_power_meter(400_000_000)
    devices = [sorted(r.device for r in HwmonSource(t.sysfs).read().readings)
               for t in (first, second)]
    assert devices[0] == devices[1] == ["gpu-0000:03:00.0", "power_meter-ACPI000D:00"]


def test_no_hwmon_class_is_absent_and_sensor_that_vanishes_is_an_error(tmp_path):
    assert HwmonSource(str(tmp_path)).read().status.reason == ABSENT
    tree = HwmonTree(tmp_path / "sys")
    hwmon = tree.add_acpi_power_meter(400_000_000)
    source = HwmonSource(tree.sysfs)
    assert source.read().status.reason == OK
    tree.path(hwmon, "power1_average").unlink()
    result = source.read()
    assert result.status.reason == ERROR and "vanished" in result.status.detail
    tree.write(hwmon, "power1_average", 390_000_000)
    assert source.read().readings[0].value == pytest.approx(390.0)


def test_garbage_value_is_an_error_not_a_reading(tmp_path):
    tree = HwmonTree(tmp_path)
    meter = tree.add_acpi_power_meter(400_000_000)
    gpu = tree.add_amdgpu("0000:03:00.0", 100_000_000)
    tree.write(meter, "power1_average", "-1")
    result = HwmonSource(tree.sysfs).read()
    assert result.status.reason == ERROR and "not a sensor value" in result.status.detail
    assert [r.device for r in result.readings] == ["gpu-0000:03:00.0"]
    assert gpu


# --- permissions: as RAPL, a forked child without root, since chmod does not stop root -------

def _read_as_nobody(sysfs: str) -> dict:
    def read() -> dict:
        result = HwmonSource(sysfs).read()
        return {"reason": result.status.reason, "detail": result.status.detail,
                "readings": [r.device for r in result.readings]}
    return read_as_nobody(read, {"reason": "child-failed", "readings": []})


def _read_unprivileged(sysfs: str) -> dict:
    if os.geteuid() == 0:
        return _read_as_nobody(sysfs)
    result = HwmonSource(sysfs).read()
    return {"reason": result.status.reason, "detail": result.status.detail,
            "readings": [r.device for r in result.readings]}


@pytest.fixture
def traversable_tmp():
    """A directory an unprivileged uid can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="hwmon-perm-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_unreadable_file_reports_permission(traversable_tmp):
    tree = HwmonTree(traversable_tmp)
    meter = tree.add_acpi_power_meter(400_000_000)
    tree.path(meter, "power1_average").chmod(0o400 if os.geteuid() == 0 else 0o000)
    status = _read_unprivileged(tree.sysfs)
    assert status["reason"] == PERMISSION, status
    assert status["readings"] == []
    assert "power_meter-ACPI000D:00" in status["detail"]
    assert "CAP_DAC_READ_SEARCH" in status["detail"]


def test_one_unreadable_sensor_is_an_error_and_the_rest_read(traversable_tmp):
    tree = HwmonTree(traversable_tmp)
    tree.add_acpi_power_meter(400_000_000)
    gpu = tree.add_amdgpu("0000:03:00.0", 100_000_000)
    tree.path(gpu, "power1_average").chmod(0o400 if os.geteuid() == 0 else 0o000)
    status = _read_unprivileged(tree.sysfs)
    assert status["reason"] == ERROR, status
    assert "permission denied for gpu-0000:03:00.0" in status["detail"]
    assert status["readings"] == ["power_meter-ACPI000D:00"]


def test_a_stalling_acpi_meter_does_not_hold_up_rapl(tmp_path):
    """An ACPI meter read waits on firmware (the BMC through IPMI): here its power file is a
    FIFO nobody writes, so opening it blocks. The sampler's watchdog sets hwmon aside; RAPL,
    read after it in the same cycle, keeps counting, and the meter's late reading is taken
    once it returns."""
    import asyncio
    import threading

    from exporter.carbon import Intensity
    from exporter.sampler import Sampler
    from exporter.sources.rapl import RaplSource
    from tests.fixtures import intel_two_socket

    tree = HwmonTree(tmp_path / "sys")
    hwmon = tree.add_acpi_power_meter(400_000_000)
    rapl_tree = intel_two_socket(tmp_path / "sys")
    meter = HwmonSource(tree.sysfs)
    meter.read()  # discovered while the file is still a plain file
    power = tree.path(hwmon, "power1_average")
    power.unlink()
    os.mkfifo(power)
    sampler = Sampler([meter, RaplSource(rapl_tree.sysfs)], interval=0.2,
                      intensity=Intensity(100.0, "", "static"), pue=1.0)

    def status(name: str):
        return next(w.status for w in sampler.workers if w.source.name == name)

    def rapl_joules() -> float:
        return sum(s.joules for s in sampler.snapshot.energy if s.source == "rapl")

    async def scenario() -> None:
        for _ in range(3):
            rapl_tree.advance("intel-rapl:0", 1.0)
            await sampler.cycle()
        assert status("hwmon").reason == ERROR
        assert "still running" in status("hwmon").detail
        assert status("rapl").reason == OK
        before = rapl_joules()
        rapl_tree.advance("intel-rapl:0", 1.0)
        await sampler.cycle()
        assert rapl_joules() > before  # not held up by the stalled meter
        # the firmware answers: the blocked open returns and reads the value
        writer = threading.Thread(target=lambda: power.write_text("410000000\n"))
        writer.start()
        writer.join(5)
        power.unlink()  # and the file reads at once from now on
        power.write_text("410000000\n")
        for _ in range(50):  # the blocked read returns in its own (set aside) thread
            await sampler.cycle()
            if status("hwmon").reason == OK:
                break
        assert status("hwmon").reason == OK
        assert sampler.snapshot.platform, "the meter's reading is back"

    try:
        asyncio.run(scenario())
    finally:
        try:  # release a read still blocked on the FIFO
            fd = os.open(power, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        sampler.close()
