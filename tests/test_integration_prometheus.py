"""End to end: the real carbon-exporter process on fixture hardware, a real Prometheus
scraping it every 500 ms, and the joules Prometheus stores checked against the joules the
test put into the counters (with a RAPL wraparound and a fake NVML GPU on the way)."""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures import ProcfsTree, intel_two_socket
from tests.harness import ExporterProcess, PrometheusServer, wait_for

INTENSITY = 400.0  # gCO2e/kWh
PUE = 1.5
# Joules injected per step and device; package-0 starts 50 J below its wrap point.
STEP = {"intel-rapl:0": 12.5, "intel-rapl:1": 20.0, "intel-rapl:0:2": 3.0, "intel-rapl:1:1": 4.0}
GPU_STEP_MJ = 55_000  # 55 J per step
STEPS = 16


def _write_gpu(path, energy_mj):
    path.write_text(json.dumps({"driver": "550.54.15", "gpus": [{
        "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-4d2c8a3e-0000-0000-0000-000000000001",
        "pci": "00000000:18:00.0", "energy_mj": energy_mj, "power_mw": 300000,
        "limit_mw": 700000}]}))


def _exact_increase(prom: PrometheusServer, selector: str, start: float, end: float) -> float:
    """increase() over a window whose edges are sample timestamps: no extrapolation."""
    window_ms = round((end - start) * 1000)
    return prom.scalar(f"sum(increase({selector}[{window_ms}ms] @ {end:.3f}))")


def _sample_times(prom: PrometheusServer, selector: str) -> list[float]:
    result = prom.query(f"{selector}[2m]")
    return [float(t) for t, _ in result[0]["values"]]


@pytest.mark.usefixtures("prometheus_required")
def test_prometheus_increase_matches_injected_energy(tmp_path):
    tree = intel_two_socket(tmp_path / "sys")
    package0 = tree.zones["intel-rapl:0"]
    package0.energy_uj = package0.wrap_uj - 50_000_000
    tree.write(package0)
    procfs = ProcfsTree(tmp_path / "proc")
    gpu_state = tmp_path / "nvml.json"
    gpu_mj = 7_000_000
    _write_gpu(gpu_state, gpu_mj)

    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}",
        "--sample.interval=200ms", f"--carbon.intensity={INTENSITY}", f"--carbon.pue={PUE}",
    ], fake_nvml_state=gpu_state)
    prom = None
    try:
        exporter.wait_ready()
        prom = PrometheusServer(tmp_path, [f"127.0.0.1:{exporter.port}"], interval="500ms")
        energy = 'carbon_energy_joules_total{job="carbon-exporter"}'
        wait_for(lambda: len(prom.query(energy)) == 5, 20, "five energy series in Prometheus")
        time.sleep(1.2)  # two quiet scrapes: the baseline is in the TSDB
        injected_at = time.time()
        for _ in range(STEPS):
            for dirname, joules in STEP.items():
                tree.advance(dirname, joules)
            gpu_mj += GPU_STEP_MJ
            _write_gpu(gpu_state, gpu_mj)
            time.sleep(0.3)
        time.sleep(1.5)  # quiet again: the last value is scraped
        done_at = time.time()
        wait_for(lambda: _sample_times(prom, energy)[-1] > done_at, 10, "a scrape after the run")

        times = _sample_times(prom, energy)
        start = max(t for t in times if t < injected_at)
        end = max(times)
        expected = {
            ("cpu", "package-0"): STEP["intel-rapl:0"] * STEPS,
            ("cpu", "package-1"): STEP["intel-rapl:1"] * STEPS,
            ("dram", "package-0"): STEP["intel-rapl:0:2"] * STEPS,
            ("dram", "package-1"): STEP["intel-rapl:1:1"] * STEPS,
            ("gpu", "gpu-0"): GPU_STEP_MJ / 1000 * STEPS,
        }
        for (component, device), joules in expected.items():
            selector = f'carbon_energy_joules_total{{component="{component}",device="{device}"}}'
            measured = _exact_increase(prom, selector, start, end)
            assert measured == pytest.approx(joules, rel=1e-6), (component, device)
        total = sum(expected.values())
        assert _exact_increase(prom, energy, start, end) == pytest.approx(total, rel=1e-6)
        grams = _exact_increase(prom, 'carbon_emissions_grams_total{scope="operational"}', start, end)
        assert grams == pytest.approx(total / 3.6e6 * INTENSITY * PUE, rel=1e-6)

        # The wraparound of package-0 happened inside the window and left no glitch.
        assert prom.query("carbon_exporter_energy_glitches_total")  # present from the start
        assert not prom.query("carbon_exporter_energy_glitches_total > 0")
        # The models stood aside: RAPL measured both CPU and DRAM.
        up = {r["metric"]["collector"]: (r["metric"]["reason"], r["value"][1])
              for r in prom.query("carbon_exporter_collector_up * on (collector) group_left (reason)"
                                  " carbon_exporter_collector_status_info")}
        # (the fixture has no cgroup tree and no Kubernetes: attribution is absent, not failing;
        # no power meter and no BMC: hwmon and redfish are absent)
        assert up == {"rapl": ("ok", "1"), "nvml": ("ok", "1"),
                      "cpu-model": ("superseded", "0"), "dram-model": ("superseded", "0"),
                      "attribution": ("absent", "0"), "kubernetes": ("absent", "0"),
                      "hwmon": ("absent", "0"), "redfish": ("absent", "0")}
        assert prom.scalar("carbon_pue_ratio") == PUE
        assert prom.scalar("carbon_grid_intensity_grams_per_kwh") == INTENSITY
    finally:
        if prom is not None:
            prom.stop()
        assert exporter.stop() == 0, exporter.output()
