"""NVML failures stay local: one GPU failing (at enumeration, on its limit, lost off the bus)
leaves the others measured and attributed; old drivers, MIG with one small instance and
scrambled PIDs are handled; and the fake pynvml matches the real nvidia-ml-py module where
the exporter depends on it."""

from __future__ import annotations

import importlib
import json

import pytest

from exporter.attribution import Attribution
from exporter.ledger import Counted, Ledger
from exporter.sources import ERROR, OK, PERMISSION
from exporter.sources.nvml import LIMIT_REFRESH_SECONDS, NvmlSource
from tests.fake_gpus import clean_fake, clocked, gpu, state
from tests.fakes import pynvml as fake
from tests.harness import ExporterProcess, FakeClock, wait_for
from tests.test_attribution import IDLE, build_tree, container_cgroup, make_config, pod_uid
from tests.test_attribution import container_id


@pytest.fixture(autouse=True)
def fresh_fake(monkeypatch):
    yield from clean_fake(monkeypatch)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """One test clock for the fake and the source: a GPU's block_s and back-off windows pass
    on it, not in wall time."""
    return clocked(monkeypatch)


def on(clock: FakeClock) -> NvmlSource:
    source = NvmlSource(nvml=fake)
    source.clock = clock  # as the sampler does
    return source


# --- the fake is the real module's shape ----------------------------------------------------

def real_pynvml():
    """nvidia-ml-py's own pynvml module: installed for the exporter, and importing it loads no
    library. In-process tests do not put tests/fakes on the path, so this is the real one."""
    module = importlib.import_module("pynvml")
    assert "tests/fakes" not in (module.__file__ or ""), module.__file__
    return module


def test_fake_errors_are_the_real_modules():
    real = real_pynvml()
    codes = {name: getattr(fake, name) for name in dir(fake) if name.startswith("NVML_ERROR_")}
    for name, code in codes.items():
        assert getattr(real, name) == code, name
        error_real, error_fake = real.NVMLError(code), fake.NVMLError(code)
        assert type(error_real).__name__ == type(error_fake).__name__, name
        assert str(error_fake) == str(error_real), name
        assert error_fake.value == code
    assert isinstance(fake.NVMLError(15), fake.NVMLError_GpuIsLost)  # type: ignore[attr-defined]
    assert not issubclass(real.NVMLLibraryMismatchError, real.NVMLError)
    assert not issubclass(fake.NVMLLibraryMismatchError, fake.NVMLError)


def test_fake_process_struct_has_the_real_fields():
    real = real_pynvml()
    state(gpu(0, processes=[{"pid": 42, "used_mem": 1}]))
    fake.nvmlInit()
    (process,) = fake.nvmlDeviceGetComputeRunningProcesses(fake.nvmlDeviceGetHandleByIndex(0))
    fields = [name for name, _ in real.c_nvmlProcessInfo_v3_t._fields_]
    assert list(vars(process)) == fields  # 4 fields: no usedGpuCcProtectedMemory


def test_fake_unversioned_call_on_an_old_driver_is_a_library_mismatch():
    state(gpu(0, processes=[]), missing_functions=["nvmlDeviceGetComputeRunningProcesses_v3"])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(fake.NVMLLibraryMismatchError):
        fake.nvmlDeviceGetComputeRunningProcesses(handle)
    assert fake.nvmlDeviceGetComputeRunningProcesses_v2(handle) == []


def test_dependency_floor_excludes_the_scrambling_struct():
    """12.535.77 read R535's process list with a 5-field struct; 12.535.108 fixed it."""
    with open("pyproject.toml", encoding="utf-8") as handle:
        text = handle.read()
    assert '"nvidia-ml-py>=12.535.108,<14"' in text


# --- the nvml collector ------------------------------------------------------------------------

def test_one_gpu_of_four_failing_at_enumeration_leaves_three(clock):
    value = state(gpu(0), gpu(1), gpu(2, handle_error="NVML_ERROR_NO_PERMISSION"), gpu(3))
    source, ledger = on(clock), Ledger()
    result = source.read()
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-1", "gpu-3"]
    assert [g.device for g in result.gpus] == ["gpu-0", "gpu-1", "gpu-3"]
    assert result.status.reason == ERROR
    assert "gpu-2: cannot open: Insufficient Permissions (next try in 30 s)" in result.status.detail
    ledger.update(result.readings, 0.0)
    # not probed again before its back-off runs out
    for g in value["gpus"]:
        g["energy_mj"] += 10_000
    clock.advance(29.0)
    ledger.update(source.read().readings, 0.0)
    assert fake.calls_by_gpu[("nvmlDeviceGetHandleByIndex", 2)] == 1
    for device in ("gpu-0", "gpu-1", "gpu-3"):
        assert ledger.tracks[("gpu", "", device, "nvml")].joules == pytest.approx(10.0)
    # permission granted; 30 s after the failure the retry comes: gpu-2 joins
    value["gpus"][2]["handle_error"] = None
    clock.advance(1.0)
    result = source.read()
    assert result.status.reason == OK
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]


def test_every_gpu_failing_at_enumeration_is_reported_and_releases_nvml():
    state(gpu(0, handle_error="NVML_ERROR_NO_PERMISSION"),
          gpu(1, handle_error="NVML_ERROR_NO_PERMISSION"))
    source = NvmlSource(nvml=fake)
    result = source.read()
    assert result.status.reason == PERMISSION
    assert "gpu-0" in result.status.detail and "gpu-1" in result.status.detail
    assert fake._initialised == 0


def test_unreadable_power_limit_keeps_the_energy_and_nvml(clock):
    value = state(*(gpu(i, errors={"nvmlDeviceGetEnforcedPowerLimit": "NVML_ERROR_NOT_SUPPORTED"})
                    for i in range(2)))
    source, ledger = on(clock), Ledger()
    for _cycle in range(5):
        result = source.read()
        assert result.status.reason == OK, result.status
        assert [r.device for r in result.readings] == ["gpu-0", "gpu-1"]
        assert all(g.power_limit_watts is None for g in result.gpus)
        ledger.update(result.readings, 0.0)
        for g in value["gpus"]:
            g["energy_mj"] += 5_000
        clock.advance(1.0)
    assert fake.calls["nvmlInit"] == 1 and "nvmlShutdown" not in fake.calls
    # read apart and rarely: once per GPU over the five cycles
    assert fake.calls_by_gpu[("nvmlDeviceGetEnforcedPowerLimit", 0)] == 1
    assert ledger.tracks[("gpu", "", "gpu-0", "nvml")].joules == pytest.approx(20.0)
    # then again once its minute is over
    clock.advance(LIMIT_REFRESH_SECONDS - 5.0)
    assert source.read().status.reason == OK
    assert fake.calls_by_gpu[("nvmlDeviceGetEnforcedPowerLimit", 0)] == 2


def test_lost_gpu_is_backed_off_and_the_others_keep_their_cadence(clock):
    # a lost GPU's calls wait for the driver's timeout before GPU_IS_LOST comes back: the
    # fake's call moves the test clock by block_s, so a read's duration is measured on it
    value = state(gpu(0), gpu(1), gpu(2), gpu(3))
    source = on(clock)
    source.read()
    value["gpus"][1].update(error="NVML_ERROR_GPU_IS_LOST", block_s=0.3)
    durations, seen = [], []
    for _ in range(6):
        for g in value["gpus"]:
            g["energy_mj"] += 1_000
        clock.advance(1.0)
        started = clock()
        result = source.read()
        durations.append(clock() - started)
        seen.append([r.device for r in result.readings])
    assert durations[0] == pytest.approx(0.3)  # the call that found it lost
    assert durations[1:] == [0.0] * 5, durations  # not asked again: no more waits
    assert all(devices == ["gpu-0", "gpu-2", "gpu-3"] for devices in seen)
    # counter probe and first read, then the one call that found it lost: no more
    assert fake.calls_by_gpu[("nvmlDeviceGetTotalEnergyConsumption", 1)] == 3
    assert fake.calls_by_gpu[("nvmlDeviceGetTotalEnergyConsumption", 0)] == 8  # probe + 7 reads
    assert "gpu-1: GPU is lost (next try in 30 s)" in result.status.detail
    assert source.initialised  # the others keep NVML up


def test_stepping_energy_counter_gives_the_mean_power(clock):
    state(gpu(0, energy_mj=0, power_mw=200_000, step_ms=20))
    source, ledger = on(clock), Ledger()
    first = source.read().readings
    ledger.update(first, 0.0)
    clock.advance(0.51)  # 25 whole steps of 20 ms and part of the next
    last = source.read().readings
    ledger.update(last, 0.0)
    joules = ledger.tracks[("gpu", "", "gpu-0", "nvml")].joules
    # 200 W, counted in 4 J steps: within one step of 200 W x 0.51 s
    assert last[0].at - first[0].at == pytest.approx(0.51)
    assert joules == pytest.approx(100.0)
    assert joules == pytest.approx(200.0 * (last[0].at - first[0].at), abs=4.0)


def test_one_gpu_failing_in_a_real_exporter(tmp_path):
    """Through the real process: the three good GPUs' energy is exported, the failing one is
    named on the landing page."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.harness import http_get

    path = tmp_path / "nvml.json"
    path.write_text(json.dumps({"driver": "550.54.15", "gpus": [
        gpu(0), gpu(1), gpu(2, handle_error="NVML_ERROR_NO_PERMISSION"), gpu(3)]}))
    exporter = ExporterProcess(tmp_path, [
        "--sample.interval=100ms", "--carbon.intensity=300", "--no-collector.rapl",
        "--no-collector.cpu-model", "--no-collector.dram-model", "--no-collector.attribution"],
        fake_nvml_state=path)
    try:
        exporter.wait_ready()

        def devices():
            found = {s.labels["device"] for f in text_string_to_metric_families(exporter.metrics())
                     if f.name == "carbon_energy_joules" for s in f.samples
                     if s.name == "carbon_energy_joules_total"}
            return found if found else None

        assert wait_for(devices, 10, "GPU energy series") == {"gpu-0", "gpu-1", "gpu-3"}
        page = http_get(exporter.url + "/")[2].decode()
        assert "gpu-2: cannot open: Insufficient Permissions" in page
    finally:
        exporter.stop()


# --- attribution's GPU reader -------------------------------------------------------------------

def attribution_with(tmp_path, gpus: list[dict], **extra) -> tuple[Attribution, object]:
    tree = build_tree(tmp_path, "v2")
    pid = tree.add(container_cgroup(1), processes=1)[0]
    fake.set_state({"driver": "550.54.15", "gpus": [dict(g, processes=[
        {"pid": pid, "used_mem": 1 << 30}]) if g.get("processes") == "pod" else g for g in gpus],
        **extra})
    config = make_config(tmp_path, collector__nvml=True, attribution__gpu_idle_watts=0.0)
    return Attribution(config, nvml=fake), pid


POD = ("container", "", pod_uid(1), container_id(1)[:12], "", "")


def test_attribution_one_gpu_failing_at_enumeration(tmp_path):
    attribution, _ = attribution_with(tmp_path, [
        gpu(0, processes="pod", samples=None), gpu(1, handle_error="NVML_ERROR_NO_PERMISSION"),
        gpu(2, processes="pod", samples=None), gpu(3, processes=[])])
    attribution.account(attribution.read(), [], 0.0)
    counted = [Counted("gpu", f"gpu-{n}", 10.0, 0.0) for n in (0, 2, 3)]
    split = attribution.account(attribution.read(), counted, 1.0)
    assert split.parts["gpu"][POD] == pytest.approx(20.0)
    assert dict(attribution.gpu_split) == {"gpu-0": "memory", "gpu-2": "memory", "gpu-3": "idle"}
    assert "gpu-1: cannot open" in attribution.read().status.detail


def test_attribution_on_a_driver_without_v3(tmp_path):
    attribution, _ = attribution_with(
        tmp_path, [gpu(0, processes="pod", samples=None)],
        missing_functions=["nvmlDeviceGetComputeRunningProcesses_v3"])
    attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 10.0, 0.0)], 1.0)
    assert dict(attribution.gpu_split) == {"gpu-0": "memory"}  # not "unavailable"
    assert split.parts["gpu"][POD] == pytest.approx(10.0)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] >= 1


def test_attribution_utilisation_samples_need_no_process_list(tmp_path):
    attribution, pid = attribution_with(
        tmp_path, [gpu(0, processes="pod")],
        missing_functions=["nvmlDeviceGetComputeRunningProcesses_v3"])
    fake._state["gpus"][0]["samples"] = [{"pid": pid, "ts": 10, "sm": 50}]
    split = attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 10.0, 0.0)], 1.0)
    assert dict(attribution.gpu_split) == {"gpu-0": "sm_utilization"}
    assert "nvmlDeviceGetComputeRunningProcesses_v2" not in fake.calls
    assert split.parts["gpu"][POD] == pytest.approx(10.0)


def test_attribution_mig_with_one_small_instance(tmp_path):
    tree = build_tree(tmp_path, "v2")
    pid = tree.add(container_cgroup(1), processes=1)[0]
    fake.set_state({"driver": "550.54.15", "gpus": [gpu(0, mig=True, mig_slices=7, mig_devices=[
        {"sm": 14, "slices": 1, "processes": [{"pid": pid, "used_mem": 1 << 30}]}])]})
    attribution = Attribution(make_config(tmp_path, collector__nvml=True,
                                          attribution__gpu_idle_watts=0.0), nvml=fake)
    attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 70.0, 0.0)], 1.0)
    # a lone 1g instance is 1 of the GPU's 7 slices, not all of it; the unused rest is idle
    assert split.parts["gpu"][POD] == pytest.approx(10.0)
    assert split.parts["gpu"][IDLE] == pytest.approx(60.0)


def test_attribution_scrambled_pids_are_not_trusted(tmp_path):
    attribution, pid = attribution_with(tmp_path, [gpu(0, samples=None, processes=[
        {"pid": 1184, "used_mem": 0}, {"pid": 0, "used_mem": 4294967295},
        {"pid": 4294967295, "used_mem": 16040}])])
    attribution.account(attribution.read(), [], 0.0)
    result = attribution.read()
    split = attribution.account(result, [Counted("gpu", "gpu-0", 10.0, 0.0)], 1.0)
    assert dict(attribution.gpu_split) == {"gpu-0": "unavailable"}
    assert "impossible PIDs" in result.status.detail and "12.535.108" in result.status.detail
    assert POD not in split.parts["gpu"]


def test_attribution_gpu_idle_floor(tmp_path):
    attribution, _ = attribution_with(tmp_path, [gpu(0, processes="pod", samples=None)])
    attribution.configure(make_config(tmp_path, collector__nvml=True,
                                      attribution__gpu_idle_watts=60.0))
    attribution.account(attribution.read(), [], 0.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 100.0, 0.0)], 1.0)
    # 100 W over 1 s with one process holding a context: 60 J idle, 40 J to the process
    assert split.parts["gpu"][IDLE] == pytest.approx(60.0)
    assert split.parts["gpu"][POD] == pytest.approx(40.0)


def test_attribution_lost_gpu_is_backed_off(tmp_path, clock):
    attribution, _ = attribution_with(tmp_path, [gpu(0, processes="pod", samples=None),
                                                 gpu(1, processes=[], samples=None)])
    assert attribution.reader.gpus is not None
    attribution.reader.gpus.session.clock = clock  # back-off on the test clock
    attribution.read()
    fake._state["gpus"][1].update(error="NVML_ERROR_GPU_IS_LOST", block_s=0.2)
    started = clock()
    attribution.read()
    # one call found it lost and waited for the driver; no second call waited again
    assert clock() - started == pytest.approx(0.2)
    started = clock()
    for _ in range(3):
        result = attribution.read()
    assert clock() == started  # not asked again: no call waited
    assert result.observation.gpus["gpu-1"].basis == "unavailable"
    assert result.observation.gpus["gpu-0"].basis == "memory"


def test_attribution_without_a_driver_asks_nvml_again_only_when_due(tmp_path, clock):
    """No driver loaded: attribution's NVML session tries again every REINIT_AFTER_SECONDS on
    its own clock (samples in between ask nothing, and say nothing: no GPU is no problem);
    a driver loaded later is found at the next try, and its GPU's processes are split."""
    from exporter.sources.nvml import REINIT_AFTER_SECONDS

    clock.advance(1e9)  # far from time.monotonic(): only the session's own clock can be right
    attribution, _ = attribution_with(tmp_path, [gpu(0, processes="pod", samples=None)],
                                      init_error="NVML_ERROR_DRIVER_NOT_LOADED")
    reader = attribution.reader.gpus
    assert reader is not None
    reader.session.clock = clock
    asked = []
    read = reader.read
    reader.read = lambda: asked.append(clock()) or read()
    attribution.account(attribution.read(), [], 0.0)
    assert fake.calls["nvmlInit"] == 1
    for second in range(1, int(REINIT_AFTER_SECONDS)):
        clock.advance(1.0)
        result = attribution.read()
        assert result.status.reason == OK and not result.observation.gpus
        attribution.account(result, [Counted("gpu", "gpu-0", 10.0, 0.0)], float(second))
    assert fake.calls["nvmlInit"] == 1 and len(asked) == 1
    del fake._state["init_error"]  # the driver is loaded
    clock.advance(1.0)
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 10.0, 0.0)],
                                REINIT_AFTER_SECONDS)
    assert fake.calls["nvmlInit"] == 2 and len(asked) == 2
    assert split.parts["gpu"][POD] == pytest.approx(10.0)


def test_attribution_asks_mig_mode_once_a_minute(tmp_path, clock):
    """MIG mode changes only with a GPU reset: asked once per MIG_RECHECK_SECONDS, not at
    every sample; a GPU switched to MIG is split by its instances from the next look."""
    from exporter.attribution.gpu import MIG_RECHECK_SECONDS

    tree = build_tree(tmp_path, "v2")
    pid = tree.add(container_cgroup(1), processes=1)[0]
    fake.set_state({"driver": "550.54.15", "gpus": [gpu(0, mig=False, samples=None, processes=[
        {"pid": pid, "used_mem": 1 << 30}])]})
    attribution = Attribution(make_config(tmp_path, collector__nvml=True), nvml=fake)
    assert attribution.reader.gpus is not None
    attribution.reader.gpus.session.clock = clock
    for _ in range(5):
        attribution.read()
        clock.advance(1.0)
    assert fake.calls_by_gpu[("nvmlDeviceGetMigMode", 0)] == 1
    fake._state["gpus"][0].update(mig=True, mig_slices=7, mig_devices=[
        {"sm": 14, "slices": 1, "processes": [{"pid": pid, "used_mem": 1 << 30}]}])
    assert attribution.read().observation.gpus["gpu-0"].basis == "memory"  # not asked yet
    clock.advance(MIG_RECHECK_SECONDS)
    assert attribution.read().observation.gpus["gpu-0"].basis == "mig"
    assert fake.calls_by_gpu[("nvmlDeviceGetMigMode", 0)] == 2


def test_lost_gpu_in_the_sampler_leaves_the_others_on_cadence():
    """Through the sampler: the one call that finds gpu-1 lost really blocks for 0.4 s
    (longer than the 0.25 s interval), so the watchdog sets the NVML source aside and the
    cycles go on without it. Once that read is back, gpu-1 is never asked again, the other
    GPUs' energy moves every cycle, and none of it was lost while the read was set aside
    (the late reading bridges the gap: their counters are exactly what was added)."""
    import asyncio

    from exporter.carbon import Intensity
    from exporter.sampler import Sampler

    clock = FakeClock()  # the readings' clock; the fake's block is real time
    value = state(gpu(0), gpu(1), gpu(2), gpu(3))
    source = NvmlSource(nvml=fake)
    sampler = Sampler([source], interval=0.25,
                      intensity=Intensity(300.0, "DE", "static"), pue=1.0, clock=clock)
    lost_calls: list[int] = []
    joules: list[dict[str, float]] = []
    set_aside: list[bool] = []

    def status():
        return next(w.status for w in sampler.workers if w.source is source)

    async def run() -> None:
        await sampler.cycle()
        value["gpus"][1].update(error="NVML_ERROR_GPU_IS_LOST", block_s=0.4)
        back = 0  # cycles since the set-aside read came back
        while back < 4:
            for g in value["gpus"]:
                g["energy_mj"] += 5_000
            clock.advance(1.0)
            snap = await sampler.cycle()
            set_aside.append("still running" in status().detail)
            lost_calls.append(fake.calls_by_gpu[("nvmlDeviceGetTotalEnergyConsumption", 1)])
            joules.append({s.device: s.joules for s in snap.energy})
            if set_aside[-1]:
                await asyncio.sleep(0.02)  # the driver's block is real time: let it pass
            elif any(set_aside):
                back += 1

    try:
        asyncio.run(asyncio.wait_for(run(), 60))  # a hang guard, not a speed bound
    finally:
        sampler.close()
    assert any(set_aside), "the 0.4 s read outlived the interval: it must be set aside"
    assert status().detail.startswith("gpu-1: GPU is lost"), status()
    # probe + first read, then the one call that found it lost: never asked again
    assert lost_calls[-1] == 3 and lost_calls[0] <= 3, lost_calls
    for before, after in zip(joules[-4:], joules[-3:]):
        for device in ("gpu-0", "gpu-2", "gpu-3"):
            assert after[device] > before[device], (device, before, after)
    for device in ("gpu-0", "gpu-2", "gpu-3"):
        assert joules[-1][device] == pytest.approx(5.0 * len(joules)), device


def test_attribution_gpu_idle_floor_is_learned_only_while_idle(tmp_path):
    tree = build_tree(tmp_path, "v2")
    pid = tree.add(container_cgroup(1), processes=1)[0]
    fake.set_state({"driver": "550.54.15", "gpus": [gpu(0, processes=[], samples=None),
                                                    gpu(1, samples=None, processes=[
                                                        {"pid": pid, "used_mem": 1 << 30}])]})
    attribution = Attribution(make_config(tmp_path, collector__nvml=True), nvml=fake)
    attribution.account(attribution.read(), [], 0.0)
    # gpu-0 idle at 55 W: learned; gpu-1 always busy at 700 W: never learned, no floor
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 55.0, 0.0),
                                                     Counted("gpu", "gpu-1", 700.0, 0.0)], 1.0)
    assert split.parts["gpu"][POD] == pytest.approx(700.0)
    fake._state["gpus"][0]["processes"] = [{"pid": pid, "used_mem": 1 << 30}]
    split = attribution.account(attribution.read(), [Counted("gpu", "gpu-0", 80.0, 0.0),
                                                     Counted("gpu", "gpu-1", 700.0, 0.0)], 2.0)
    # a process holding an idle context on gpu-0 is charged 80 - 55 W, not 80 W
    assert split.parts["gpu"][POD] == pytest.approx(25.0 + 700.0)
    assert split.parts["gpu"][IDLE] == pytest.approx(55.0)


def test_gpu_reader_keeps_sm_shares_for_ten_seconds_without_a_new_sample(clock):
    """A cycle without a new utilisation sample (NOT_FOUND) keeps the last SM shares for
    SM_SHARES_KEEP_SECONDS on the reader's clock, then falls back to memory weights."""
    from exporter.attribution.gpu import MEMORY, SM_SHARES_KEEP_SECONDS, SM_UTILIZATION
    from exporter.attribution.gpu import GpuProcessReader

    state(gpu(0, samples=[{"pid": 101, "ts": 10, "sm": 30}, {"pid": 202, "ts": 10, "sm": 10}],
              processes=[{"pid": 101, "used_mem": 1}, {"pid": 202, "used_mem": 3}]))
    reader = GpuProcessReader(fake, clock=clock)
    first = reader.read()["gpu-0"]
    assert first.basis == SM_UTILIZATION and dict(first.shares) == {101: 0.75, 202: 0.25}
    clock.advance(SM_SHARES_KEEP_SECONDS)  # no new sample, still within the 10 s
    kept = reader.read()["gpu-0"]
    assert kept.basis == SM_UTILIZATION and kept.shares == first.shares
    clock.advance(0.5)  # past it: the running processes' memory decides
    after = reader.read()["gpu-0"]
    assert after.basis == MEMORY and dict(after.shares) == {101: 0.25, 202: 0.75}
    reader.close()
