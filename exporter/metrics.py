"""The one place where metric names, types, help texts and label names are defined.

The collector renders from these specs; the README's metric table, the rules and the
tests are checked against them (tests/test_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    name: str  # full name as scraped (counters include the _total suffix)
    type: str  # counter, gauge, summary, histogram
    help: str
    labels: tuple[str, ...] = ()

    @property
    def family_name(self) -> str:
        """Name handed to prometheus_client, which appends _total to counters itself."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name


ENERGY_LABELS = ("component", "device", "source")

ENERGY = MetricSpec(
    "carbon_energy_joules_total", "counter",
    "Energy used by a top-level device since the exporter started, in joules. "
    "Summing over all series gives the node's energy.",
    ENERGY_LABELS,
)
POWER = MetricSpec(
    "carbon_power_watts", "gauge",
    "Power of a top-level device over the last sample interval, in watts.",
    ENERGY_LABELS,
)
PLATFORM_ENERGY = MetricSpec(
    "carbon_platform_energy_joules_total", "counter",
    "Energy of the whole node as its platform meter reports it (ACPI power meter through "
    "hwmon, or the BMC through Redfish), in joules. When present, carbon_energy_joules_total "
    "sums to it: the components are its split and component=\"other\", "
    "source=\"platform_remainder\" is what they do not explain. Do not add the two metrics.",
    ("device", "source"),
)
PLATFORM_POWER = MetricSpec(
    "carbon_platform_power_watts", "gauge",
    "Power of the whole node as its platform meter reports it, over the last sample "
    "interval, in watts (compare with the sum of carbon_power_watts).",
    ("device", "source"),
)
POWER_PEAK = MetricSpec(
    "carbon_power_peak_watts", "gauge",
    "Highest per-sample power of a top-level device over the last --power.peak-window, in "
    "watts: a burst shorter than the scrape interval still shows, the same for every scraper.",
    ENERGY_LABELS,
)
POWER_BUDGET = MetricSpec(
    "carbon_power_budget_watts", "gauge",
    "Configured power budget (power.budget_watts), in watts: scope=node for the node (device "
    "empty), scope=gpu per GPU device.",
    ("scope", "device"),
)
RAPL_DOMAIN_ENERGY = MetricSpec(
    "carbon_rapl_domain_joules_total", "counter",
    "Energy of every RAPL zone as read (package, core, uncore, dram, psys), in joules. "
    "Zones overlap: do not sum across domains.",
    ("domain", "device"),
)
GPU_POWER_LIMIT = MetricSpec(
    "carbon_gpu_power_limit_watts", "gauge",
    "Enforced power limit of a GPU, in watts.",
    ("device", "uuid"),
)
GPU_INFO = MetricSpec(
    "carbon_gpu_info", "gauge",
    "GPU identity; always 1. Join on device; uuid and pci_bus_id survive reboots, the NVML "
    "index in device does not always.",
    ("device", "uuid", "name", "driver_version", "pci_bus_id"),
)
GRID_INTENSITY = MetricSpec(
    "carbon_grid_intensity_grams_per_kwh", "gauge",
    "Grid carbon intensity in force, in gCO2e per kWh (kWh, not joules, because every "
    "grid operator publishes it per kWh). kind is average or marginal; basis is lifecycle "
    "(CO2e incl. upstream: Electricity Maps, the bundled Ember data), direct (CO2 from "
    "combustion: UK Carbon Intensity API, WattTime MOER) or unknown (a configured value).",
    ("grid_zone", "provider", "kind", "basis"),
)
GRID_INTENSITY_AGE = MetricSpec(
    "carbon_grid_intensity_age_seconds", "gauge",
    "Age of the grid carbon intensity value in force, in seconds.",
    ("grid_zone", "provider"),
)
GRID_FORECAST_MIN = MetricSpec(
    "carbon_grid_intensity_forecast_min_grams_per_kwh", "gauge",
    "Lowest forecast grid carbon intensity over the next 24 hours, in gCO2e per kWh.",
    ("grid_zone", "provider"),
)
GRID_FORECAST_MIN_START = MetricSpec(
    "carbon_grid_intensity_forecast_min_start_timestamp_seconds", "gauge",
    "Unix time the forecast's lowest-intensity period (within the next 24 hours) starts; "
    "at or before now when the cleanest period is the current one.",
    ("grid_zone", "provider"),
)
GRID_INDEX = MetricSpec(
    "carbon_grid_intensity_index_ratio", "gauge",
    "Relative index of the current marginal intensity, 0 (cleanest) to 1 (dirtiest) against "
    "the provider's recent range (WattTime percentile / 100); an index, not grams.",
    ("grid_zone", "provider"),
)
GRID_PROVIDER_UP = MetricSpec(
    "carbon_grid_provider_up", "gauge",
    "Whether the intensity provider's last fetch worked (1) or not (0); one series per "
    "provider whatever the reason (see carbon_grid_provider_status_info).",
    ("provider",),
)
GRID_PROVIDER_STATUS = MetricSpec(
    "carbon_grid_provider_status_info", "gauge",
    "Why the intensity provider is up or not; always 1. reason is ok, not_yet, auth, "
    "rate_limited, http_error, timeout, unreachable, invalid, no_data or error.",
    ("provider", "reason"),
)
GRID_PROVIDER_FETCHES = MetricSpec(
    "carbon_grid_provider_fetches_total", "counter",
    "Requests made to an intensity provider, by outcome (ok, or the failure reason as in "
    "carbon_grid_provider_status_info); retries count once each.",
    ("provider", "outcome"),
)
GRID_PROVIDER_FETCH_DURATION = MetricSpec(
    "carbon_grid_provider_fetch_duration_seconds", "histogram",
    "Time one request to an intensity provider took, answered or not, in seconds.",
    ("provider",),
)
PUE = MetricSpec(
    "carbon_pue_ratio", "gauge",
    "Power usage effectiveness applied to operational emissions (facility energy / IT energy).",
)
EMISSIONS = MetricSpec(
    "carbon_emissions_grams_total", "counter",
    "Emissions integrated in the exporter since it started, in grams CO2e. Operational "
    "scope = energy x intensity in force at that sample x PUE; embodied scope = the "
    "device's manufacturing emissions spread evenly over its service life.",
    ("component", "device", "scope"),
)
EMISSIONS_RATE = MetricSpec(
    "carbon_emissions_grams_per_second", "gauge",
    "Node emissions over the last sample interval, in grams CO2e per second.",
    ("scope",),
)
COLLECTOR_UP = MetricSpec(
    "carbon_exporter_collector_up", "gauge",
    "Whether the collector worked at the last sample (1) or not (0); one series per "
    "collector whatever the reason (see carbon_exporter_collector_status_info).",
    ("collector",),
)
COLLECTOR_STATUS = MetricSpec(
    "carbon_exporter_collector_status_info", "gauge",
    "Why the collector is up or not at the last sample; always 1. reason is ok, absent, "
    "permission, error or superseded (absent and superseded are not failures).",
    ("collector", "reason"),
)
MODEL_INFO = MetricSpec(
    "carbon_model_info", "gauge",
    "How a modelled (source=\"model\") series was obtained; always 1. method is configured, "
    "cloud_per_vcpu, tdp_curve or per_thread (CPU) and all_memory or beyond_reference (DRAM); "
    "basis names the table row or coefficients, the VM share and the curve.",
    ("collector", "method", "basis"),
)
SAMPLE_DURATION = MetricSpec(
    "carbon_exporter_sample_duration_seconds", "summary",
    "Wall time spent reading each collector's source, in seconds.",
    ("collector",),
)
ENERGY_GLITCHES = MetricSpec(
    "carbon_exporter_energy_glitches_total", "counter",
    "Energy deltas dropped instead of counted: reason=reset (counter went back without a "
    "wraparound) or implausible (implied power above the device's physical bound, or a "
    "value above the counter's range); domain names the RAPL zone (empty for other sources).",
    ("collector", "device", "domain", "reason"),
)
LAST_SAMPLE = MetricSpec(
    "carbon_exporter_last_sample_timestamp_seconds", "gauge",
    "Unix time of the last completed sample cycle.",
)
WORKLOAD_LABELS = ("component", "kind", "namespace", "pod", "container", "unit", "workload_job")

WORKLOAD_ENERGY = MetricSpec(
    "carbon_workload_energy_joules_total", "counter",
    "Measured energy attributed to a workload, in joules. kind is pod, container, unit, job, "
    "process, idle or other; labels that do not apply are empty. Per component, the sum over "
    "all series equals carbon_energy_joules_total.",
    WORKLOAD_LABELS,
)
WORKLOAD_EMISSIONS = MetricSpec(
    "carbon_workload_emissions_grams_total", "counter",
    "Operational emissions attributed to a workload, in grams CO2e (same split as the energy).",
    WORKLOAD_LABELS,
)
WORKLOAD_GPU_SPLIT = MetricSpec(
    "carbon_workload_gpu_split_info", "gauge",
    "What the last sample split a GPU's energy by; always 1. basis is sm_utilization, memory "
    "(no utilisation samples: share of used GPU memory), mig (per MIG instance by SM count, "
    "then memory), idle (no process) or unavailable (NVML gave no process list: all to other).",
    ("device", "basis"),
)
BUILD_INFO = MetricSpec(
    "carbon_exporter_build_info", "gauge",
    "Build information; always 1.",
    ("version", "revision", "builddate", "python"),
)

# The exporter's own HTTP server (off with --web.disable-exporter-metrics, like the process_*
# and python_* families prometheus_client provides).
HTTP_REQUESTS = MetricSpec(
    "carbon_exporter_http_requests_total", "counter",
    "HTTP requests answered, by handler (the route, or other for unknown paths) and status "
    "code, refusals included (401 unauthorised, 413, 503 over --web.max-requests).",
    ("handler", "code"),
)
HTTP_DURATION = MetricSpec(
    "carbon_exporter_http_request_duration_seconds", "histogram",
    "Time from a request's arrival to its response, by handler, in seconds.",
    ("handler",),
)
HTTP_IN_FLIGHT = MetricSpec(
    "carbon_exporter_http_requests_in_flight", "gauge",
    "HTTP requests being answered now.",
)

ALL: tuple[MetricSpec, ...] = (
    ENERGY, POWER, POWER_PEAK, POWER_BUDGET, PLATFORM_ENERGY, PLATFORM_POWER,
    RAPL_DOMAIN_ENERGY, GPU_POWER_LIMIT, GPU_INFO,
    GRID_INTENSITY, GRID_INTENSITY_AGE, GRID_FORECAST_MIN, GRID_FORECAST_MIN_START, GRID_INDEX,
    GRID_PROVIDER_UP, GRID_PROVIDER_STATUS, PUE, EMISSIONS, EMISSIONS_RATE,
    COLLECTOR_UP, COLLECTOR_STATUS, MODEL_INFO, SAMPLE_DURATION, ENERGY_GLITCHES, LAST_SAMPLE,
    BUILD_INFO,
    WORKLOAD_ENERGY, WORKLOAD_EMISSIONS, WORKLOAD_GPU_SPLIT,
    GRID_PROVIDER_FETCHES, GRID_PROVIDER_FETCH_DURATION,
    HTTP_REQUESTS, HTTP_DURATION, HTTP_IN_FLIGHT,
)
# Rendered live at each scrape from exporter/selfmetrics.py, not from the sample snapshot.
LIVE: tuple[MetricSpec, ...] = (GRID_PROVIDER_FETCHES, GRID_PROVIDER_FETCH_DURATION)
# The exporter's own HTTP metrics, off with --web.disable-exporter-metrics.
EXPORTER_SELF: tuple[MetricSpec, ...] = (HTTP_REQUESTS, HTTP_DURATION, HTTP_IN_FLIGHT)
