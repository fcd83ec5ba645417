"""A simulated fleet: N real exporters on loopback (default 50: GPU nodes with two GPUs
through the fake NVML, two-socket CPU nodes, VMs on the models, each with a pod and most with a
Slurm job), one real Prometheus with the shipped rules scraping them every 15 s, and
remote_write (the shipped block) into a real victoria-metrics. Prints a table of what a
fleet costs and how the cluster dashboard answers, then an extrapolation to 1,000 and
10,000 nodes, stated as such.

    .venv/bin/python bench/bench_fleet.py               # 50 nodes, 3 minutes
    .venv/bin/python bench/bench_fleet.py --nodes 10 --seconds 60

Targets: at most 150 series per node without attribution, at most 10 per workload.
Rule groups are evaluated every 15 s here (the shipped 1m/5m intervals would evaluate the
5-minute groups once or not at all in a short run); an evaluation costs the same either way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fleet import Fleet  # noqa: E402
from tests.harness import PrometheusServer, wait_for  # noqa: E402
from tests.promql_inventory import all_promql_expressions, rule_files  # noqa: E402
from tests.store import VictoriaMetrics  # noqa: E402
from tests.test_remote_write import keep_regex, shipped_remote_write  # noqa: E402

SCRAPE = "15s"
SELF_PREFIXES = ("process_", "python_", "carbon_exporter_http_")


def rule_files_every(tmp: Path, interval: str) -> list[Path]:
    copies = []
    for path in rule_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("groups", []):
            group["interval"] = interval
        copy = tmp / f"{path.parent.name}-{path.name}"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        copies.append(copy)
    return copies


def fetch(url: str, gzip_ok: bool = False) -> bytes:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the fleet runs")
    args = parser.parse_args()
    gpu = args.nodes // 3 + (args.nodes % 3 > 0)
    cpu2 = args.nodes // 3 + (args.nodes % 3 > 1)
    vm = args.nodes - gpu - cpu2

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        remote_write = shipped_remote_write()
        keep = keep_regex(remote_write)
        store = VictoriaMetrics(tmp)
        fleet = Fleet(tmp, {"gpu": gpu, "cpu2": cpu2, "vm": vm})
        prom = None
        try:
            started = time.monotonic()
            fleet.start(timeout=180)
            print(f"{args.nodes} exporters ready in {time.monotonic() - started:.0f} s "
                  f"({gpu} GPU, {cpu2} two-socket CPU, {vm} VM)", file=sys.stderr)
            remote_write[0]["url"] = store.write_url
            prom = PrometheusServer(tmp, fleet.targets, interval=SCRAPE,
                                    rule_files=rule_files_every(tmp, SCRAPE),
                                    extra_config={"remote_write": remote_write})
            prom_baseline = prom.memory_bytes()  # before the first scrape lands
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                step = time.monotonic()
                fleet.advance(1.0)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - step)))
            wait_for(lambda: len(prom.query("up == 1")) == args.nodes, 60, "every node up")

            # --- series per node ---------------------------------------------------------
            names = {r["__name__"] for r in prom.api("series", **{"match[]": '{job="carbon-exporter"}'})}
            raw = sorted(n for n in names if ":" not in n and n not in ("up",)
                         and not n.startswith("scrape_"))

            def per_node(predicate) -> dict[str, int]:
                regex = "|".join(n for n in raw if predicate(n))
                return {r["metric"]["instance"]: int(float(r["value"][1])) for r in prom.query(
                    f'count by (instance) ({{job="carbon-exporter", __name__=~"{regex}"}})')}
            everything = per_node(lambda n: True)
            domain = per_node(lambda n: not n.startswith(SELF_PREFIXES)
                              and not n.startswith("carbon_workload_"))
            selfm = per_node(lambda n: n.startswith(SELF_PREFIXES))
            kind_of = {f"127.0.0.1:{node.exporter.port}": node.kind for node in fleet.nodes}
            workloads = Counter()
            for r in prom.query('{__name__=~"carbon_workload_.+_total", kind!~"idle|other"}'):
                m = r["metric"]
                workloads[(m["instance"], m.get("pod", ""), m.get("workload_job", ""))] += 1
            idle_other = per_node(lambda n: n.startswith("carbon_workload_"))

            # --- scrape bytes ------------------------------------------------------------
            plain, packed = {}, {}
            for node in fleet.nodes:
                url = node.exporter.url + "/metrics"
                plain[node.kind] = plain.get(node.kind, []) + [len(fetch(url))]
                packed[node.kind] = packed.get(node.kind, []) + [len(fetch(url, gzip_ok=True))]

            # --- rules, memory, dashboard ------------------------------------------------
            own = {}  # Prometheus's own /metrics: rule timings, head series
            for family in text_string_to_metric_families(fetch(prom.url + "/metrics").decode()):
                for sample in family.samples:
                    own.setdefault(sample.name, []).append(sample)
            groups = {x.labels["rule_group"].split(";")[-1]: x.value
                      for x in own["prometheus_rule_group_last_duration_seconds"]}
            head_series = own["prometheus_tsdb_head_series"][0].value
            prom_rss = prom.memory_bytes()
            answered, timings, empty = 0, [], []
            for item in all_promql_expressions():
                if "cluster.json" not in item.origin or item.kind != "panel":
                    continue
                t0 = time.perf_counter()
                result = prom.query(item.expr)
                timings.append(time.perf_counter() - t0)
                if result:
                    answered += 1
                else:
                    empty.append(item.origin)
            wait_for(lambda: store.query("count(instance:carbon_energy_joules:increase1h)"),
                     60, "the long-term series in the store")
            time.sleep(2)
            store_rss = store.memory_bytes()
            store_names = store.names()
            long_term = {r["metric"]["instance"]: int(float(r["value"][1])) for r in store.query(
                'count by (instance) ({__name__=~".+:.+:.+", instance!=""})')}
            store_total = int(float(store.query('count({__name__=~".+"})')[0]["value"][1]))
            exporter_rss = []
            for node in fleet.nodes:
                status = Path(f"/proc/{node.exporter.proc.pid}/status").read_text()
                exporter_rss.append(next(float(line.split()[1]) * 1024
                                         for line in status.splitlines()
                                         if line.startswith("VmRSS:")))
        finally:
            if prom is not None:
                prom.stop()
            fleet.stop()
            store.stop()

    def spread(values) -> str:
        values = list(values)
        return f"{min(values)} / {statistics.median(values):g} / {max(values)}"

    by_kind = lambda data, kind: [v for i, v in data.items() if kind_of[i] == kind]  # noqa: E731
    print(f"\n### Fleet of {args.nodes} exporters, scraped every {SCRAPE}, {args.seconds:.0f} s\n")
    print("| measure | GPU nodes | two-socket CPU | VMs | target |")
    print("|---|---:|---:|---:|---|")
    print("| series per node, min / median / max: without attribution and self-metrics | "
          + " | ".join(spread(by_kind(domain, k)) for k in ("gpu", "cpu2", "vm")) + " | <= 150 |")
    print("| ... attribution's idle, other and workload series | "
          + " | ".join(spread(by_kind(idle_other, k)) for k in ("gpu", "cpu2", "vm")) + " | |")
    print("| ... the exporter's own (process, Python, HTTP) | "
          + " | ".join(spread(by_kind(selfm, k)) for k in ("gpu", "cpu2", "vm")) + " | |")
    print("| ... all | " + " | ".join(spread(by_kind(everything, k)) for k in ("gpu", "cpu2", "vm"))
          + " | |")
    print(f"| series per workload (pod or job, all components), max | "
          f"{max(workloads.values())} over {len(workloads)} workloads | | | <= 10 |")
    print("| scrape size, median: plain / gzip | "
          + " | ".join(f"{statistics.median(plain[k]) / 1024:.1f} / {statistics.median(packed[k]) / 1024:.1f} KiB"
                       for k in ("gpu", "cpu2", "vm")) + " | |")
    print("| exporter RSS, median | " + f"{mib(statistics.median(exporter_rss))} (all kinds) | | | |")
    print()
    print("| Prometheus and store | value |")
    print("|---|---:|")
    print(f"| Prometheus head series | {head_series:,.0f} |")
    print(f"| Prometheus RSS (at start) | {mib(prom_rss)} ({mib(prom_baseline)}) |")
    for group, seconds in sorted(groups.items()):
        print(f"| rule group {group}: last evaluation | {seconds * 1000:.1f} ms |")
    print(f"| Cluster dashboard panel queries answering | {answered} of {answered + len(empty)}"
          f" (median {statistics.median(timings) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms) |")
    print(f"| long-term series in the store (remote_write keep filter) | {store_total:,} "
          f"({len(store_names)} names, all matching: {all(keep.fullmatch(n) for n in store_names)}) |")
    print(f"| long-term series per node (with an instance label), median | "
          f"{statistics.median(long_term.values()):g} |")
    print(f"| victoria-metrics RSS | {mib(store_rss)} |")
    if empty:
        print("\nno data:", *empty, sep="\n  ")

    # --- extrapolation (linear in the node count; stated as such) -------------------------
    nodes = args.nodes
    per_node_series = head_series / nodes
    # memory: the start-up baseline plus what the head series added, per series
    per_series_bytes = max(0.0, prom_rss - prom_baseline) / head_series
    per_node_lt = store_total / nodes
    rule_ms = sum(groups.values()) * 1000
    print("\n### Extrapolation (linear from this run, not measured)\n")
    print("| nodes | Prometheus head series | samples/s ingested | Prometheus memory "
          "| rule evaluation per round | long-term series | long-term bytes/year |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in (nodes, 1_000, 10_000):
        series = per_node_series * n
        print(f"| {n:,} | {series:,.0f} | {series / 15:,.0f} | "
              f"{(prom_baseline + per_series_bytes * series) / 2**30:,.1f} GiB | "
              f"{rule_ms * n / nodes / 1000:,.2f} s | "
              f"{per_node_lt * n:,.0f} | {per_node_lt * n * 288 * 365 * 1.5 / 1e9:,.1f} GB |")
    print(f"\nPrometheus memory: {mib(prom_baseline)} at start plus {per_series_bytes / 1024:.1f} KiB"
          " per head series as measured here (it depends on churn and query load)."
          " Long-term bytes assume 288 samples per series per day (5-minute rules) at 1.5 bytes"
          " per sample. Prometheus memory grows with head series (a few KiB each): past roughly"
          " 1-2 million head series (a few thousand GPU nodes with attribution) one Prometheus"
          " per cluster or site is the usual cut, each shipping only the long-term series to a"
          " clustered store (VictoriaMetrics cluster, Mimir, Thanos Receive), or federating the"
          " job-level rules to a global Prometheus.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
