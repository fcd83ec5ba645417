#!/usr/bin/env python3
"""Generate the carbon-exporter Grafana dashboards.

    python grafana/generate.py                 # write grafana/dashboards/*.json
    python grafana/generate.py --out DIR       # write elsewhere (the tests use a temp dir)
    python grafana/generate.py --check         # exit 1 if the committed JSON is out of date

Built with Grafana's own grafana-foundation-sdk (version pinned in
pyproject.toml test extras). Output is deterministic: keys sorted, panel ids and
uids fixed, so the committed JSON changes only when this file does.

Three dashboards, linked to each other by the tag `carbon-exporter`:

  carbon-node      one node: live power by component and device, gCO2e/s,
                   intensity in force, energy and emissions, GPUs, exporter health
  carbon-cluster   all nodes of a job: nodes ranked, top namespaces, pods, jobs
  carbon-workload  one pod or batch job over time: energy, emissions, share of node;
                   the SCI score of every workload that publishes functional units

Queries use raw exporter metrics (not recording rules) so the dashboards work
on any Prometheus that scrapes the exporter; the emission-budget and SCI panels are the
exceptions, since budgets and functional units exist only through the rules. Every template variable
used in a query ($job, $instance, $namespace, $pod, $workload_job, $topn) is
matched with =~ so that tests/promql_inventory.py can substitute it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pq
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import units

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "dashboards"

TAG = "carbon-exporter"
UID_NODE = "carbon-node"
UID_CLUSTER = "carbon-cluster"
UID_WORKLOAD = "carbon-workload"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Units. Grafana has no CO2e unit: custom "suffix:" units keep the label exact.
WATT = units.Watt
KWH = units.KiloWattHour
PERCENT = units.PercentUnit
SECONDS = units.Seconds
GRAMS = "suffix: gCO2e"
KILOGRAMS = "suffix: kgCO2e"
GRAMS_PER_SECOND = "suffix: gCO2e/s"
GRAMS_PER_KWH = "suffix: gCO2e/kWh"
GRAMS_PER_UNIT = "suffix: gCO2e/unit"

TIME_RANGE_LINK = "${__url_time_range}"


# --------------------------------------------------------------------------- helpers
def selector(*matchers: str, node: bool = True) -> str:
    """Label selector with the dashboard's job (and instance) variables."""
    parts = ['job=~"$job"']
    if node:
        parts.append('instance=~"$instance"')
    parts.extend(matchers)
    return "{" + ", ".join(parts) + "}"


def query(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False,
          table_format: bool = False, interval: str | None = None) -> pq.Dataquery:
    q = pq.Dataquery().expr(expr).ref_id(ref).datasource(DS).legend_format(legend)
    q = q.instant() if instant else q.range()
    if table_format:
        q = q.format(pm.PromQueryFormat.TABLE)
    if interval:
        q = q.interval(interval)
    return q


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


NEUTRAL = ((None, "text"),)


def link(title: str, url: str) -> db.DashboardLink:
    return db.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(url)


def links_property(title: str, url: str) -> dm.DynamicConfigValue:
    """Field override property: data links (used on table columns)."""
    return dm.DynamicConfigValue(id_val="links", value=[{"title": title, "url": url}])


def node_link(instance_ref: str) -> str:
    return (f"/d/{UID_NODE}?{TIME_RANGE_LINK}&var-datasource=${{datasource}}"
            f"&var-job=${{job}}&var-instance={instance_ref}")


def workload_link(namespace_ref: str | None = None, pod_ref: str | None = None,
                  job_ref: str | None = None) -> str:
    url = f"/d/{UID_WORKLOAD}?{TIME_RANGE_LINK}&var-datasource=${{datasource}}&var-job=${{job}}"
    if namespace_ref:
        url += f"&var-namespace={namespace_ref}"
    if pod_ref:
        url += f"&var-pod={pod_ref}"
    if job_ref:
        url += f"&var-workload_job={job_ref}"
    return url


class Panels:
    """Creates panels with stable, sequential ids and shared defaults."""

    def __init__(self) -> None:
        self._next_id = 1

    def _id(self) -> int:
        n = self._next_id
        self._next_id += 1
        return n

    def row(self, title: str) -> db.Row:
        return db.Row(title).id(self._id())

    def _panel(self, panel, title: str, description: str, targets, w: int, h: int,
               unit: str | None = None):
        """What every panel sets: id, title, description, datasource, size, unit, targets."""
        p = panel.id(self._id()).title(title).description(description).datasource(DS).span(w).height(h)
        if unit is not None:
            p = p.unit(unit)
        for t in targets:
            p = p.with_target(t)
        return p

    def stat(self, title: str, description: str, unit: str, *targets: pq.Dataquery,
             w: int = 4, h: int = 4, steps=NEUTRAL, decimals: int | None = None,
             text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO) -> stat.Panel:
        p = (
            self._panel(stat.Panel(), title, description, targets, w, h, unit)
            .thresholds(thresholds(*steps))
            .color_mode(cm.BigValueColorMode.VALUE)
            .graph_mode(cm.BigValueGraphMode.NONE)
            .text_mode(text_mode)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
        if decimals is not None:
            p = p.decimals(decimals)
        return p

    def timeseries(self, title: str, description: str, unit: str, *targets: pq.Dataquery,
                   w: int = 12, h: int = 8, stacked: bool = False, bars: bool = False,
                   min_zero: bool = True, calcs: tuple[str, ...] = ("mean", "max", "lastNotNull")
                   ) -> timeseries.Panel:
        p = (
            self._panel(timeseries.Panel(), title, description, targets, w, h, unit)
            .line_width(1)
            .fill_opacity(60 if bars else (35 if stacked else 10))
            .draw_style(cm.GraphDrawStyle.BARS if bars else cm.GraphDrawStyle.LINE)
            .legend(
                cb.VizLegendOptions()
                .show_legend(True)
                .display_mode(cm.LegendDisplayMode.TABLE)
                .placement(cm.LegendPlacement.BOTTOM)
                .calcs(list(calcs))
            )
            .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
            .thresholds(thresholds((None, "green")))
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
        )
        if stacked:
            p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        if min_zero:
            p = p.min(0)
        return p

    def bargauge(self, title: str, description: str, unit: str, *targets: pq.Dataquery,
                 w: int = 12, h: int = 8, steps=((None, "blue"),), max_value: float | None = None
                 ) -> bargauge.Panel:
        p = (
            self._panel(bargauge.Panel(), title, description, targets, w, h, unit)
            .min(0)
            .thresholds(thresholds(*steps))
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
            .orientation(cm.VizOrientation.HORIZONTAL)
            .show_unfilled(True)
            .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
        if max_value is not None:
            p = p.max(max_value)
        return p

    def table(self, title: str, description: str, *targets: pq.Dataquery,
              w: int = 24, h: int = 8) -> table.Panel:
        p = (
            self._panel(table.Panel(), title, description, targets, w, h)
            .thresholds(thresholds(*NEUTRAL))
        )
        return p


def merge_and_organize(p: table.Panel, rename: dict[str, str], exclude: tuple[str, ...] = ("Time",),
                       order: tuple[str, ...] = ()) -> table.Panel:
    """Join instant table queries on their labels, hide Time, rename value columns."""
    organize = {
        "excludeByName": {name: True for name in exclude},
        "renameByName": dict(rename),
        "indexByName": {name: i for i, name in enumerate(order)},
    }
    return (
        p.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(dm.DataTransformerConfig(id_val="organize", options=organize))
    )


def power_emissions_table(P, title: str, description: str, keys: dict[str, str], *, power: str,
                          rate: str, energy: str, emissions: str, energy_decimals: int,
                          emissions_config: list, link_column: str, link_to, w: int):
    """A ranked table of live power, emissions rate, and energy and emissions over the time
    range, one row per `keys` (label -> column title), the `link_column` linking onwards."""
    values = {"Value #A": "Power", "Value #B": "Emissions rate", "Value #C": "Energy",
              "Value #D": "Emissions"}
    return merge_and_organize(
        P.table(
            title, description,
            query(power, instant=True, table_format=True),
            query(rate, ref="B", instant=True, table_format=True),
            query(energy, ref="C", instant=True, table_format=True),
            query(emissions, ref="D", instant=True, table_format=True),
            w=w, h=10)
        .sort_by([cb.TableSortByFieldState().display_name("Power").desc(True)])
        .override_by_name("Power", [dm.DynamicConfigValue(id_val="unit", value=WATT)])
        .override_by_name("Emissions rate", [dm.DynamicConfigValue(id_val="unit", value=GRAMS_PER_SECOND)])
        .override_by_name("Energy", [dm.DynamicConfigValue(id_val="unit", value=KWH),
                                     dm.DynamicConfigValue(id_val="decimals", value=energy_decimals)])
        .override_by_name("Emissions", emissions_config)
        .override_by_name(link_column, [link_to]),
        rename={**keys, **values},
        order=(*keys, *values),
    )


def variable_datasource() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def variable_query(name: str, label: str, query_text: str, *, multi: bool = False,
                   include_all: bool = False, all_value: str | None = None,
                   hide: dm.VariableHide | None = None) -> db.QueryVariable:
    v = (
        db.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query_text)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
    )
    if all_value is not None:
        v = v.all_value(all_value)
    if hide is not None:
        v = v.hide(hide)
    return v


def variable_job() -> db.QueryVariable:
    return variable_query("job", "Job", "label_values(carbon_exporter_build_info, job)")


def variable_instance(*, multi: bool) -> db.QueryVariable:
    return variable_query(
        "instance", "Node" if not multi else "Nodes",
        'label_values(carbon_exporter_build_info{job=~"$job"}, instance)',
        multi=multi, include_all=multi, all_value=".*" if multi else None,
    )


def variable_topn() -> db.CustomVariable:
    return (
        db.CustomVariable("topn")
        .label("Top N")
        .values("5,10,20,50")
        .current(dm.VariableOption(selected=True, text="10", value="10"))
    )


def dashboard_links() -> db.DashboardLink:
    return (
        db.DashboardLink("Carbon dashboards")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
    )


def base_dashboard(title: str, uid: str, description: str, time_from: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, "energy", "emissions"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .timezone("browser")
        .refresh("1m")
        .time(time_from, "now")
        .link(dashboard_links())
    )


# --------------------------------------------------------------------------- node
def node_dashboard() -> db.Dashboard:
    P = Panels()
    s = selector()
    gpu = selector('component="gpu"')
    node_budget = selector('scope="node"')
    components = selector('source!="platform_remainder"')
    remainder = selector('source="platform_remainder"')
    d = (
        base_dashboard(
            "Carbon / Node", UID_NODE,
            "Power, energy and emissions of one node measured by carbon-exporter.", "now-6h",
        )
        .with_variable(variable_datasource())
        .with_variable(variable_job())
        .with_variable(variable_instance(multi=False))
    )

    d = d.with_row(P.row("Now"))
    d = d.with_panel(P.stat(
        "Power", "Node power over the exporter's last sample interval, all top-level devices.",
        WATT, query(f"sum(carbon_power_watts{s})", instant=True)))
    d = d.with_panel(P.stat(
        "Emissions rate", "Operational plus embodied emissions over the last sample interval "
        "(carbon_emissions_grams_per_second).",
        GRAMS_PER_SECOND, query(f"sum(carbon_emissions_grams_per_second{s})", instant=True)))
    d = d.with_panel(P.stat(
        "Grid intensity in force", "Carbon intensity the exporter applies now, with its zone and provider.",
        GRAMS_PER_KWH,
        query(f"carbon_grid_intensity_grams_per_kwh{s}", "{{grid_zone}} · {{provider}} ({{kind}}, {{basis}})", instant=True),
        text_mode=cm.BigValueTextMode.VALUE_AND_NAME, steps=((None, "green"), (300, "yellow"), (600, "red"))))
    d = d.with_panel(P.stat(
        "PUE", "Facility overhead multiplier applied to operational emissions.",
        units.NoUnit, query(f"carbon_pue_ratio{s}", instant=True), decimals=2))
    d = d.with_panel(P.stat(
        "Energy in time range", "Energy measured during the selected time range.",
        KWH, query(f"sum(increase(carbon_energy_joules_total{s}[$__range])) / 3.6e6", instant=True), decimals=3))
    d = d.with_panel(P.stat(
        "Emissions in time range", "Emissions integrated by the exporter during the selected time range.",
        KILOGRAMS, query(f"sum(increase(carbon_emissions_grams_total{s}[$__range])) / 1000", instant=True),
        decimals=3))

    d = d.with_row(P.row("Power"))
    d = d.with_panel(P.timeseries(
        "Power by component", "Live power (carbon_power_watts) summed per component, stacked.",
        WATT, query(f"sum by (component) (carbon_power_watts{s})", "{{component}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "Power by device", "Live power per top-level device and the source it comes from.",
        WATT, query(f"sum by (component, device, source) (carbon_power_watts{s})",
                    "{{component}} {{device}} ({{source}})")))
    d = d.with_panel(P.timeseries(
        "Meter vs components", "Where the server reports its own power (ACPI power meter, "
        "BMC over Redfish), the meter (carbon_platform_power_watts) against the components "
        "the exporter measures or models; the node total follows the meter and the gap is "
        "component=\"other\" (fans, disks, NICs, power-supply losses). Empty without a meter.",
        WATT,
        query(f"sum by (device, source) (carbon_platform_power_watts{s})",
              "meter {{device}} ({{source}})", ref="A"),
        query(f"sum(carbon_power_watts{components})", "components", ref="B"),
        query(f"sum(carbon_power_watts{remainder})", "other (meter - components)", ref="C"),
        min_zero=True))
    d = d.with_panel(P.timeseries(
        "Peak power and budget", "The highest 1 s sample of the last peak window "
        "(carbon_power_peak_watts, summed over devices: an upper bound of the node's peak) "
        "against the configured node budget (carbon_power_budget_watts): a burst between two "
        "scrapes shows here, not in the live power. CarbonPowerAboveBudget fires above the budget.",
        WATT,
        query(f"sum(max_over_time(carbon_power_peak_watts{s}[$__interval]))", "peak", ref="A"),
        query(f"sum(carbon_power_watts{s})", "live", ref="B"),
        query(f"max(carbon_power_budget_watts{node_budget})", "budget", ref="C"),
        min_zero=True))
    d = d.with_panel(P.timeseries(
        "Average power from energy counters", "rate() of the energy counters: exact average power "
        "between two points, smoother than the live gauge.",
        WATT, query(f"sum by (component) (rate(carbon_energy_joules_total{s}[$__rate_interval]))",
                    "{{component}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "RAPL domains", "Every RAPL zone as read. Domains overlap (core and uncore are part of "
        "package, psys covers everything): do not add them up.",
        WATT, query(f"sum by (device, domain) (rate(carbon_rapl_domain_joules_total{s}[$__rate_interval]))",
                    "{{device}} {{domain}}")))

    d = d.with_row(P.row("Emissions and grid"))
    d = d.with_panel(P.timeseries(
        "Emissions rate by scope", "gCO2e per second from the exporter's integrated counter "
        "(operational = energy x intensity in force x PUE; embodied = amortised manufacturing).",
        GRAMS_PER_SECOND, query(f"sum by (scope) (rate(carbon_emissions_grams_total{s}[$__rate_interval]))",
                                "{{scope}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "Emissions rate by component", "gCO2e per second per component.",
        GRAMS_PER_SECOND, query(f"sum by (component) (rate(carbon_emissions_grams_total{s}[$__rate_interval]))",
                                "{{component}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "Cumulative energy", "Energy counted since the exporter started (resets when it restarts).",
        KWH, query(f"sum by (component) (carbon_energy_joules_total{s}) / 3.6e6", "{{component}}"),
        stacked=True, calcs=("lastNotNull",)))
    d = d.with_panel(P.timeseries(
        "Cumulative emissions", "Emissions counted since the exporter started (resets when it restarts).",
        KILOGRAMS, query(f"sum by (scope) (carbon_emissions_grams_total{s}) / 1000", "{{scope}}"),
        stacked=True, calcs=("lastNotNull",)))
    d = d.with_panel(P.timeseries(
        "Grid intensity in force", "gCO2e per kWh applied at each moment, with zone, provider and kind.",
        GRAMS_PER_KWH, query(f"carbon_grid_intensity_grams_per_kwh{s}", "{{grid_zone}} · {{provider}} ({{kind}}, {{basis}})"),
        calcs=("mean", "min", "max")))
    d = d.with_panel(P.timeseries(
        "Grid intensity age", "How old the intensity value in force is; live providers refresh it, "
        "the bundled dataset does not.",
        SECONDS, query(f"carbon_grid_intensity_age_seconds{s}", "{{grid_zone}} · {{provider}}"),
        calcs=("lastNotNull", "max")))
    d = d.with_panel(P.timeseries(
        "Grid intensity now and forecast minimum", "The intensity in force and the lowest intensity "
        "the provider forecasts for the next 24 hours: the gap is what starting later would save.",
        GRAMS_PER_KWH,
        query(f"max(carbon_grid_intensity_grams_per_kwh{s})", "now"),
        query(f"min(carbon_grid_intensity_forecast_min_grams_per_kwh{s})", "forecast minimum, next 24 h",
              ref="B"),
        w=16, calcs=("lastNotNull", "min")))
    d = d.with_panel(P.stat(
        "Cleanest period in the next 24 h starts", "When the forecast's lowest-intensity period "
        "starts (carbon_grid_intensity_forecast_min_start_timestamp_seconds); a time in the past "
        "means the cleanest period is now. Needs a provider with a forecast.",
        units.DateTimeFromNow,
        query(f"min(carbon_grid_intensity_forecast_min_start_timestamp_seconds{s}) * 1000", instant=True),
        w=8, h=8))

    d = d.with_row(P.row("GPUs"))
    gpu_limits = (
        P.timeseries(
            "GPU power and enforced limit", "Power per GPU (solid) and its enforced power limit (dashed).",
            WATT,
            query(f"sum by (device) (carbon_power_watts{gpu})", "{{device}}"),
            query(f"max by (device) (carbon_gpu_power_limit_watts{s})", "{{device}} limit", ref="B"),
            w=16)
        .override_by_regexp(".* limit$", [
            dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        ])
    )
    d = d.with_panel(gpu_limits)
    d = d.with_panel(P.bargauge(
        "GPU power / limit", "Share of the enforced power limit in use; at 95% or more the driver "
        "is likely capping clocks.",
        PERCENT,
        query(f"sum by (device) (carbon_power_watts{gpu}) / on (device) "
              f"max by (device) (carbon_gpu_power_limit_watts{s} > 0)", "{{device}}", instant=True),
        w=8, max_value=1, steps=((None, "green"), (0.8, "yellow"), (0.95, "red"))))
    d = d.with_panel(merge_and_organize(
        P.table("GPUs", "Identity of each GPU (carbon_gpu_info).",
                query(f"max by (device, name, uuid, driver_version, pci_bus_id) (carbon_gpu_info{s})",
                      instant=True, table_format=True), h=6),
        rename={"device": "Device", "name": "Model", "uuid": "UUID", "driver_version": "Driver",
                "pci_bus_id": "PCI bus"},
        exclude=("Time", "Value"),
        order=("device", "name", "uuid", "driver_version", "pci_bus_id"),
    ))

    d = d.with_row(P.row("Exporter health"))
    used = selector('reason!~"absent|superseded"')
    unused = selector('reason=~"absent|superseded"')
    collectors = (
        P.stat(
            "Collectors", "Each power source at the last sample: ok, failing (permission or error), "
            "or not used (absent hardware, or a model superseded by RAPL).",
            units.NoUnit,
            query(
                # _up has one series per collector; the reason comes from the info series
                f"max by (collector) (carbon_exporter_collector_up{s})"
                f" * on (collector) group_left (reason)"
                f" max by (collector, reason) (carbon_exporter_collector_status_info{used})"
                f" or max by (collector, reason) (carbon_exporter_collector_status_info{unused}) * 0 + 2",
                "{{collector}} ({{reason}})", instant=True),
            w=12, steps=((None, "red"), (1, "green"), (2, "text")),
            text_mode=cm.BigValueTextMode.VALUE_AND_NAME)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .mappings([dm.ValueMap(options={
            "0": dm.ValueMappingResult(text="failing", color="red", index=0),
            "1": dm.ValueMappingResult(text="ok", color="green", index=1),
            "2": dm.ValueMappingResult(text="not used", color="text", index=2),
        })])
    )
    d = d.with_panel(collectors)
    d = d.with_panel(P.stat(
        "Last sample age", "Seconds since the exporter completed a sample; above 120 s the "
        "CarbonExporterSampleStale alert starts.",
        SECONDS, query(f"time() - max(carbon_exporter_last_sample_timestamp_seconds{s})", instant=True),
        w=6, steps=((None, "green"), (30, "yellow"), (120, "red"))))
    d = d.with_panel(merge_and_organize(
        P.table("Build", "Exporter version and Python runtime.",
                query(f"max by (version, python) (carbon_exporter_build_info{s})", instant=True, table_format=True),
                w=6, h=4),
        rename={"version": "Version", "python": "Python"}, exclude=("Time", "Value"),
        order=("version", "python"),
    ))
    d = d.with_panel(P.timeseries(
        "Sample duration by collector", "Average time spent reading each source per sample.",
        SECONDS,
        query(f"sum by (collector) (rate(carbon_exporter_sample_duration_seconds_sum{s}[$__rate_interval]))"
              f" / sum by (collector) (rate(carbon_exporter_sample_duration_seconds_count{s}[$__rate_interval]))",
              "{{collector}}")))
    d = d.with_panel(P.timeseries(
        "Dropped energy deltas", "Energy deltas the exporter discarded: counter reset without "
        "wraparound, or implausible implied power.",
        units.Short,
        query(f"sum by (collector, device, reason) (increase(carbon_exporter_energy_glitches_total{s}[$__rate_interval]))",
              "{{collector}} {{device}} ({{reason}})"),
        bars=True, calcs=("sum",)))
    return d


# --------------------------------------------------------------------------- cluster
def cluster_dashboard() -> db.Dashboard:
    P = Panels()
    s = selector()
    ws = selector('namespace=~"$namespace"', 'namespace!=""')
    pods = selector('namespace=~"$namespace"', 'pod!=""')
    jobs = selector('workload_job!=""')
    attributed = selector('kind!~"idle|other"')
    d = (
        base_dashboard(
            "Carbon / Cluster", UID_CLUSTER,
            "Power, energy and emissions of every node of a scrape job, with the namespaces, "
            "pods and batch jobs that use the most.", "now-6h",
        )
        .with_variable(variable_datasource())
        .with_variable(variable_job())
        .with_variable(variable_instance(multi=True))
        .with_variable(variable_query(
            "namespace", "Namespaces",
            'label_values(carbon_workload_energy_joules_total{job=~"$job", namespace!=""}, namespace)',
            multi=True, include_all=True, all_value=".*"))
        .with_variable(variable_topn())
    )

    d = d.with_row(P.row("Cluster"))
    d = d.with_panel(P.stat(
        "Power", "Live power of all selected nodes.",
        WATT, query(f"sum(carbon_power_watts{s})", instant=True)))
    d = d.with_panel(P.stat(
        "Emissions rate", "gCO2e per second of all selected nodes.",
        GRAMS_PER_SECOND, query(f"sum(rate(carbon_emissions_grams_total{s}[$__rate_interval]))", instant=True)))
    d = d.with_panel(P.stat(
        "Energy in time range", "Energy of all selected nodes during the selected time range.",
        KWH, query(f"sum(increase(carbon_energy_joules_total{s}[$__range])) / 3.6e6", instant=True), decimals=2))
    d = d.with_panel(P.stat(
        "Emissions in time range", "Emissions of all selected nodes during the selected time range.",
        KILOGRAMS, query(f"sum(increase(carbon_emissions_grams_total{s}[$__range])) / 1000", instant=True),
        decimals=2))
    d = d.with_panel(P.stat(
        "Nodes reporting", "Exporters that Prometheus scrapes successfully, of all targets.",
        units.NoUnit,
        query(f"sum(up{s})", "up", instant=True),
        query(f"count(up{s})", "targets", ref="B", instant=True),
        text_mode=cm.BigValueTextMode.VALUE_AND_NAME))
    d = d.with_panel(P.stat(
        "Attributed to workloads", "Share of measured energy attributed to pods, containers, units, "
        "processes and jobs (the rest is idle or unattributed).",
        PERCENT,
        query(f"sum(rate(carbon_workload_energy_joules_total{attributed}[$__rate_interval]))"
              f" / sum(rate(carbon_energy_joules_total{s}[$__rate_interval]))", instant=True),
        decimals=1))

    d = d.with_row(P.row("Nodes"))
    ranked = power_emissions_table(
        P, "Nodes ranked by power",
        "Live power, emissions rate, and energy and emissions over the selected time range per node. "
        "Click a node to open its dashboard.",
        {"instance": "Node"},
        power=f"sort_desc(sum by (instance) (carbon_power_watts{s}))",
        rate=f"sum by (instance) (rate(carbon_emissions_grams_total{s}[$__rate_interval]))",
        energy=f"sum by (instance) (increase(carbon_energy_joules_total{s}[$__range])) / 3.6e6",
        emissions=f"sum by (instance) (increase(carbon_emissions_grams_total{s}[$__range])) / 1000",
        energy_decimals=3,
        emissions_config=[dm.DynamicConfigValue(id_val="unit", value=KILOGRAMS),
                          dm.DynamicConfigValue(id_val="decimals", value=3)],
        link_column="Node", link_to=links_property("Node dashboard", node_link("${__data.fields.instance}")),
        w=12)
    d = d.with_panel(ranked)
    d = d.with_panel(P.timeseries(
        "Power by node", "Live power per node.",
        WATT, query(f"sum by (instance) (carbon_power_watts{s})", "{{instance}}")))
    d = d.with_panel(P.timeseries(
        "Power by component", "Live power of the selected nodes per component, stacked.",
        WATT, query(f"sum by (component) (carbon_power_watts{s})", "{{component}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "Emissions rate by node", "gCO2e per second per node, stacked.",
        GRAMS_PER_SECOND,
        query(f"sum by (instance) (rate(carbon_emissions_grams_total{s}[$__rate_interval]))", "{{instance}}"),
        stacked=True))

    d = d.with_row(P.row("Namespaces"))
    ns_power = P.bargauge(
        "Top namespaces by power", "Average attributed power per namespace over the last rate interval.",
        WATT,
        query(f"topk($topn, sum by (namespace) (rate(carbon_workload_energy_joules_total{ws}[$__rate_interval])))",
              "{{namespace}}", instant=True))
    ns_power = ns_power.data_links([link("Workload dashboard", workload_link("${__field.labels.namespace}"))])
    d = d.with_panel(ns_power)
    ns_em = P.bargauge(
        "Top namespaces by emissions in time range", "Attributed emissions per namespace during the "
        "selected time range.",
        GRAMS,
        query(f"topk($topn, sum by (namespace) (increase(carbon_workload_emissions_grams_total{ws}[$__range])))",
              "{{namespace}}", instant=True),
        steps=((None, "orange"),))
    ns_em = ns_em.data_links([link("Workload dashboard", workload_link("${__field.labels.namespace}"))])
    d = d.with_panel(ns_em)
    d = d.with_panel(P.timeseries(
        "Namespace power", "Attributed power of the top namespaces over time.",
        WATT,
        query(f"topk($topn, sum by (namespace) (rate(carbon_workload_energy_joules_total{ws}[$__rate_interval])))",
              "{{namespace}}"), stacked=True))
    d = d.with_panel(P.timeseries(
        "Namespace emissions rate", "Attributed gCO2e per second of the top namespaces over time.",
        GRAMS_PER_SECOND,
        query(f"topk($topn, sum by (namespace) (rate(carbon_workload_emissions_grams_total{ws}[$__rate_interval])))",
              "{{namespace}}"), stacked=True))

    d = d.with_row(P.row("Pods and jobs"))
    top_pods = power_emissions_table(
        P, "Top pods", "The pods with the highest attributed power, with their emissions. Click a pod "
        "to open the workload dashboard.",
        {"namespace": "Namespace", "pod": "Pod"},
        power=f"topk($topn, sum by (namespace, pod) (rate(carbon_workload_energy_joules_total{pods}[$__rate_interval])))",
        rate=f"sum by (namespace, pod) (rate(carbon_workload_emissions_grams_total{pods}[$__rate_interval]))",
        energy=f"sum by (namespace, pod) (increase(carbon_workload_energy_joules_total{pods}[$__range])) / 3.6e6",
        emissions=f"sum by (namespace, pod) (increase(carbon_workload_emissions_grams_total{pods}[$__range]))",
        energy_decimals=4,
        emissions_config=[dm.DynamicConfigValue(id_val="unit", value=GRAMS)],
        link_column="Pod", link_to=links_property(
            "Workload dashboard", workload_link("${__data.fields.namespace}", pod_ref="${__data.fields.pod}")),
        w=16)
    d = d.with_panel(top_pods)
    jobs_panel = P.bargauge(
        "Top batch jobs by emissions in time range", "Attributed emissions per batch job "
        "(workload_job) during the selected time range.",
        GRAMS,
        query(f"topk($topn, sum by (workload_job) (increase(carbon_workload_emissions_grams_total{jobs}[$__range])))",
              "{{workload_job}}", instant=True),
        w=8, h=10, steps=((None, "orange"),))
    jobs_panel = jobs_panel.data_links([link(
        "Workload dashboard", workload_link(job_ref="${__field.labels.workload_job}"))])
    d = d.with_panel(jobs_panel)
    d = d.with_panel(P.timeseries(
        "Energy by attribution kind", "How measured power splits between workloads (pod, container, "
        "unit, process, job), idle and unattributed (other).",
        WATT,
        query(f"sum by (kind) (rate(carbon_workload_energy_joules_total{s}[$__rate_interval]))", "{{kind}}"),
        w=24, stacked=True))

    # Only the coarse recording rules that prometheus/prometheus.yml's remote_write keeps, so
    # these panels answer from a long-term store (VictoriaMetrics, Thanos, Mimir) over months
    # after the raw series are gone (tests/test_remote_write.py).
    d = d.with_row(P.row("Long term (from the long-term recording rules)"))
    cluster = selector(node=False)
    ns = selector('namespace=~"$namespace"', node=False)
    d = d.with_panel(P.stat(
        "Energy in time range (hourly averages)", "Energy of the scrape job over the selected "
        "range: the average of the hourly power rule times the range's length, so it works "
        "for months and years from the long-term store (it assumes the nodes ran throughout).",
        KWH, query(f"sum(avg_over_time(job:carbon_energy_joules:rate1h{cluster}[$__range]))"
                   " * $__range_s / 3.6e6", instant=True), w=6, decimals=1))
    d = d.with_panel(P.stat(
        "Emissions in time range (hourly averages)", "Emissions of the scrape job over the "
        "selected range, from the hourly emissions rule in the same way.",
        KILOGRAMS, query(f"sum(avg_over_time(job:carbon_emissions_grams:rate1h{cluster}[$__range]))"
                         " * $__range_s / 1000", instant=True), w=6, decimals=1))
    d = d.with_panel(P.timeseries(
        "Daily energy per node", "kWh per node per day (the one-day rule at each day's end).",
        KWH, query(f"instance:carbon_energy_joules:increase1d{s} / 3.6e6", "{{instance}}",
                   interval="1d"), w=12, bars=True, calcs=("sum", "mean")))
    d = d.with_panel(P.timeseries(
        "Daily emissions per namespace", "Attributed gCO2e per namespace per day.",
        GRAMS, query(f"sum by (namespace) (namespace:carbon_workload_emissions_grams:increase1d{ns})",
                     "{{namespace}}", interval="1d"), w=12, bars=True, stacked=True,
        calcs=("sum", "mean")))
    d = d.with_panel(P.timeseries(
        "Daily emissions per batch job", "Attributed gCO2e per workload_job per day.",
        GRAMS, query(f"sum by (workload_job) (workload_job:carbon_workload_emissions_grams:increase1d{cluster})",
                     "{{workload_job}}", interval="1d"), w=12, bars=True, stacked=True,
        calcs=("sum", "mean")))
    return d


# --------------------------------------------------------------------------- workload
def workload_dashboard() -> db.Dashboard:
    P = Panels()
    pod = selector('namespace=~"$namespace"', 'pod=~"$pod"', 'pod!=""')
    job = selector('workload_job=~"$workload_job"', 'workload_job!=""')
    node_energy = selector()
    containers = selector('namespace=~"$namespace"', 'pod=~"$pod"', 'container!=""')
    namespace_all_nodes = selector('namespace=~"$namespace"', 'namespace!=""', node=False)
    d = (
        base_dashboard(
            "Carbon / Workload", UID_WORKLOAD,
            "Energy and emissions attributed to one pod or one batch job over time, and its share "
            "of the node it runs on.", "now-24h",
        )
        .with_variable(variable_datasource())
        .with_variable(variable_job())
        .with_variable(variable_instance(multi=True))
        .with_variable(variable_query(
            "namespace", "Namespace",
            'label_values(carbon_workload_energy_joules_total{job=~"$job", namespace!=""}, namespace)'))
        .with_variable(variable_query(
            "pod", "Pod",
            'label_values(carbon_workload_energy_joules_total{job=~"$job", namespace=~"$namespace", pod!=""}, pod)'))
        .with_variable(variable_query(
            "workload_job", "Batch job",
            'label_values(carbon_workload_energy_joules_total{job=~"$job", workload_job!=""}, workload_job)'))
    )

    def share(sel: str) -> str:
        return (f"sum by (job, instance) (rate(carbon_workload_energy_joules_total{sel}[$__rate_interval]))"
                f" / on (job, instance) sum by (job, instance) "
                f"(rate(carbon_energy_joules_total{node_energy}[$__rate_interval]))")

    def section(d: db.Dashboard, title: str, sel: str, what: str) -> db.Dashboard:
        d = d.with_row(P.row(title))
        d = d.with_panel(P.stat(
            "Power", f"Average power attributed to the {what} over the last rate interval.",
            WATT, query(f"sum(rate(carbon_workload_energy_joules_total{sel}[$__rate_interval]))", instant=True),
            w=6))
        d = d.with_panel(P.stat(
            "Energy in time range", f"Energy attributed to the {what} during the selected time range.",
            KWH, query(f"sum(increase(carbon_workload_energy_joules_total{sel}[$__range])) / 3.6e6", instant=True),
            w=6, decimals=4))
        d = d.with_panel(P.stat(
            "Emissions in time range", f"Emissions attributed to the {what} during the selected time range.",
            GRAMS, query(f"sum(increase(carbon_workload_emissions_grams_total{sel}[$__range]))", instant=True),
            w=6, decimals=1))
        d = d.with_panel(P.stat(
            "Share of node power", f"The {what}'s power as a share of the measured power of each node it runs on.",
            PERCENT, query(share(sel), "{{instance}}", instant=True), w=6, decimals=1,
            text_mode=cm.BigValueTextMode.VALUE_AND_NAME))
        d = d.with_panel(P.timeseries(
            "Power by component", f"Power attributed to the {what} per component.",
            WATT, query(f"sum by (component) (rate(carbon_workload_energy_joules_total{sel}[$__rate_interval]))",
                        "{{component}}"), stacked=True))
        d = d.with_panel(P.timeseries(
            "Emissions rate by component", f"gCO2e per second attributed to the {what}.",
            GRAMS_PER_SECOND,
            query(f"sum by (component) (rate(carbon_workload_emissions_grams_total{sel}[$__rate_interval]))",
                  "{{component}}"), stacked=True))
        d = d.with_panel(P.timeseries(
            "Energy per hour", f"Energy attributed to the {what} in each hour.",
            KWH, query(f"sum(increase(carbon_workload_energy_joules_total{sel}[1h])) / 3.6e6", "energy",
                       interval="1h"), bars=True, w=8, calcs=("sum", "max")))
        d = d.with_panel(P.timeseries(
            "Emissions per hour", f"Emissions attributed to the {what} in each hour.",
            GRAMS, query(f"sum(increase(carbon_workload_emissions_grams_total{sel}[1h]))", "emissions",
                         interval="1h"), bars=True, w=8, calcs=("sum", "max")))
        d = d.with_panel(P.timeseries(
            "Share of node power", f"The {what}'s power as a share of each node's measured power.",
            PERCENT, query(share(sel), "{{instance}}"), w=8, calcs=("mean", "max")))
        return d

    d = section(d, "Pod $namespace/$pod", pod, "pod")
    d = d.with_panel(P.timeseries(
        "Power by container", "Power attributed to each container of the pod (when the exporter "
        "attributes per container).",
        WATT,
        query(f"sum by (container) (rate(carbon_workload_energy_joules_total{containers}[$__rate_interval]))",
              "{{container}}"), w=24, stacked=True))
    d = section(d, "Batch job $workload_job", job, "batch job")

    d = d.with_row(P.row("Software Carbon Intensity (SCI)"))
    d = d.with_panel(P.timeseries(
        "SCI: gCO2e per functional unit", "Green Software Foundation SCI = (E·I + M) per R for every "
        "workload that publishes its functional units (instance_workload: or namespace_pod_workload:sci_functional_units:rate5m; see the README's "
        "SCI section): operational plus embodied emissions per sample, token or request.",
        GRAMS_PER_UNIT,
        query("workload:carbon_emissions_grams_per_sci_functional_units:ratio_rate5m", "{{workload}} per {{functional_unit}}"),
        calcs=("mean", "min", "lastNotNull")))
    d = d.with_panel(P.bargauge(
        "SCI by scope", "The score split into operational (E·I: energy x intensity in force x PUE) "
        "and embodied (M: amortised manufacturing) grams per functional unit.",
        GRAMS_PER_UNIT,
        query("workload_scope:carbon_emissions_grams_per_sci_functional_units:ratio_rate5m",
              "{{workload}} per {{functional_unit}} · {{scope}}", instant=True)))

    d = d.with_row(P.row("Emission budgets"))
    d = d.with_panel(P.bargauge(
        "Budget used", "Emissions over each budget's window as a share of the budget published in "
        "carbon_emission_budget_grams (needs the carbon-exporter recording rules; "
        "see docs/runbook.md#emission-budgets).",
        PERCENT,
        query('max by (namespace, window) (namespace:carbon_workload_emissions_grams_per_carbon_emission_budget_grams:ratio{job=~"$job", namespace=~"$namespace"})',
              "namespace {{namespace}} ({{window}})", instant=True),
        query('max by (namespace, pod, window) (namespace_pod:carbon_workload_emissions_grams_per_carbon_emission_budget_grams:ratio{job=~"$job", namespace=~"$namespace", pod=~"$pod"})',
              "pod {{namespace}}/{{pod}} ({{window}})", ref="B", instant=True),
        query('max by (workload_job, window) (workload_job:carbon_workload_emissions_grams_per_carbon_emission_budget_grams:ratio{job=~"$job", workload_job=~"$workload_job"})',
              "job {{workload_job}} ({{window}})", ref="C", instant=True),
        w=12, max_value=1.5, steps=((None, "green"), (0.8, "yellow"), (1, "red"))))
    d = d.with_panel(P.timeseries(
        "Namespace emissions over the last day vs budget", "Rolling 24-hour emissions of the namespace "
        "and its published daily budget.",
        GRAMS,
        query(f"sum(increase(carbon_workload_emissions_grams_total{namespace_all_nodes}[1d]))",
              "emitted, last 24 h"),
        query('max(carbon_emission_budget_grams{namespace=~"$namespace", window="1d", pod="", workload_job=""})',
              "daily budget", ref="B"),
        w=12, calcs=("lastNotNull", "max")))
    return d


# --------------------------------------------------------------------------- output
DASHBOARDS = {
    "node.json": node_dashboard,
    "cluster.json": cluster_dashboard,
    "workload.json": workload_dashboard,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    out = {}
    for name, build in DASHBOARDS.items():
        model = for_import(json.loads(json.dumps(build().build(), cls=JSONEncoder)))
        out[name] = json.dumps(model, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    return out


# The Grafana the dashboards are generated for (grafana-foundation-sdk's schema), and the one
# deploy/docker/compose.yaml pins: its schemaVersion loads there (tests/test_dashboards.py).
GRAFANA_VERSION = "11.6.0"
PANEL_NAMES = {"bargauge": "Bar gauge", "row": "Row", "stat": "Stat", "table": "Table",
               "timeseries": "Time series"}


def for_import(model: dict) -> dict:
    """What grafana.com import and "Import dashboard" expect: __inputs (the data source the
    importer picks, the default of the datasource variable) and __requires (the Grafana
    version and the plugins used). File provisioning ignores both."""
    model["__inputs"] = [{"name": "DS_PROMETHEUS", "label": "Prometheus",
                          "description": "Prometheus (or a long-term store) with the "
                                         "carbon-exporter series and recording rules",
                          "type": "datasource", "pluginId": "prometheus",
                          "pluginName": "Prometheus"}]
    panel_types = sorted({p["type"] for p in model["panels"]} - {"row"})
    model["__requires"] = (
        [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
         {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}]
        + [{"type": "panel", "id": t, "name": PANEL_NAMES.get(t, t), "version": ""}
           for t in panel_types])
    for variable in model["templating"]["list"]:
        if variable["type"] == "datasource":
            variable["current"] = {"selected": False, "text": "${DS_PROMETHEUS}",
                                   "value": "${DS_PROMETHEUS}"}
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the carbon-exporter Grafana dashboards.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default grafana/dashboards)")
    parser.add_argument("--check", action="store_true", help="fail if the files in --out differ from a fresh render")
    args = parser.parse_args(argv)

    rendered = render_all()
    if args.check:
        stale = []
        for name, text in rendered.items():
            path = args.out / name
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale.append(name)
                sys.stderr.writelines(difflib.unified_diff(
                    current.splitlines(keepends=True), text.splitlines(keepends=True),
                    fromfile=str(path), tofile="regenerated", n=1))
        if stale:
            sys.stderr.write(f"out of date: {', '.join(stale)}; run python grafana/generate.py\n")
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
