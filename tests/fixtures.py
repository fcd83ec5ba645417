"""Fake kernel trees in the exact layout the production code reads through --path.sysfs and
--path.procfs: powercap zones for RAPL, /proc/stat, /proc/cpuinfo and /proc/meminfo."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# One /proc/cpuinfo entry in the field order and tab layout of the kernel's show_cpuinfo()
# (arch/x86/kernel/cpu/proc.c); "TLB size" is printed for AMD only. CPU_KINDS below carry the
# values real machines of each kind print (family/model/stepping, cache, flags).
CPUINFO_BLOCK = """processor\t: {n}
vendor_id\t: {vendor}
cpu family\t: {family}
model\t\t: {model_no}
model name\t: {model}
stepping\t: {stepping}
microcode\t: {microcode}
cpu MHz\t\t: {mhz}
cache size\t: {cache}
physical id\t: {socket}
siblings\t: {threads_per_socket}
core id\t\t: {core}
cpu cores\t: {cores_per_socket}
apicid\t\t: {apicid}
initial apicid\t: {apicid}
fpu\t\t: yes
fpu_exception\t: yes
cpuid level\t: {cpuid_level}
wp\t\t: yes
flags\t\t: {flags}
bugs\t\t: {bugs}
bogomips\t: {bogomips}
{tlb}clflush size\t: 64
cache_alignment\t: 64
address sizes\t: {address_sizes}
power management:

"""

_X86_COMMON = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
               "mmx fxsr sse sse2")
CPU_KINDS: dict[str, dict[str, str]] = {
    # Sapphire Rapids (family 6 model 143), e.g. Xeon Platinum 8480+ / 8481C
    "intel_spr": dict(
        vendor="GenuineIntel", family="6", model_no="143", stepping="8", microcode="0x2b000590",
        mhz="2000.000", cache="107520 KB", cpuid_level="32", bogomips="4000.00", tlb="",
        address_sizes="46 bits physical, 57 bits virtual",
        bugs="spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb",
        flags=_X86_COMMON + " ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl "
        "xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pdcm pcid "
        "sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand "
        "{hypervisor}lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced "
        "fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed "
        "adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec "
        "xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke waitpkg "
        "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 "
        "rdpid bus_lock_detect cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk "
        "amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities"),
    # Zen 3 Milan (family 25 model 1), e.g. EPYC 7763
    "amd_milan": dict(
        vendor="AuthenticAMD", family="25", model_no="1", stepping="1", microcode="0xffffffff",
        mhz="2445.426", cache="512 KB", cpuid_level="13", bogomips="4890.85",
        tlb="TLB size\t: 2560 4K pages\n", address_sizes="48 bits physical, 48 bits virtual",
        bugs="sysret_ss_attrs null_seg spectre_v1 spectre_v2 spec_store_bypass srso",
        flags=_X86_COMMON + " ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc "
        "rep_good nopl tsc_reliable nonstop_tsc cpuid extd_apicid aperfmperf pni pclmulqdq "
        "ssse3 fma cx16 pcid sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand {hypervisor}"
        "lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext "
        "invpcid_single vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
        "clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr rdpru arat "
        "npt nrip_save umip vaes vpclmulqdq rdpid fsrm"),
}


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
    """<root>/{stat,cpuinfo,meminfo} in the kernel's layout; advance() adds busy and idle
    jiffies (USER_HZ=100). kind picks the CPU_KINDS values; hypervisor adds the cpuinfo flag
    the kernel sets under a hypervisor; cores_per_socket defaults to threads/2 (SMT on)."""

    root: Path
    threads: int = 8
    sockets: int = 1
    model: str = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    mem_kib: int = 64 * 1024 * 1024
    busy: int = 10_000
    idle: int = 90_000
    kind: str = "intel_spr"
    hypervisor: bool = False
    forks: int = 1  # /proc/stat "processes": forks since boot; fork() moves it, as the kernel does

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        per_socket = self.threads // self.sockets
        cores = max(1, per_socket // 2)
        values = dict(CPU_KINDS[self.kind])
        values["flags"] = values["flags"].format(
            hypervisor="hypervisor " if self.hypervisor else "")
        (self.root / "cpuinfo").write_text("".join(
            CPUINFO_BLOCK.format(n=n, model=self.model, socket=n // per_socket,
                                 core=(n % per_socket) % cores, apicid=n,
                                 threads_per_socket=per_socket, cores_per_socket=cores, **values)
            for n in range(self.threads)))
        free = self.mem_kib // 2
        (self.root / "meminfo").write_text("".join(f"{key + ':':<16}{value:>8} kB\n" for key, value in (
            ("MemTotal", self.mem_kib), ("MemFree", free), ("MemAvailable", free + 204800),
            ("Buffers", 10240), ("Cached", 204800), ("SwapCached", 0), ("Active", 1024),
            ("Inactive", 1024), ("Active(anon)", 512), ("Inactive(anon)", 512),
            ("Active(file)", 512), ("Inactive(file)", 512), ("Unevictable", 0), ("Mlocked", 0),
            ("SwapTotal", 0), ("SwapFree", 0), ("Dirty", 0), ("Writeback", 0),
            ("AnonPages", 1024), ("Mapped", 1024), ("Shmem", 0), ("KReclaimable", 0),
            ("Slab", 0), ("SReclaimable", 0), ("SUnreclaim", 0))))
        self.write_stat()

    @property
    def procfs(self) -> str:
        return str(self.root)

    def write_stat(self) -> None:
        cpu = f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0\n"
        per = "".join(f"cpu{n} {self.busy // self.threads} 0 0 {self.idle // self.threads} 0 0 0 0 0 0\n"
                      for n in range(self.threads))
        data = (cpu + per + f"intr 0\nctxt 0\nbtime 1700000000\nprocesses {self.forks}\n"
                "procs_running 1\nprocs_blocked 0\n").encode()
        # in place, as the kernel's file: a reader holding it open sees each new content. The
        # counters only grow, so writing first and cutting after never shows a short file.
        fd = os.open(self.root / "stat", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def advance(self, busy_jiffies: int, idle_jiffies: int) -> None:
        self.busy += busy_jiffies
        self.idle += idle_jiffies
        self.write_stat()

    def fork(self, processes: int = 1) -> None:
        """Count new processes in the "processes" line (the caller creates their <pid> dirs)."""
        self.forks += processes
        self.write_stat()


# Values DMI reports (<sysfs>/class/dmi/id/*) on common platforms. Azure's chassis asset tag
# is the fixed one cloud-init identifies Azure by; a local Hyper-V VM has another.
DMI_PLATFORMS: dict[str, dict[str, str]] = {
    "aws": {"sys_vendor": "Amazon EC2", "product_name": "m6i.2xlarge",
            "bios_vendor": "Amazon EC2", "chassis_asset_tag": "Amazon EC2"},
    "gcp": {"sys_vendor": "Google", "product_name": "Google Compute Engine",
            "bios_vendor": "Google", "chassis_asset_tag": ""},
    "azure": {"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine",
              "bios_vendor": "Microsoft Corporation",
              "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"},
    "kvm": {"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)",
            "bios_vendor": "SeaBIOS", "chassis_asset_tag": ""},
    "dell": {"sys_vendor": "Dell Inc.", "product_name": "PowerEdge R760",
             "bios_vendor": "Dell Inc.", "chassis_asset_tag": ""},
}


def dmi_tree(sysfs: Path, platform: str) -> Path:
    """<sysfs>/devices/virtual/dmi/id/<field>, with class/dmi/id linking to it as the kernel
    does; fields end in a newline like the kernel's."""
    target = sysfs / "devices" / "virtual" / "dmi" / "id"
    target.mkdir(parents=True, exist_ok=True)
    for name, value in DMI_PLATFORMS[platform].items():
        (target / name).write_text(value + "\n")
    link = sysfs / "class" / "dmi" / "id"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(os.path.relpath(target, link.parent))
    return sysfs
