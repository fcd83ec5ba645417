"""NVML logic against the fake at the pynvml boundary, the sampler over eight fake GPUs, and
(marked gpu) the exporter's joules against NVML's own counter on real hardware."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time

import pytest

from exporter.carbon import Intensity
from exporter.ledger import JOULES_PER_KWH, Ledger
from exporter.sampler import Sampler
from exporter.sources import ABSENT, ERROR, OK, PERMISSION
from exporter.sources.nvml import REINIT_AFTER_SECONDS, NvmlSource
from tests.fake_gpus import clean_fake, clocked, gpu, state
from tests.fakes import pynvml as fake
from tests.harness import FakeClock


@pytest.fixture(autouse=True)
def fresh_fake(monkeypatch):
    yield from clean_fake(monkeypatch)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """One test clock for the fake and the source: tests move it instead of sleeping."""
    return clocked(monkeypatch)


def on(clock: FakeClock) -> NvmlSource:
    source = NvmlSource(nvml=fake)
    source.clock = clock  # as the sampler does
    return source


def test_energy_counter_is_read_in_joules():
    state(gpu(0, energy_mj=5_000_000), gpu(1, energy_mj=123_456))
    result = NvmlSource(nvml=fake).read()
    assert result.status.reason == OK
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-1"]
    r0, r1 = result.readings
    assert r0.counter and r0.source == "nvml" and r0.component == "gpu" and r0.wrap is None
    assert r0.value == pytest.approx(5000.0)
    assert r1.value == pytest.approx(123.456)
    assert "nvmlDeviceGetPowerUsage" not in fake.calls


def test_gpu_info_and_power_limit_in_watts():
    state(gpu(0, limit_mw=450_500))
    result = NvmlSource(nvml=fake).read()
    (info,) = result.gpus
    assert info.device == "gpu-0"
    assert info.uuid == "GPU-00000000-0000-0000-0000-000000000000"
    assert info.name == "NVIDIA H100 80GB HBM3"
    assert info.driver_version == "550.54.15"
    assert info.pci_bus_id == "00000000:18:00.0"  # bytes from NVML, decoded
    assert info.power_limit_watts == pytest.approx(450.5)


def test_no_energy_counter_falls_back_to_power_samples(clock):
    state(gpu(0, energy_mj=None, power_mw=180_500), gpu(1))
    source, ledger = on(clock), Ledger()
    result = source.read()
    old, new = result.readings
    assert old.source == "power_sample" and old.counter is False
    assert old.value == pytest.approx(180.5)  # watts
    assert new.source == "nvml" and new.counter is True
    ledger.update(result.readings, 0.0)
    clock.advance(0.5)
    ledger.update(source.read().readings, 0.0)
    track = ledger.tracks[("gpu", "", "gpu-0", "power_sample")]
    assert track.watts == pytest.approx(180.5)
    assert track.last_at - result.readings[0].at == pytest.approx(0.5)
    assert track.joules == pytest.approx(180.5 * 0.5)


def test_nvml_error_mid_run_for_one_gpu(clock):
    value = state(gpu(0), gpu(1), gpu(2))
    source, ledger = on(clock), Ledger()
    ledger.update(source.read().readings, 0.0)

    value["gpus"][1]["error"] = "NVML_ERROR_GPU_IS_LOST"
    for g in value["gpus"]:
        g["energy_mj"] += 10_000
    clock.advance(1.0)
    result = source.read()
    assert result.status.reason == ERROR
    assert "gpu-1: GPU is lost (next try in 30 s)" in result.status.detail
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-2"]
    assert [g.device for g in result.gpus] == ["gpu-0", "gpu-2"]
    ledger.update(result.readings, 0.0)
    assert ledger.tracks[("gpu", "", "gpu-1", "nvml")].present is False

    value["gpus"][1]["error"] = None
    for g in value["gpus"]:
        g["energy_mj"] += 20_000
    clock.advance(29.0)  # back-off not over: gpu-1 is not asked
    result = source.read()
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-2"]
    ledger.update(result.readings, 0.0)
    clock.advance(1.0)  # 30 s after it was lost: tried again
    result = source.read()
    assert result.status.reason == OK
    ledger.update(result.readings, 0.0)
    for device in ("gpu-0", "gpu-1", "gpu-2"):  # gpu-1's gap is counted from its counter
        assert ledger.tracks[("gpu", "", device, "nvml")].joules == pytest.approx(30.0)


def test_all_gpus_failing_reports_error_then_reinitialises(clock):
    value = state(gpu(0), gpu(1))
    source, ledger = on(clock), Ledger()
    ledger.update(source.read().readings, 0.0)
    assert fake.calls["nvmlInit"] == 1

    for g in value["gpus"]:
        g["error"] = "NVML_ERROR_UNKNOWN"
    result = source.read()
    assert result.status.reason == ERROR and result.readings == []
    assert source.initialised is False
    assert fake.calls["nvmlShutdown"] == 1
    # until the re-init time, the source keeps saying why, and does not call nvmlInit
    for g in value["gpus"]:
        g["error"] = None
    clock.advance(REINIT_AFTER_SECONDS - 1)
    again = source.read()
    assert again.status.reason == ERROR, again.status
    assert fake.calls["nvmlInit"] == 1

    for g in value["gpus"]:
        g["energy_mj"] += 40_000
    clock.advance(1)  # the re-init time has come
    result = source.read()
    assert result.status.reason == OK
    assert fake.calls["nvmlInit"] == 2
    ledger.update(result.readings, 0.0)
    assert ledger.tracks[("gpu", "", "gpu-0", "nvml")].joules == pytest.approx(40.0)


def test_mig_gpu_is_counted_once(clock):
    state(gpu(0, mig=True, mig_devices=[{"uuid": "MIG-a"}, {"uuid": "MIG-b"}, {"uuid": "MIG-c"}]),
          gpu(1))
    source, ledger = on(clock), Ledger()
    result = source.read()
    assert result.status.reason == OK
    assert [r.device for r in result.readings] == ["gpu-0", "gpu-1"]
    assert [g.device for g in result.gpus] == ["gpu-0", "gpu-1"]
    ledger.update(result.readings, 0.0)
    fake._state["gpus"][0]["energy_mj"] += 50_000
    clock.advance(1.0)
    counted = ledger.update(source.read().readings, 0.0)
    assert sum(c.joules for c in counted if c.device == "gpu-0") == pytest.approx(50.0)


@pytest.mark.parametrize("error, reason", [
    ("NVML_ERROR_LIBRARY_NOT_FOUND", ABSENT),
    ("NVML_ERROR_DRIVER_NOT_LOADED", ABSENT),
    ("NVML_ERROR_NO_PERMISSION", PERMISSION),
    ("NVML_ERROR_UNKNOWN", ERROR),
])
def test_init_errors(error, reason, clock):
    value = state(gpu(0), init_error=error)
    source = on(clock)
    result = source.read()
    assert result.status.reason == reason
    assert result.readings == [] and result.gpus == []
    assert source.initialised is False
    # the next cycles do not hammer nvmlInit
    clock.advance(REINIT_AFTER_SECONDS - 1)
    assert source.read().status.reason == reason
    assert fake.calls["nvmlInit"] == 1
    # once the back-off is over it tries again, and a fixed driver is picked up
    value["init_error"] = None
    clock.advance(1)
    assert source.read().status.reason == OK
    assert fake.calls["nvmlInit"] == 2


def test_a_failing_gpu_backs_off_doubling_up_to_five_minutes(clock):
    value = state(gpu(0), gpu(1, handle_error="NVML_ERROR_NO_PERMISSION"))
    source = on(clock)
    source.read()
    waits = []
    for _ in range(7):
        tries = fake.calls_by_gpu[("nvmlDeviceGetHandleByIndex", 1)]
        waited = 0
        while fake.calls_by_gpu[("nvmlDeviceGetHandleByIndex", 1)] == tries:
            clock.advance(10)
            waited += 10
            source.read()  # gpu-0 is read every cycle meanwhile
        waits.append(waited)
    assert waits == [30, 60, 120, 240, 300, 300, 300]
    value["gpus"][1]["handle_error"] = None  # permission granted: back after the next try
    clock.advance(300)
    assert [r.device for r in source.read().readings] == ["gpu-0", "gpu-1"]
    assert fake.calls_by_gpu[("nvmlDeviceGetTotalEnergyConsumption", 0)] > 100


def test_no_gpu_is_absent_and_releases_nvml():
    state()
    source = NvmlSource(nvml=fake)
    result = source.read()
    assert result.status.reason == ABSENT and "no GPU" in result.status.detail
    assert fake._initialised == 0


def test_error_while_enumerating_is_reported_and_releases_nvml():
    state(gpu(0, error="NVML_ERROR_NO_PERMISSION"))
    source = NvmlSource(nvml=fake)
    assert source.read().status.reason == PERMISSION
    assert fake._initialised == 0


def test_close_shuts_nvml_down():
    state(gpu(0))
    source = NvmlSource(nvml=fake)
    source.read()
    assert fake._initialised == 1
    source.close()
    assert fake._initialised == 0


def test_sampler_over_eight_gpus_counts_the_injected_energy(clock):
    value = state(*(gpu(i, energy_mj=1_000_000 * (i + 1)) for i in range(8)))
    intensity = Intensity(300.0, "DE", "static")
    sampler = Sampler([NvmlSource(nvml=fake)], interval=0.5, intensity=intensity, pue=1.2,
                      clock=clock)
    injected = [0.0] * 8

    async def run() -> None:
        await sampler.cycle()
        for step in range(1, 6):
            clock.advance(0.5)  # at most 5 J per 0.5 s: inside the power bound
            for i, g in enumerate(value["gpus"]):
                mj = 617 * step + 311 * i  # known, uneven amounts
                g["energy_mj"] += mj
                injected[i] += mj / 1000.0
            await sampler.cycle()

    try:
        asyncio.run(run())
    finally:
        sampler.close()
    snap = sampler.snapshot
    energy = {s.device: s for s in snap.energy}
    assert sorted(energy) == [f"gpu-{i}" for i in range(8)]
    gpj = 300.0 * 1.2 / JOULES_PER_KWH
    for i in range(8):
        series = energy[f"gpu-{i}"]
        assert series.component == "gpu" and series.source == "nvml"
        assert series.joules == pytest.approx(injected[i], rel=1e-9)
        assert series.grams == pytest.approx(injected[i] * gpj, rel=1e-9)
        assert series.watts is not None and series.watts > 0
    assert len(snap.gpus) == 8
    assert all(g.power_limit_watts == pytest.approx(700.0) for g in snap.gpus)
    (collector,) = snap.collectors
    assert collector.name == "nvml" and collector.status.reason == OK
    assert collector.duration_count == 6
    assert not any(count for *_, count in snap.glitches)
    assert fake._initialised == 0  # closed


# --- real hardware ----------------------------------------------------------------------------

def _real_nvml():
    """The real pynvml module if it initialises and sees a GPU with an energy counter."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                return pynvml
            except pynvml.NVMLError:
                continue
        return None
    finally:
        pynvml.nvmlShutdown()


# A busy loop of dependent FMAs in PTX, JIT-compiled by the driver: GPU load without a CUDA
# toolkit or framework, through libcuda alone.
_SPIN_PTX = b"""
.version 6.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 out, .param .u32 iters)
{
    .reg .pred p;
    .reg .f32 a, b;
    .reg .u32 i, n, tid;
    .reg .u64 o, off;
    ld.param.u64 o, [out];
    ld.param.u32 n, [iters];
    mov.f32 a, 0f3F800000;
    mov.f32 b, 0f3F000000;
    mov.u32 i, 0;
LOOP:
    fma.rn.f32 a, a, b, b;
    add.u32 i, i, 1;
    setp.lt.u32 p, i, n;
    @p bra LOOP;
    mov.u32 tid, %tid.x;
    cvta.to.global.u64 o, o;
    mul.wide.u32 off, tid, 4;
    add.u64 o, o, off;
    st.global.f32 [o], a;
    ret;
}
\x00"""


def _load_gpu(ordinal: int, stop: threading.Event, notes: list[str]) -> None:
    """Keep one GPU busy until `stop`; on any CUDA failure note it and leave the GPU idle."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        notes.append(f"gpu-{ordinal}: no load ({exc})")
        return

    def check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"{what} returned CUDA error {code}")

    ctx, device = ctypes.c_void_p(), ctypes.c_int()
    try:
        check(cuda.cuInit(0), "cuInit")
        check(cuda.cuDeviceGet(ctypes.byref(device), ordinal), "cuDeviceGet")
        check(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, device), "cuCtxCreate")
        module, function, out = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint64()
        check(cuda.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(_SPIN_PTX)), "cuModuleLoadData")
        check(cuda.cuModuleGetFunction(ctypes.byref(function), module, b"spin"), "cuModuleGetFunction")
        check(cuda.cuMemAlloc_v2(ctypes.byref(out), ctypes.c_size_t(4096)), "cuMemAlloc")
        iters = ctypes.c_uint32(100_000)
        params = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(out), ctypes.c_void_p),
                                       ctypes.cast(ctypes.byref(iters), ctypes.c_void_p))
        while not stop.is_set():
            check(cuda.cuLaunchKernel(function, 1024, 1, 1, 256, 1, 1, 0, None, params, None),
                  "cuLaunchKernel")
            check(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        notes.append(f"gpu-{ordinal}: loaded with an FMA loop")
    except Exception as exc:  # measuring an idle GPU is still a valid comparison
        notes.append(f"gpu-{ordinal}: no load ({exc})")
    finally:
        if ctx.value:
            cuda.cuCtxDestroy_v2(ctx)


@pytest.mark.gpu
@pytest.mark.skipif(_real_nvml() is None, reason="needs an NVIDIA GPU with an energy counter")
def test_real_gpu_joules_match_nvml_energy_counter():
    """Over 60 s (of load where CUDA is usable), the exporter's joules per GPU agree with
    NVML's own counter read directly, within 1%."""
    import pynvml

    seconds = 60
    pynvml.nvmlInit()  # a second reference, so direct reads work beside the source's own
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        stop, notes = threading.Event(), []
        loaders = [threading.Thread(target=_load_gpu, args=(i, stop, notes), daemon=True)
                   for i in range(len(handles))]
        for loader in loaders:
            loader.start()
        time.sleep(2)  # let the load ramp up before measuring
        sampler = Sampler([NvmlSource()], interval=1.0,
                          intensity=Intensity(100.0, "", "static"), pue=1.0)

        def direct() -> dict[str, float]:
            out = {}
            for i, handle in enumerate(handles):
                try:
                    out[f"gpu-{i}"] = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0
                except pynvml.NVMLError:
                    pass
            return out

        async def run() -> tuple[dict[str, float], dict[str, float]]:
            await sampler.cycle()
            start = direct()
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                await asyncio.sleep(1.0)
                await sampler.cycle()
            return start, direct()

        try:
            start, end = asyncio.run(run())
        finally:
            stop.set()
            sampler.close()
            for loader in loaders:
                loader.join(30)
        exported = {s.device: s.joules for s in sampler.snapshot.energy if s.source == "nvml"}
        assert exported, "no GPU was read through its energy counter"
        print(f"\nNVML energy check over {seconds} s; load: {'; '.join(sorted(notes))}")
        print(f"{'device':8} {'exporter J':>14} {'NVML direct J':>14} {'diff %':>8}")
        for device, joules in sorted(exported.items()):
            reference = end[device] - start[device]
            diff = (joules - reference) / reference * 100 if reference else 0.0
            print(f"{device:8} {joules:14.1f} {reference:14.1f} {diff:8.3f}")
        for device, joules in exported.items():
            reference = end[device] - start[device]
            assert reference > 0
            assert joules == pytest.approx(reference, rel=0.01), device
    finally:
        pynvml.nvmlShutdown()
