"""Fixed values: `static` (a configured gCO2e/kWh) and `dataset` (the bundled annual average
for the zone's country). They never age and never fail, so they end every chain."""

from __future__ import annotations

from exporter.carbon import LIFECYCLE, UNKNOWN, Intensity, grid_dataset
from exporter.carbon.providers import (
    BASIS_OPTION, KIND_OPTION, MAX_GRAMS_PER_KWH, Fetched, Provider,
)
from exporter.confutil import ConfigError


class Static(Provider):
    type = "static"
    auth = 'none'
    summary = (
        '`value` (gCO2e/kWh), optional `kind` and `basis` (default `unknown`; `file` takes '
        'them too).'
    )
    options = {"value": {"type": "number", "minimum": 0, "maximum": MAX_GRAMS_PER_KWH},
               **KIND_OPTION,
               **BASIS_OPTION}
    required = ("value",)
    refresh = 3600.0
    max_age = float("inf")
    live = False

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        label = spec.zone or (zone.em_zone or zone.country if zone.text else "")
        self.value = Intensity(float(spec.option("value")), label, self.name,
                               spec.option("kind", "average"),
                               basis=spec.option("basis", UNKNOWN))

    def describe(self) -> str:
        return f"{self.value.grams_per_kwh:g} gCO2e/kWh"

    async def fetch(self, session) -> Fetched:
        return Fetched(self.value)


class Dataset(Provider):
    type = "dataset"
    auth = 'none'
    summary = (
        "The bundled annual average for the zone's country (Ember, `basis=\"lifecycle\"`)."
    )
    refresh = 3600.0
    max_age = float("inf")
    live = False

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        country = (spec.zone or zone.country).upper()
        row = grid_dataset().get(country)
        if row is None:
            raise ConfigError(f"{self.where}: zone {country!r} is not in the bundled dataset")
        self.row = row
        self.value = Intensity(row.grams_per_kwh, row.zone, self.name, basis=LIFECYCLE)  # Ember

    def describe(self) -> str:
        return f"bundled {self.row.source.split(',')[0]} {self.row.year} for {self.row.zone}"

    async def fetch(self, session) -> Fetched:
        return Fetched(self.value)
