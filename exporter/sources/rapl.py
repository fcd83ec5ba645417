"""RAPL energy counters from the Linux powercap class (<sysfs>/class/powercap).

Layout (kernel Documentation/power/powercap/powercap.rst):
  intel-rapl:0          name=package-0 (or package-0-die-1, psys), energy_uj, max_energy_range_uj
  intel-rapl:0:0        name=core | uncore | dram, a sub-zone of package-0
  intel-rapl-mmio:0     the same package counter through MMIO: a duplicate, not added
  intel-rapl-tpmi:0     the same through TPMI (Sapphire Rapids and later): likewise
AMD processors (Zen and later, intel_rapl_msr since Linux 5.8) appear under the same
intel-rapl control type with package-N zones and a core sub-zone, without dram.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.ledger import Reading
from exporter.sources import ABSENT, ERROR, OK, PERMISSION, Source, SourceResult, Status

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

_ZONE_RE = re.compile(r"^(intel-rapl(?:-mmio|-tpmi)?):(\d+)(?::(\d+))?$")
# The MSR interface wins; the others are used only for packages it does not show.
_CONTROL_PREFERENCE = {"intel-rapl": 0, "intel-rapl-tpmi": 1, "intel-rapl-mmio": 2}
# A delta implying more than this is a glitch, not energy (issue: > 5 kW per socket).
MAX_WATTS_PER_ZONE = 5000.0

PERMISSION_HINT = (
    "energy_uj is readable by root only since CVE-2020-8694: run as root, give the "
    "exporter's group read access to class/powercap/*/energy_uj, or grant CAP_DAC_READ_SEARCH"
)


@dataclass(frozen=True, slots=True)
class Zone:
    dirname: str  # intel-rapl:0:1
    control: str  # intel-rapl
    name: str  # package-0, core, dram, psys
    device: str  # the package the zone belongs to (psys: "psys")
    energy_path: str
    wrap_joules: float | None

    @property
    def domain(self) -> str:
        if self.name.startswith("package-"):
            return "package"
        return self.name

    @property
    def component(self) -> str | None:
        """Top-level component for node totals, or None for overlapping zones."""
        if self.domain == "package":
            return "cpu"
        if self.domain == "dram":
            return "dram"
        return None  # core and uncore are inside package; psys overlaps everything


def read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


# energy_uj and max_energy_range_uj are u64 in the kernel: at most 20 decimal digits.
MAX_DIGITS = 20


def read_microjoules(path: str) -> float:
    text = read_text(path)
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS):
        shown = text[:40] + ("..." if len(text) > 40 else "")  # never echo a whole file
        raise ValueError(f"{path}: {shown!r} is not a counter value")
    return int(text) / 1e6


# Reads this much early still count as on time: the sampler's grid jitters by milliseconds.
_MIN_INTERVAL_SLACK = 0.02


class RaplSource(Source):
    name = "rapl"
    components = ("cpu", "dram")
    source_labels = ("rapl",)
    summary = (
        "`<sysfs>/class/powercap/intel-rapl:*`: `package-N` zones are `component=\"cpu\"`, their "
        "`dram` sub-zones `component=\"dram\"`; `core`, `uncore` and `psys` only in "
        "`carbon_rapl_domain_joules_total` (they overlap the package). `intel-rapl-mmio` / "
        "`intel-rapl-tpmi` zones repeat the package counter and are used only for packages the "
        "MSR interface does not show. AMD (Zen, Linux 5.8+) exposes `package-N` with a `core` "
        "sub-zone and no `dram`.")

    @classmethod
    def from_config(cls, config: Config) -> RaplSource:
        return cls(config.path_sysfs, config.rapl_min_interval)

    def __init__(self, sysfs: str, min_interval: float = 0.0) -> None:
        self.root = os.path.join(sysfs, "class", "powercap")
        self.zones: dict[str, Zone] = {}
        self.bad_zones: dict[str, str] = {}  # dirname -> why it was skipped at discovery
        # Side channel bound (Platypus, CVE-2020-8694): between two real reads the previous
        # result is returned unchanged, readings and timestamps alike, so the ledger sees no
        # new delta and exported energy and power move at most once per min_interval.
        self.min_interval = min_interval
        self._last: tuple[float, SourceResult] | None = None
        self.active: list[Zone] = []  # recomputed only when the zone set changes
        self.active_detail = ""

    def configure(self, config: Config) -> None:
        """SIGHUP: --rapl.min-interval is reloadable."""
        self.min_interval = config.rapl_min_interval

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.min_interval - _MIN_INTERVAL_SLACK:
            return self._last[1]
        result = self._read()
        self._last = (now, result)
        return result

    def _load_zone(self, dirname: str, control: str, package_index: str, sub_index: str | None) -> Zone:
        path = os.path.join(self.root, dirname)
        name = read_text(os.path.join(path, "name"))
        if sub_index is None:
            device = name
        else:
            device = read_text(os.path.join(self.root, f"{control}:{package_index}", "name"))
        try:
            wrap = read_microjoules(os.path.join(path, "max_energy_range_uj"))
        except (OSError, ValueError):
            wrap = None  # still usable; a backwards step is then a reset, not a wrap
        return Zone(dirname, control, name, device, os.path.join(path, "energy_uj"), wrap or None)

    def _discover(self) -> list[str]:
        """Refresh the zone list; returns problems met (zones that could not be loaded)."""
        problems = []
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            entries = []
        current = set()
        for dirname in entries:
            match = _ZONE_RE.match(dirname)
            if not match:
                continue
            current.add(dirname)
            if dirname in self.zones:
                continue
            try:
                self.zones[dirname] = self._load_zone(dirname, *match.groups())
                self.bad_zones.pop(dirname, None)
                self._choose_active()
            except (OSError, UnicodeError) as exc:
                self.bad_zones[dirname] = str(exc)
                problems.append(f"{dirname}: {exc.strerror if isinstance(exc, OSError) else exc}")
        for dirname in set(self.zones) - current:
            problems.append(f"zone {dirname} ({self.zones[dirname].name}) vanished")
            # keep it known so the problem is reported until it returns
        return problems

    def _choose_active(self) -> None:
        """Zones to read: duplicates of a package through another interface left out."""
        best: dict[tuple[str, str], Zone] = {}
        for zone in self.zones.values():
            key = (zone.device, zone.name)
            held = best.get(key)
            if held is None or _CONTROL_PREFERENCE[zone.control] < _CONTROL_PREFERENCE[held.control]:
                best[key] = zone
        self.active = sorted(best.values(), key=lambda z: z.dirname)
        self.active_detail = f"{len(self.active)} zones: " + ", ".join(
            f"{z.device}/{z.name}" if z.device != z.name else z.name for z in self.active)

    def _read(self) -> SourceResult:
        problems = self._discover()
        if not self.zones:
            if problems:
                return SourceResult(Status(ERROR, "; ".join(problems)))
            return SourceResult(Status(
                ABSENT, f"no RAPL zones under {self.root} (virtual machine, non-Intel/AMD CPU, "
                        "or the intel_rapl_msr module is not loaded)"))
        readings = []
        denied = []
        for zone in self.active:
            try:
                joules = read_microjoules(zone.energy_path)
                # Stamped when the value is obtained, not before the read: a read that blocked
                # for seconds must not put seconds of energy into one sample's power.
                at = self.clock()
            except PermissionError:
                denied.append(zone.dirname)
                continue
            except FileNotFoundError:
                continue  # reported by _discover as vanished, or on the next cycle
            except OSError as exc:
                problems.append(f"{zone.dirname}: {os.strerror(exc.errno or errno.EIO)}")
                continue
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if zone.wrap_joules is not None and joules > zone.wrap_joules:
                # Not a counter value: skipped, so the last good one stays the baseline and
                # the next good read bridges the gap (nothing lost, no glitch).
                problems.append(f"{zone.dirname}: energy_uj {joules * 1e6:.0f} is above "
                                f"max_energy_range_uj {zone.wrap_joules * 1e6:.0f}")
                continue
            readings.append(Reading(
                collector=self.name, device=zone.device, source="rapl", value=joules, at=at,
                counter=True, wrap=zone.wrap_joules, max_watts=MAX_WATTS_PER_ZONE,
                component=zone.component, domain=zone.domain,
            ))
        if denied and not readings:
            return SourceResult(Status(
                PERMISSION, f"cannot read energy_uj of {', '.join(denied)}: {PERMISSION_HINT}"))
        if denied:
            problems.append(f"permission denied for {', '.join(denied)}")
        if problems:
            return SourceResult(Status(ERROR, "; ".join(problems)), readings)
        return SourceResult(Status(OK, self.active_detail), readings)
