"""Metric names the report queries, taken from exporter.metrics (the one place they are
defined) so that a rename there reaches the report too."""

from exporter import metrics as _m

ENERGY = _m.ENERGY.name
EMISSIONS = _m.EMISSIONS.name
PUE = _m.PUE.name
GRID_INTENSITY = _m.GRID_INTENSITY.name
GRID_INTENSITY_AGE = _m.GRID_INTENSITY_AGE.name
COLLECTOR_UP = _m.COLLECTOR_UP.name
BUILD_INFO = _m.BUILD_INFO.name
WORKLOAD_ENERGY = "carbon_workload_energy_joules_total"
WORKLOAD_EMISSIONS = "carbon_workload_emissions_grams_total"
FORECAST_MIN = "carbon_grid_intensity_forecast_min_grams_per_kwh"
