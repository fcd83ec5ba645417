"""Fake kernel trees in the exact layout the production code reads through --path.sysfs and
--path.procfs: powercap zones for RAPL, /proc/stat, /proc/cpuinfo and /proc/meminfo."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO_BLOCK = """processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: {model}
physical id\t: {socket}
siblings\t: {threads_per_socket}
core id\t\t: {core}
cpu cores\t: {cores_per_socket}

"""


@dataclass
class Zone:
    dirname: str
    name: str
    wrap_uj: int
    energy_uj: int = 0


@dataclass
class PowercapTree:
    """<root>/class/powercap/<zone>/{name,energy_uj,max_energy_range_uj} like the kernel's.

    The kernel's class entries are symlinks into /sys/devices/virtual/powercap; the fixture
    does the same so the production code meets the real shape.
    """

    root: Path
    zones: dict[str, Zone] = field(default_factory=dict)

    @property
    def sysfs(self) -> str:
        return str(self.root)

    def _device_dir(self, dirname: str) -> Path:
        control = dirname.split(":")[0]
        parts = dirname.split(":")
        path = self.root / "devices" / "virtual" / "powercap" / control
        for depth in range(2, len(parts) + 1):
            path = path / ":".join(parts[:depth])
        return path

    def add_zone(self, dirname: str, name: str, energy_uj: int = 0,
                 wrap_uj: int = 262143328850) -> Zone:
        control = dirname.split(":")[0]
        klass = self.root / "class" / "powercap"
        klass.mkdir(parents=True, exist_ok=True)
        control_dir = self.root / "devices" / "virtual" / "powercap" / control
        control_dir.mkdir(parents=True, exist_ok=True)
        (control_dir / "enabled").write_text("1\n")
        if not (klass / control).exists():
            os.symlink(control_dir, klass / control)
        device = self._device_dir(dirname)
        device.mkdir(parents=True, exist_ok=True)
        (device / "name").write_text(name + "\n")
        (device / "max_energy_range_uj").write_text(f"{wrap_uj}\n")
        (device / "enabled").write_text("1\n")
        os.symlink(device, klass / dirname)
        zone = Zone(dirname, name, wrap_uj, energy_uj)
        self.zones[dirname] = zone
        self.write(zone)
        return zone

    def write(self, zone: Zone) -> None:
        path = self._device_dir(zone.dirname) / "energy_uj"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{zone.energy_uj}\n")
        os.replace(tmp, path)  # readers never see a half-written value

    def advance(self, dirname: str, joules: float) -> None:
        """Add energy, wrapping at max_energy_range_uj like the hardware counter."""
        zone = self.zones[dirname]
        zone.energy_uj = (zone.energy_uj + round(joules * 1e6)) % (zone.wrap_uj + 1)
        self.write(zone)

    def set_raw(self, dirname: str, text: str) -> None:
        (self._device_dir(dirname) / "energy_uj").write_text(text)

    def energy_path(self, dirname: str) -> Path:
        return self._device_dir(dirname) / "energy_uj"

    def remove(self, dirname: str) -> None:
        (self.root / "class" / "powercap" / dirname).unlink()

    def restore(self, dirname: str) -> None:
        os.symlink(self._device_dir(dirname), self.root / "class" / "powercap" / dirname)


def intel_two_socket(root: Path) -> PowercapTree:
    """Two Xeon packages with core/uncore/dram sub-zones, a psys zone and an mmio duplicate."""
    tree = PowercapTree(root)
    tree.add_zone("intel-rapl:0", "package-0", 1_000_000)
    tree.add_zone("intel-rapl:0:0", "core", 500_000)
    tree.add_zone("intel-rapl:0:1", "uncore", 100_000)
    tree.add_zone("intel-rapl:0:2", "dram", 200_000, wrap_uj=65712999613)
    tree.add_zone("intel-rapl:1", "package-1", 2_000_000)
    tree.add_zone("intel-rapl:1:0", "core", 600_000)
    tree.add_zone("intel-rapl:1:1", "dram", 300_000, wrap_uj=65712999613)
    tree.add_zone("intel-rapl:2", "psys", 9_000_000)
    tree.add_zone("intel-rapl-mmio:0", "package-0", 1_000_123)
    return tree


def amd_one_socket(root: Path) -> PowercapTree:
    """AMD Zen through intel_rapl_msr: a package-0 zone with a core sub-zone, no dram."""
    tree = PowercapTree(root)
    tree.add_zone("intel-rapl:0", "package-0", 7_000_000, wrap_uj=65532610987)
    tree.add_zone("intel-rapl:0:0", "core", 3_000_000, wrap_uj=65532610987)
    return tree


@dataclass
class ProcfsTree:
    """<root>/{stat,cpuinfo,meminfo}; advance() adds busy and idle jiffies (USER_HZ=100)."""

    root: Path
    threads: int = 8
    sockets: int = 1
    model: str = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    mem_kib: int = 64 * 1024 * 1024
    busy: int = 10_000
    idle: int = 90_000

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        per_socket = self.threads // self.sockets
        (self.root / "cpuinfo").write_text("".join(
            CPUINFO_BLOCK.format(n=n, model=self.model, socket=n // per_socket, core=n % per_socket,
                                 threads_per_socket=per_socket, cores_per_socket=per_socket)
            for n in range(self.threads)))
        (self.root / "meminfo").write_text(
            f"MemTotal:       {self.mem_kib} kB\nMemFree:        {self.mem_kib // 2} kB\n"
            f"MemAvailable:   {self.mem_kib // 2} kB\nBuffers:          10240 kB\n"
            f"Cached:          204800 kB\nSwapCached:            0 kB\nActive:  1024 kB\n"
            f"Inactive:  1024 kB\nShmem:  0 kB\nSReclaimable:  0 kB\nSwapTotal:  0 kB\n"
            f"SwapFree:  0 kB\nDirty:  0 kB\nWriteback:  0 kB\nSlab:  0 kB\n")
        self.write_stat()

    @property
    def procfs(self) -> str:
        return str(self.root)

    def write_stat(self) -> None:
        cpu = f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0\n"
        per = "".join(f"cpu{n} {self.busy // self.threads} 0 0 {self.idle // self.threads} 0 0 0 0 0 0\n"
                      for n in range(self.threads))
        tmp = self.root / "stat.tmp"
        tmp.write_text(cpu + per + "intr 0\nctxt 0\nbtime 1700000000\nprocesses 1\n"
                       "procs_running 1\nprocs_blocked 0\n")
        os.replace(tmp, self.root / "stat")

    def advance(self, busy_jiffies: int, idle_jiffies: int) -> None:
        self.busy += busy_jiffies
        self.idle += idle_jiffies
        self.write_stat()
