"""Grid carbon intensity: the value in force, where it came from, and the bundled dataset."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from exporter import data
from exporter.confutil import ConfigError

WORLD = "WORLD"

# What an intensity counts (the `basis` label): lifecycle CO2e (generation plus upstream fuel
# supply, plant construction, all gases; Electricity Maps' default, Ember) or direct CO2 from
# combustion only (UK Carbon Intensity API, WattTime MOER). Configured values say unknown
# unless the config names it.
LIFECYCLE = "lifecycle"
DIRECT = "direct"
UNKNOWN = "unknown"
BASES = (LIFECYCLE, DIRECT, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Intensity:
    grams_per_kwh: float
    grid_zone: str
    provider: str  # static, dataset, or a live provider's name
    kind: str = "average"  # average or marginal
    fetched_at: float | None = None  # unix time; None: a fixed value that does not age
    basis: str = UNKNOWN  # lifecycle, direct or unknown (see BASES)

    def age(self, now: float | None = None) -> float:
        if self.fetched_at is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.fetched_at)


@dataclass(frozen=True, slots=True)
class DatasetRow:
    zone: str
    name: str
    grams_per_kwh: float
    year: int
    source: str


@functools.lru_cache(maxsize=1)
def grid_dataset() -> dict[str, DatasetRow]:
    """exporter/data/grid_intensity.csv: annual average gCO2e/kWh by ISO 3166-1 alpha-2 code."""
    return {r["zone"].upper(): DatasetRow(r["zone"].upper(), r["name"], float(r["grams_per_kwh"]),
                                          int(r["year"]), r["source"])
            for r in data.rows("grid_intensity.csv")}


def static_intensity(config) -> Intensity:
    """--carbon.intensity, else --carbon.zone's country in the dataset, else the world average.

    The zone may be a cloud region (aws:eu-west-1) or a sub-national zone id (US-CAL-CISO):
    the dataset is by country, so both resolve to their country here.
    """
    from exporter.carbon.zones import resolve_zone  # zones imports config, like this module

    zone = resolve_zone(config.carbon_zone)
    if config.carbon_intensity is not None:
        return Intensity(config.carbon_intensity, zone.em_zone or zone.country if zone.text else "",
                         "static")
    row = grid_dataset().get(zone.country)
    if row is None:
        raise ConfigError(
            f"carbon.zone: {zone.text!r} is not in the bundled dataset (use an ISO 3166-1 alpha-2 "
            f"code such as DE or US, {WORLD} for the world average, or set carbon.intensity)")
    return Intensity(row.grams_per_kwh, row.zone, "dataset", basis=LIFECYCLE)  # Ember
