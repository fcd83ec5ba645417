"""Power and energy sensors of the Linux hwmon class (<sysfs>/class/hwmon).

Layout (kernel Documentation/hwmon/sysfs-interface.rst): every hwmonN is a symlink into the
device tree; `name` says which driver made it, `device` links to the hardware it measures.
power*_input / power*_average are microwatts, energy*_input microjoules. Drivers registered
with the old hwmon_device_register() (the ACPI power meter) keep their attributes, `name`
included, in the device directory (hwmonN/device/), so both places are read, as libsensors
does.

What counts, and as what (anything else is listed as ignored, never summed):
  power_meter  ACPI 4.0 power meter (ACPI000D): the whole platform, power1_average over
               power1_average_interval; power1_is_battery=1 (laptops) is not a platform meter
  amdgpu       AMD GPU: power1_input (instantaneous, newer kernels) else power1_average;
               amdgpu has no energy counter. On APUs the value includes the CPU (see README)
  i915, xe     Intel discrete GPUs: energy1_input (xe: the channel labelled "card"; "pkg" is
               inside it); the per-tile i915_gtN sensors are inside the card and not summed
Sensors are identified by name + device link (ACPI000D:00, 0000:03:00.0): hwmonN numbers
change from boot to boot, the device does not. Device labels are vendor-neutral: the meter is
power_meter-<ACPI device>, a GPU gpu-<PCI address> (NVML's gpu-<index> cannot collide with it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.ledger import PLATFORM, Reading
from exporter.sources import (
    ABSENT,
    ENERGY,
    ERROR,
    OK,
    PERMISSION,
    Source,
    SourceResult,
    Status,
)
from exporter.sources import (
    PLATFORM as PLATFORM_READING,
)

if TYPE_CHECKING:
    from exporter.config import Config

# Bounds above which a reading is a glitch, not power (ledger drops and counts it).
MAX_PLATFORM_WATTS = 20000.0
MAX_GPU_WATTS = 3000.0

PERMISSION_HINT = (
    "run as root, give the exporter's group read access to the file (udev rule), or grant "
    "CAP_DAC_READ_SEARCH")

_INDEX_RE = re.compile(r"^hwmon\d+$")


@dataclass(frozen=True, slots=True)
class Sensor:
    """One value the source reads each sample."""

    hwmon: str  # hwmon3 (changes across boots; for messages only)
    driver: str  # the hwmon name: power_meter, amdgpu, xe
    device: str  # exported device label: power_meter-ACPI000D:00, gpu-0000:03:00.0
    path: str  # the attribute file
    counter: bool  # energy*_input (microjoules) or a power sample (microwatts)
    component: str | None  # "gpu" for components; None for the platform meter
    domain: str | None  # PLATFORM for the platform meter
    max_watts: float


def _read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _read_integer(path: str) -> int:
    text = _read_text(path)
    if not text.isdigit():
        raise ValueError(f"{path}: {text[:40]!r} is not a sensor value")
    return int(text)


def _attribute_dir(hwmon_dir: str) -> str:
    """Where the attributes are: the hwmon directory, or its device for old-style drivers."""
    if os.path.exists(os.path.join(hwmon_dir, "name")):
        return hwmon_dir
    return os.path.join(hwmon_dir, "device")


def _device_link(hwmon_dir: str) -> str:
    link = os.path.join(hwmon_dir, "device")
    if not os.path.islink(link):
        return os.path.basename(hwmon_dir)  # virtual sensors have no device
    return os.path.basename(os.path.realpath(link))  # the link is relative (../../..)


def _first(attrs: str, names: tuple[str, ...]) -> str | None:
    for name in names:
        path = os.path.join(attrs, name)
        if os.path.exists(path):
            return path
    return None


def _energy_channel(attrs: str, wanted_label: str) -> str | None:
    """energyN_input of the channel labelled `wanted_label`, else energy1_input when the
    driver labels nothing."""
    labelled = False
    for entry in sorted(os.listdir(attrs)):
        match = re.match(r"^energy(\d+)_label$", entry)
        if not match:
            continue
        labelled = True
        try:
            label = _read_text(os.path.join(attrs, entry))
        except OSError:
            continue
        if label == wanted_label:
            return _first(attrs, (f"energy{match.group(1)}_input",))
    return None if labelled else _first(attrs, ("energy1_input",))


def classify(hwmon: str, hwmon_dir: str) -> tuple[Sensor | None, str]:
    """The sensor this hwmon device contributes (None: nothing counted) and a short note."""
    attrs = _attribute_dir(hwmon_dir)
    driver = _read_text(os.path.join(attrs, "name"))
    link = _device_link(hwmon_dir)
    device = f"{driver}-{link}"
    if driver == "power_meter":
        battery = _first(attrs, ("power1_is_battery",))
        if battery is not None and _read_text(battery) == "1":
            return None, f"{device}: battery meter, not the platform"
        path = _first(attrs, ("energy1_input", "power1_input", "power1_average"))
        if path is None:
            return None, f"{device}: no power reading (meter cannot measure)"
        return Sensor(hwmon, driver, device, path, path.endswith("energy1_input"), None,
                      PLATFORM, MAX_PLATFORM_WATTS), device
    if driver == "amdgpu":
        path = _first(attrs, ("power1_input", "power1_average"))
        if path is None:
            return None, f"{device}: no power reading"
        return Sensor(hwmon, driver, f"gpu-{link}", path, False, "gpu", None,
                      MAX_GPU_WATTS), device
    if driver in ("i915", "xe"):
        path = _energy_channel(attrs, "card")
        if path is None:
            return None, f"{device}: no card energy counter"
        return Sensor(hwmon, driver, f"gpu-{link}", path, True, "gpu", None,
                      MAX_GPU_WATTS), device
    return None, ""  # temperature, fan and CPU sensors: not ours (RAPL has the CPU)


class HwmonSource(Source):
    name = "hwmon"
    # An ACPI meter read runs an ACPI method that may wait on the BMC (through IPMI), a GPU
    # reading its firmware: one that hangs is set aside by the sampler's watchdog.
    components = ("gpu",)  # the platform meter is no component: the node total
    provides = frozenset({ENERGY, PLATFORM_READING})
    source_labels = ("hwmon", "power_sample")
    summary = (
        "`<sysfs>/class/hwmon`: the ACPI power meter (`name` = `power_meter`, "
        "`power1_average`) as the platform reading (see Power at the wall); AMD GPUs "
        "(`amdgpu`: `power1_input`, else `power1_average`, integrated as power samples; amdgpu "
        "has no energy counter) and Intel discrete GPUs (`i915`, `xe`: the card's "
        "`energy1_input` counter) as `component=\"gpu\"`. Devices are named by their device "
        "link: `power_meter-ACPI000D:00`, GPUs `gpu-<PCI address>` (never colliding with "
        "NVML's `gpu-<index>`). CPU sensors (`amd_energy`, `k10temp`) are left to RAPL.")

    @classmethod
    def from_config(cls, config: Config) -> HwmonSource:
        return cls(config.path_sysfs)

    def __init__(self, sysfs: str) -> None:
        self.root = os.path.join(sysfs, "class", "hwmon")
        self.listing: tuple[str, ...] | None = None
        self.sensors: list[Sensor] = []
        self.problems: list[str] = []  # from discovery, repeated until the listing changes
        self.detail = ""

    def _discover(self) -> None:
        try:
            entries = tuple(sorted(e for e in os.listdir(self.root) if _INDEX_RE.match(e)))
        except FileNotFoundError:
            entries = ()
        if entries == self.listing:
            return
        sensors, problems, notes = [], [], []
        for hwmon in entries:
            try:
                sensor, note = classify(hwmon, os.path.join(self.root, hwmon))
            except PermissionError:
                problems.append(f"{hwmon}: permission denied")
                continue
            except (OSError, UnicodeError, ValueError) as exc:
                if isinstance(exc, FileNotFoundError):
                    continue  # no name: not a sensor device (or gone while listing)
                problems.append(f"{hwmon}: {exc}")
                continue
            if sensor is not None:
                sensors.append(sensor)
            elif note:
                notes.append(note)
        # one device twice (a driver rebound under a new hwmonN) is read once
        unique = {s.device: s for s in sensors}
        self.sensors = sorted(unique.values(), key=lambda s: s.device)
        self.listing = entries
        self.problems = problems
        described = [f"{s.device} ({s.driver} {'platform meter' if s.domain else s.component}, "
                     f"{os.path.basename(s.path)})" for s in self.sensors]
        self.detail = "; ".join(described + [f"ignored {n}" for n in notes])

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        self._discover()
        if not self.sensors:
            if self.problems:
                kind = PERMISSION if all("permission" in p for p in self.problems) else ERROR
                return SourceResult(Status(kind, "; ".join(self.problems)))
            return SourceResult(Status(
                ABSENT, f"no power meter or GPU power sensor under {self.root} (the "
                        "acpi_power_meter, amdgpu, i915 or xe driver is not loaded)"))
        readings: list[Reading] = []
        denied: list[str] = []
        asleep: list[str] = []
        problems = list(self.problems)
        for sensor in self.sensors:
            at = self.clock()
            try:
                raw = _read_integer(sensor.path)
            except PermissionError:
                if sensor.component == "gpu" and os.access(sensor.path, os.R_OK):
                    # readable file, EPERM from the driver: amdgpu answers so while the GPU
                    # is runtime-suspended or in reset (it is not woken to be measured)
                    asleep.append(sensor.device)
                    continue
                denied.append(f"{sensor.device} ({sensor.path})")
                continue
            except FileNotFoundError:
                problems.append(f"{sensor.device} vanished")
                self.listing = None  # rediscover next time
                continue
            except OSError as exc:
                # the ACPI meter answers EIO/ENODATA while the BMC is busy: skip this sample
                problems.append(f"{sensor.device}: {exc.strerror or exc}")
                continue
            except ValueError as exc:
                problems.append(str(exc))
                continue
            # components follow the ledger's convention (power_sample: integrated samples);
            # a platform meter is exported on its own, labelled by where it came from
            source = "hwmon" if sensor.counter or sensor.domain else "power_sample"
            readings.append(Reading(
                collector=self.name, device=sensor.device, source=source,
                value=raw / 1e6, at=at, counter=sensor.counter, wrap=None,
                max_watts=sensor.max_watts, component=sensor.component, domain=sensor.domain,
            ))
        if denied and not readings:
            return SourceResult(Status(
                PERMISSION, f"cannot read {', '.join(denied)}: {PERMISSION_HINT}"))
        if denied:
            problems.append(f"permission denied for {', '.join(denied)}")
        if problems:
            return SourceResult(Status(ERROR, "; ".join(problems)), readings)
        if asleep:  # not a failure: nothing to measure while the GPU sleeps
            return SourceResult(Status(OK, f"{self.detail}; asleep: {', '.join(asleep)}"),
                                readings)
        return SourceResult(Status(OK, self.detail), readings)
