"""The CPU and DRAM models on whole machines: /proc/cpuinfo, /proc/stat, /proc/meminfo and the
DMI tree in the kernel's layout, read through path.procfs / path.sysfs. Every expected power is
derived here from the cited figures (exporter/data/README.md), at 0, 10, 50 and 100% load:

  - TDP and threads per chip: the bundled CPU table (EPYC 7763: 280 W, 128 threads, from
    TechPowerUp; Xeon Platinum 8480+: 350 W, 112 threads, from Intel ARK);
  - the Teads curve: 0.12, 0.32, 0.75, 1.02 of TDP at 0, 10, 50, 100% load;
  - Cloud Carbon Footprint's per-vCPU figures (Methodology, Appendix I): AWS 0.74-3.5 W,
    GCP 0.71-4.26 W, Azure 0.78-3.76 W, linear in between; memory per chip of the reference
    servers: AWS 80.69 GB, Azure 80.47 GB; memory coefficient 0.392 W per GB.
"""

from __future__ import annotations

import pytest

from exporter.config import resolve
from exporter.sources import OK
from exporter.sources.cpu_model import CpuModelSource
from exporter.sources.dram_model import DramModelSource
from tests.fixtures import ProcfsTree, dmi_tree
from tests.harness import FakeClock

TEADS = {0.0: 0.12, 0.1: 0.32, 0.5: 0.75, 1.0: 1.02}
LOADS = (0.0, 0.1, 0.5, 1.0)
GIB_KIB = 1024 * 1024
CCF_GB_PER_WATT = 0.392




def machine(tmp_path, platform: str | None, **cpu):
    procfs = ProcfsTree(tmp_path / "proc", **cpu)
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    if platform is not None:
        dmi_tree(sysfs, platform)
    settings = resolve({"path.procfs": procfs.procfs, "path.sysfs": str(sysfs)}, None, {})
    return procfs, settings


def watts_at(source: CpuModelSource, procfs: ProcfsTree, load: float) -> float:
    """Mean power the model counted over one interval at `load` (jiffies in /proc/stat)."""
    if not isinstance(source.clock, FakeClock):
        source.clock = FakeClock()  # as the sampler gives it one
    first = source.read()
    assert first.status.reason == OK, first.status
    source.clock.advance(1.0)
    busy = round(1000 * load)
    procfs.advance(busy, 1000 - busy)
    second = source.read()
    a, b = first.readings[0], second.readings[0]
    return (b.value - a.value) / (b.at - a.at)


def assert_curve(source, procfs, expected: dict[float, float]) -> None:
    for load in LOADS:
        assert watts_at(source, procfs, load) == pytest.approx(expected[load], rel=1e-9), load


def test_four_vcpu_vm_on_an_epyc_7763_host(tmp_path):
    procfs, settings = machine(tmp_path, "kvm", threads=4, sockets=1, kind="amd_milan",
                               hypervisor=True, model="AMD EPYC 7763 64-Core Processor",
                               mem_kib=16 * GIB_KIB)
    source = CpuModelSource(procfs.procfs, settings)
    share_watts = 280.0 * 4 / 128  # the VM sees 4 of the chip's 128 threads
    expected = {u: TEADS[u] * share_watts for u in LOADS}
    assert_curve(source, procfs, expected)
    assert 1.0 < expected[0.0] < 1.1 and 8.9 < expected[1.0] < 9.0  # about 1-9 W, not 34-286 W
    assert source.range.method == "tdp_curve"
    assert "VM share 4/128 threads" in source.range.basis
    # TDP is the CPU alone: all memory counts
    dram = DramModelSource(procfs.procfs, settings).read()
    assert dram.status.method == "all_memory"
    assert dram.status.detail.endswith(f"= {16 * CCF_GB_PER_WATT:.1f} W")


def test_eight_vcpu_vm_on_a_xeon_8480_plus_host(tmp_path):
    procfs, settings = machine(tmp_path, "kvm", threads=8, sockets=1, kind="intel_spr",
                               hypervisor=True,
                               model="Intel(R) Xeon(R) Platinum 8480+")
    source = CpuModelSource(procfs.procfs, settings)
    share_watts = 350.0 * 8 / 112
    assert_curve(source, procfs, {u: TEADS[u] * share_watts for u in LOADS})
    assert source.range.max_watts < 28.0  # no more than an unknown 8-thread CPU (8 x 3.5 W)


def test_unknown_cpu(tmp_path):
    procfs, settings = machine(tmp_path, None, threads=6, sockets=1, hypervisor=True,
                               model="Imaginary CPU 9000", mem_kib=24 * GIB_KIB)
    source = CpuModelSource(procfs.procfs, settings)
    # CCF's AWS averages per vCPU (the per-thread defaults), linear in between
    assert_curve(source, procfs, {u: 6 * (0.74 + u * (3.5 - 0.74)) for u in LOADS})
    assert source.range.method == "per_thread"
    # whole-server figures include memory; the host chip is unknown, so none is added
    dram = DramModelSource(procfs.procfs, settings).read()
    assert dram.status.method == "beyond_reference"
    assert dram.status.detail.endswith("= 0.0 W")


def test_bare_metal_two_socket_server(tmp_path):
    procfs, settings = machine(tmp_path, "dell", threads=224, sockets=2, kind="intel_spr",
                               model="Intel(R) Xeon(R) Platinum 8480+",
                               mem_kib=1024 * GIB_KIB)
    source = CpuModelSource(procfs.procfs, settings)
    assert_curve(source, procfs, {u: TEADS[u] * 350.0 * 2 for u in LOADS})
    assert "2 socket(s)" in source.range.basis
    dram = DramModelSource(procfs.procfs, settings).read()
    assert dram.status.detail.endswith(f"= {1024 * CCF_GB_PER_WATT:.1f} W")


@pytest.mark.parametrize("cloud, low, high", [("aws", 0.74, 3.5), ("gcp", 0.71, 4.26),
                                              ("azure", 0.78, 3.76)])
def test_known_cloud_uses_its_per_vcpu_figures(tmp_path, cloud, low, high):
    procfs, settings = machine(tmp_path, cloud, threads=4, sockets=1, kind="amd_milan",
                               hypervisor=True, model="AMD EPYC 7763 64-Core Processor")
    source = CpuModelSource(procfs.procfs, settings)
    assert_curve(source, procfs, {u: 4 * (low + u * (high - low)) for u in LOADS})
    assert source.range.method == "cloud_per_vcpu" and cloud in source.range.basis


def test_local_hyper_v_is_not_azure(tmp_path):
    procfs, settings = machine(tmp_path, "azure", threads=4, sockets=1, kind="amd_milan",
                               hypervisor=True, model="AMD EPYC 7763 64-Core Processor")
    (tmp_path / "sys/devices/virtual/dmi/id/chassis_asset_tag").write_text("None\n")
    source = CpuModelSource(procfs.procfs, settings)
    source.read()
    assert source.range.method == "tdp_curve"


@pytest.mark.parametrize("cloud, gb_per_chip", [("aws", 80.69), ("azure", 80.47)])
def test_dram_on_a_cloud_vm_counts_only_memory_beyond_the_reference(tmp_path, cloud, gb_per_chip):
    # 4 vCPUs of a 128-thread EPYC 7763 with 64 GiB: the reference servers include
    # 4 x GB-per-chip / 128 of memory with the per-vCPU figures
    procfs, settings = machine(tmp_path, cloud, threads=4, sockets=1, kind="amd_milan",
                               hypervisor=True, model="AMD EPYC 7763 64-Core Processor",
                               mem_kib=64 * GIB_KIB)
    result = DramModelSource(procfs.procfs, settings).read()
    extra = 64 - 4 * gb_per_chip / 128
    assert result.status.method == "beyond_reference"
    assert result.status.detail.endswith(f"= {extra * CCF_GB_PER_WATT:.1f} W")


def test_dram_counts_all_memory_when_rapl_measures_the_cpu(tmp_path):
    procfs, settings = machine(tmp_path, "aws", threads=4, sockets=1, kind="amd_milan",
                               hypervisor=True, model="AMD EPYC 7763 64-Core Processor",
                               mem_kib=8 * GIB_KIB)
    result = DramModelSource(procfs.procfs, settings).read(frozenset({"cpu"}))
    assert result.status.method == "all_memory"
    assert result.status.detail.endswith(f"= {8 * CCF_GB_PER_WATT:.1f} W")


def test_model_basis_on_the_landing_page_in_the_metrics_and_the_log(tmp_path):
    """A real exporter on a 4-vCPU AWS VM without RAPL: the modelled series say how."""
    from prometheus_client.parser import text_string_to_metric_families

    from exporter import metrics
    from tests.harness import ExporterProcess, http_get, wait_for

    procfs, _settings = machine(tmp_path, "aws", threads=4, sockets=1, kind="amd_milan",
                                hypervisor=True, model="AMD EPYC 7763 64-Core Processor",
                                mem_kib=64 * GIB_KIB)
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tmp_path / 'sys'}", f"--path.procfs={procfs.procfs}",
        "--sample.interval=100ms", "--carbon.intensity=300", "--no-collector.nvml"])
    try:
        exporter.wait_ready()

        def model_info():
            families = {f.name: f for f in text_string_to_metric_families(exporter.metrics())}
            family = families.get(metrics.MODEL_INFO.family_name)
            samples = {s.labels["collector"]: s.labels for s in family.samples} if family else {}
            return samples if len(samples) == 2 else None

        info = wait_for(model_info, 10, "carbon_model_info for both models")
        assert info["cpu-model"]["method"] == "cloud_per_vcpu"
        assert "4 vCPU x 0.74-3.5 W" in info["cpu-model"]["basis"]
        assert info["dram-model"]["method"] == "beyond_reference"
        assert "GB/chip" in info["dram-model"]["basis"]
        page = http_get(exporter.url + "/")[2].decode()
        assert "4 vCPU x 0.74-3.5 W" in page and "GB/chip" in page
    finally:
        exporter.stop()
    log = exporter.output()
    assert "aws per vCPU: 4 vCPU x 0.74-3.5 W" in log
    assert "dram-model:" in log and "included in the per-vCPU figures" in log
