"""Metric names the report queries, taken from exporter.metrics (the one place they are
defined) so that a rename there reaches the report too. Series that an older exporter does
not export are simply absent from Prometheus, and the report says "not available"."""

from exporter import metrics as _m


def _name(spec: str, default: str) -> str:
    # Attribution and forecast specs arrive with their features; an exporter built without
    # them still uses these names (agreed in the metric contract).
    found = getattr(_m, spec, None)
    return found.name if found is not None else default


ENERGY = _m.ENERGY.name
EMISSIONS = _m.EMISSIONS.name
PUE = _m.PUE.name
GRID_INTENSITY = _m.GRID_INTENSITY.name
GRID_INTENSITY_AGE = _m.GRID_INTENSITY_AGE.name
COLLECTOR_UP = _m.COLLECTOR_UP.name
BUILD_INFO = _m.BUILD_INFO.name
MODEL_INFO = _name("MODEL_INFO", "carbon_model_info")
WORKLOAD_ENERGY = _name("WORKLOAD_ENERGY", "carbon_workload_energy_joules_total")
WORKLOAD_EMISSIONS = _name("WORKLOAD_EMISSIONS", "carbon_workload_emissions_grams_total")
PROVIDER_UP = _name("GRID_PROVIDER_UP", "carbon_grid_provider_up")
# the reasons of the _up series (older exporters put `reason` on _up itself)
COLLECTOR_STATUS = _name("COLLECTOR_STATUS", "carbon_exporter_collector_status_info")
PROVIDER_STATUS = _name("GRID_PROVIDER_STATUS", "carbon_grid_provider_status_info")
FORECAST_MIN = _name("GRID_FORECAST_MIN", "carbon_grid_intensity_forecast_min_grams_per_kwh")
