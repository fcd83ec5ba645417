"""A small fleet in CI: one exporter of each shape (GPU node, two-socket CPU node, VM) on
fixture trees, one real Prometheus with the shipped rules, remote_write (the shipped block)
into a real victoria-metrics. The 50-node run with its measurements is bench/bench_fleet.py.

Checked: every node is scraped; the series each node costs stay within the targets (at most
150 without attribution, at most 10 per workload); the cluster totals the rules record equal
the sum of the nodes; every Cluster dashboard query answers; the store receives the
long-term series of every node."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.fleet import Fleet
from tests.harness import PrometheusServer, wait_for
from tests.promql_inventory import all_promql_expressions
from tests.store import VictoriaMetrics
from tests.test_remote_write import keep_regex, prometheus_writing_to, shipped_remote_write

SERIES_PER_NODE = 150  # without attribution (and without the exporter's own process metrics)
SERIES_PER_WORKLOAD = 10
SELF = re.compile(r"(process_|python_|carbon_exporter_http_|scrape_|up$)")


def series_by_node(prom: PrometheusServer, selector: str) -> dict[str, int]:
    return {r["metric"]["instance"]: int(float(r["value"][1]))
            for r in prom.query(f"count by (instance) ({selector})")}


@pytest.mark.usefixtures("prometheus_required")
def test_small_fleet_series_budget_rules_dashboards_and_store(tmp_path):
    remote_write = shipped_remote_write()
    keep = keep_regex(remote_write)
    store = VictoriaMetrics(tmp_path)
    fleet = Fleet(tmp_path, {"gpu": 1, "cpu2": 1, "vm": 1})
    prom = None
    try:
        fleet.start()
        prom = prometheus_writing_to(store, tmp_path, fleet.targets, remote_write)
        fleet.run_for(12)
        wait_for(lambda: len(prom.query("up == 1")) == 3, 20, "three nodes up")
        wait_for(lambda: prom.query("job:carbon_power_watts:sum"), 20, "the cluster rules")

        # the series budget per node: everything but the exporter's own process/HTTP metrics
        # and the attributed series
        names = {r["__name__"] for r in prom.api("series", **{"match[]": '{job="carbon-exporter"}'})}
        domain = "|".join(sorted(n for n in names if not SELF.match(n) and ":" not in n
                                 and not n.startswith("carbon_workload_")))
        per_node = series_by_node(prom, f'{{job="carbon-exporter", __name__=~"{domain}"}}')
        assert set(per_node) == set(fleet.targets)
        assert max(per_node.values()) <= SERIES_PER_NODE, per_node
        # per workload: the attributed series of each pod or job, over all components
        workload_series = Counter()
        for r in prom.query('{__name__=~"carbon_workload_.+_total", kind!~"idle|other"}'):
            m = r["metric"]
            workload_series[(m["instance"], m.get("pod", ""), m.get("workload_job", ""),
                             m.get("unit", ""), m.get("container", ""))] += 1
        assert len(workload_series) == 5  # 3 pods, 2 Slurm jobs
        assert max(workload_series.values()) <= SERIES_PER_WORKLOAD, workload_series

        # the cluster is the sum of its nodes
        nodes = sum(float(r["value"][1]) for r in prom.query("instance:carbon_power_watts:sum"))
        cluster = prom.scalar("sum(job:carbon_power_watts:sum)")
        assert cluster == pytest.approx(nodes, rel=1e-9) and cluster > 0
        # every Cluster dashboard query answers with data
        empty = [item.origin for item in all_promql_expressions()
                 if "cluster.json" in item.origin and item.kind == "panel"
                 and not prom.query(item.expr)]
        assert not empty, empty
        # the store gets every node's long-term series, and only long-term series
        wait_for(lambda: {r["metric"]["instance"] for r in store.query(
            "instance:carbon_energy_joules:increase1h")} == set(fleet.targets), 30,
            "every node's long-term series in the store")
        assert all(keep.fullmatch(name) for name in store.names())
    finally:
        if prom is not None:
            prom.stop()
        codes = fleet.stop()
        store.stop()
    assert codes == [0, 0, 0]
