"""hwmon trees in the kernel's layout, read through --path.sysfs.

class/hwmon/hwmonN is a symlink into the device tree. The ACPI power meter registers with the
old hwmon_device_register(): its hwmonN directory holds only `device`, `subsystem`, `power/`
and `uevent`, and every attribute (`name` = power_meter included) lives on the ACPI device
(drivers/hwmon/acpi_power_meter.c). amdgpu, i915 and xe register with
hwmon_device_register_with_info(): attributes in hwmonN itself. Values are what the drivers
print: microwatts, microjoules, milliseconds, one integer and a newline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class HwmonTree:
    root: Path
    hwmons: dict[str, Path] = field(default_factory=dict)  # hwmonN -> attribute directory

    @property
    def sysfs(self) -> str:
        return str(self.root)

    def _register(self, device_dir: Path, attrs_in_device: bool) -> tuple[str, Path]:
        klass = self.root / "class" / "hwmon"
        klass.mkdir(parents=True, exist_ok=True)
        index = len(self.hwmons)
        hwmon = f"hwmon{index}"
        hwmon_dir = device_dir / "hwmon" / hwmon
        hwmon_dir.mkdir(parents=True)
        (hwmon_dir / "power").mkdir()
        (hwmon_dir / "uevent").write_text("")
        os.symlink(os.path.relpath(device_dir, hwmon_dir), hwmon_dir / "device")
        os.symlink(os.path.relpath(klass, hwmon_dir), hwmon_dir / "subsystem")
        os.symlink(os.path.relpath(hwmon_dir, klass), klass / hwmon)
        attrs = device_dir if attrs_in_device else hwmon_dir
        self.hwmons[hwmon] = attrs
        return hwmon, attrs

    def write(self, hwmon: str, attribute: str, value: int | str) -> None:
        path = self.hwmons[hwmon] / attribute
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{value}\n")
        os.replace(tmp, path)  # readers never see a half-written value

    def path(self, hwmon: str, attribute: str) -> Path:
        return self.hwmons[hwmon] / attribute

    def add_acpi_power_meter(self, microwatts: int, interval_ms: int = 1000,
                             instance: str = "ACPI000D:00", battery: bool = False) -> str:
        device = self.root / "devices" / "LNXSYSTM:00" / "LNXSYBUS:00" / instance
        device.mkdir(parents=True)
        hwmon, attrs = self._register(device, attrs_in_device=True)
        (attrs / "measures").mkdir()
        (attrs / "path").write_text("\\_SB_.PMI0\n")
        (attrs / "hid").write_text("ACPI000D\n")
        files = {
            "name": "power_meter", "power1_average": microwatts,
            "power1_average_interval": interval_ms, "power1_average_interval_min": 1000,
            "power1_average_interval_max": 60000, "power1_accuracy": "95.0%",
            "power1_is_battery": 1 if battery else 0, "power1_model_number": "",
            "power1_oem_info": "", "power1_serial_number": "",
        }
        for name, value in files.items():
            (attrs / name).write_text(f"{value}\n")
        return hwmon

    def _pci_device(self, address: str) -> Path:
        device = self.root / "devices" / "pci0000:00" / "0000:00:03.1" / address
        device.mkdir(parents=True)
        (device / "vendor").write_text("0x1002\n")
        return device

    def add_amdgpu(self, address: str, average_uw: int, input_uw: int | None = None) -> str:
        """power1_average always; power1_input on newer kernels and GPUs (amdgpu_pm.c)."""
        device = self._pci_device(address)
        hwmon, attrs = self._register(device, attrs_in_device=False)
        files: dict[str, int | str] = {
            "name": "amdgpu", "power1_average": average_uw, "power1_cap": 300000000,
            "power1_cap_max": 300000000, "power1_cap_min": 0, "temp1_input": 45000,
            "temp1_label": "edge", "in0_input": 800, "in0_label": "vddgfx", "fan1_input": 1200,
        }
        if input_uw is not None:
            files["power1_input"] = input_uw
        for name, value in files.items():
            (attrs / name).write_text(f"{value}\n")
        return hwmon

    def add_xe(self, address: str, card_uj: int, pkg_uj: int) -> str:
        """Intel xe: energy1 = card, energy2 = pkg (inside the card), each with a label."""
        device = self._pci_device(address)
        hwmon, attrs = self._register(device, attrs_in_device=False)
        files: dict[str, int | str] = {
            "name": "xe", "energy1_input": card_uj, "energy1_label": "card",
            "energy2_input": pkg_uj, "energy2_label": "pkg", "power1_max": 150000000,
            "power1_label": "card", "power2_max": 120000000, "power2_label": "pkg",
        }
        for name, value in files.items():
            (attrs / name).write_text(f"{value}\n")
        return hwmon

    def add_i915(self, address: str, energy_uj: int, tiles: int = 0) -> str:
        """Intel i915 discrete card: energy1_input for the card; per-tile i915_gtN sensors."""
        device = self._pci_device(address)
        hwmon, attrs = self._register(device, attrs_in_device=False)
        for name, value in {"name": "i915", "energy1_input": energy_uj,
                            "power1_max": 150000000, "power1_rated_max": 150000000}.items():
            (attrs / name).write_text(f"{value}\n")
        for tile in range(tiles):
            gt_hwmon, gt_attrs = self._register(device, attrs_in_device=False)
            (gt_attrs / "name").write_text(f"i915_gt{tile}\n")
            (gt_attrs / "energy1_input").write_text(f"{energy_uj // 2}\n")
        return hwmon

    def add_cpu_temperature(self) -> str:
        """k10temp: a temperature-only sensor the source must leave alone."""
        device = self.root / "devices" / "pci0000:00" / "0000:00:18.3"
        device.mkdir(parents=True)
        hwmon, attrs = self._register(device, attrs_in_device=False)
        (attrs / "name").write_text("k10temp\n")
        (attrs / "temp1_input").write_text("41000\n")
        return hwmon
