"""Long-term retention end to end, on loopback, with real parts: real exporters on fixture
trees (a GPU node and a VM), a real Prometheus loading the shipped rules and the shipped
`remote_write` block of prometheus/prometheus.yml (uncommented, its URL pointed at the store),
and a real long-term store, Debian's victoria-metrics.

Checked: exactly the long-term series arrive (the keep filter is the shipped one, read from
the file), raw series do not; a long-range query on the store equals the same query on
Prometheus; once Prometheus and its raw data are gone, the store still answers per node,
namespace and workload_job, and so do the dashboard queries built on long-term series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.fleet import Fleet
from tests.harness import ROOT, PrometheusServer, wait_for
from tests.promql_inventory import all_promql_expressions, recorded_names, rule_files
from tests.store import VictoriaMetrics

SHIPPED_CONFIG = ROOT / "prometheus" / "prometheus.yml"


def shipped_remote_write() -> list[dict]:
    """The commented remote_write block of the shipped prometheus.yml, uncommented the way a
    user does it: remove one '# ' from each line from `# remote_write:` to the end. The
    alternative URLs stay comments (they are commented twice)."""
    lines = SHIPPED_CONFIG.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# remote_write:"))
    block = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                      for line in lines[start:])
    remote_write = yaml.safe_load(block)["remote_write"]
    assert isinstance(remote_write, list) and len(remote_write) == 1, remote_write
    return remote_write


def keep_regex(remote_write: list[dict]) -> re.Pattern[str]:
    (keep,) = [r for r in remote_write[0]["write_relabel_configs"] if r["action"] == "keep"]
    assert keep["source_labels"] == ["__name__"]
    return re.compile(keep["regex"])  # Prometheus anchors relabel regexes: use fullmatch


def fast_rule_files(tmp_path) -> list:
    """The shipped rule files with every group evaluated each second (the long-term groups
    run every 5 minutes when shipped); the expressions are untouched."""
    copies = []
    for path in rule_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            group["interval"] = "1s"
        copy = tmp_path / f"{path.parent.name}-{path.name}"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    return copies


def needs_history() -> set[str]:
    """Recording rules that only answer once the counters are older than their offset."""
    names = set()
    for path in rule_files():
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                if "record" in rule and re.search(r"\boffset\b", str(rule["expr"])):
                    names.add(rule["record"])
    return names


def result_map(result: list[dict]) -> dict[tuple, float]:
    """labels -> value; __name__ left out (VictoriaMetrics keeps it where Prometheus drops it)."""
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")):
            float(r["value"][1]) for r in result}



def prometheus_writing_to(store: VictoriaMetrics, tmp_path, targets: list[str],
                          remote_write: list[dict]) -> PrometheusServer:
    """A real Prometheus scraping `targets` every second with the fast rules, sending the
    (shipped) remote_write block into `store`."""
    remote_write[0]["url"] = store.write_url
    # ship each sample at once instead of batching for 5 s: a short test
    remote_write[0].setdefault("queue_config", {})["batch_send_deadline"] = "500ms"
    return PrometheusServer(tmp_path, targets, interval="1s", rule_files=fast_rule_files(tmp_path),
                            extra_config={"remote_write": remote_write})

@pytest.mark.usefixtures("prometheus_required")
def test_remote_write_sends_the_long_term_series_and_the_store_answers_alone(tmp_path):
    remote_write = shipped_remote_write()
    keep = keep_regex(remote_write)
    long_term = {name for name in recorded_names() if keep.fullmatch(name)}
    raw_recorded = {name for name in recorded_names() if not keep.fullmatch(name)}
    # the filter selects the coarse rules per node, namespace and workload_job, nothing raw
    for level in ("instance", "namespace", "workload_job"):
        assert any(n.startswith((level + ":", level + "_")) for n in long_term), level
    assert not any(keep.fullmatch(n) for n in ("carbon_energy_joules_total",
                                               "carbon_emissions_grams_total",
                                               "carbon_workload_energy_joules_total"))

    store = VictoriaMetrics(tmp_path)
    fleet = Fleet(tmp_path, {"gpu": 1, "vm": 1})
    prom = None
    try:
        fleet.start()
        prom = prometheus_writing_to(store, tmp_path, fleet.targets, remote_write)
        fleet.run_for(15)
        # every long-term series Prometheus recorded has arrived in the store
        recorded = {n for n in long_term if prom.query(n)}
        # rules that wait for an hour of history (`offset 1h`) are empty in a short test
        assert recorded == long_term - needs_history(), long_term - recorded
        long_term = recorded
        wait_for(lambda: store.names() >= long_term, 30, "the long-term series in the store")
        # ... and nothing else: no raw series, no other recording rule
        assert store.names() == long_term, store.names() - long_term
        assert not store.query('{__name__=~"carbon_.+"}')
        assert prom.query("carbon_energy_joules_total") and raw_recorded

        # A long-range query on the store equals the same query on Prometheus, at a time
        # whose samples have all been shipped.
        at = time.time() - 3
        for name in sorted(long_term):
            for fn in ("sum_over_time", "count_over_time", "max_over_time"):
                expr = f"{fn}({name}[30d])"

                def same(expr: str = expr) -> bool:
                    a = result_map(prom.query(expr, at))
                    b = result_map(store.query(expr, at))
                    return a.keys() == b.keys() and all(
                        a[k] == pytest.approx(b[k], rel=1e-9) for k in a)
                # equal to the store's precision: it keeps about 13 significant digits
                wait_for(same, 20, f"{expr} equal on the store and on Prometheus")
            assert prom.query(f"count_over_time({name}[30d])", at), name

        # The raw data goes (its retention passed): Prometheus and its TSDB are removed.
        prom.stop()
        shutil.rmtree(prom.dir / "data")
        prom = None
        # daily energy and emissions per node, namespace and workload_job survive
        nodes = {r["metric"]["instance"] for r in store.query(
            "instance:carbon_energy_joules:increase1d")}
        assert nodes == set(fleet.targets)
        namespaces = {r["metric"]["namespace"] for r in store.query(
            "namespace:carbon_workload_emissions_grams:increase1d")}
        assert namespaces == {n.pod["metadata"]["namespace"] for n in fleet.nodes}
        jobs = {r["metric"]["workload_job"]: float(r["value"][1]) for r in store.query(
            "workload_job:carbon_workload_emissions_grams:increase1d")}
        assert "slurm-1000" in jobs and jobs["slurm-1000"] > 0
        for expr in ("sum by (instance) (instance_component:carbon_energy_joules:rate1h)",
                     "sum by (namespace) (namespace:carbon_workload_energy_joules:rate1h)",
                     "sum by (workload_job) (workload_job:carbon_workload_energy_joules:rate1h)"):
            assert store.query(expr), expr
        # `carbon-exporter report` pointed at the store answers from the long-term rules
        gpu_node = next(f"127.0.0.1:{n.exporter.port}" for n in fleet.nodes if n.kind == "gpu")
        for what in (["--node", gpu_node], ["--namespace", "ml"],
                     ["--workload-job", "slurm-1000"]):
            done = subprocess.run(
                [sys.executable, "-m", "exporter", "report", "--prometheus", store.url,
                 *what, "--from", "10m", "--format", "json"],
                capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert done.returncode == 0, (what, done.stderr)
            report = json.loads(done.stdout)
            assert report["totals"]["energy_kwh"] > 0, what
            assert report["totals"]["operational_grams"] > 0, what
            assert any("long-term recording rules" in n for n in report["totals"]["notes"])
        # every dashboard query built only on long-term series answers from the store
        checked = 0
        for item in all_promql_expressions():
            if item.kind != "panel":
                continue
            names = set(re.findall(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", item.expr))
            if names and names <= long_term:
                assert store.query(item.expr), f"{item.origin}: no data from the store"
                checked += 1
        print(f"{checked} long-range dashboard queries answered from the store")
    finally:
        if prom is not None:
            prom.stop()
        codes = fleet.stop()
        store.stop()
    assert codes == [0, 0]
