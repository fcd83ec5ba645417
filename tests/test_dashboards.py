"""Grafana dashboards: generated from grafana/generate.py, committed, and valid PromQL.

Regeneration needs grafana-foundation-sdk (pinned in pyproject.toml test extras);
PromQL checks need promtool. Without them these tests are skipped locally with
a message, but fail when CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql_inventory as inv
from tests.harness import require, require_tool

ROOT = inv.ROOT
GENERATOR = ROOT / "grafana" / "generate.py"
DASHBOARDS = inv.DASHBOARDS_DIR
EXPECTED = {
    "node.json": "carbon-node",
    "cluster.json": "carbon-cluster",
    "workload.json": "carbon-workload",
}
TAG = "carbon-exporter"


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def load_generator():
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        require("grafana-foundation-sdk is not installed (pyproject.toml test extras)")
    spec = importlib.util.spec_from_file_location("carbon_dashboards_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict]:
    return {name: json.loads((DASHBOARDS / name).read_text(encoding="utf-8")) for name in EXPECTED}


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


# ------------------------------------------------------------------ generation


def test_committed_dashboards_equal_regeneration(tmp_path):
    generator = load_generator()
    assert generator.main(["--out", str(tmp_path)]) == 0
    produced = sorted(p.name for p in tmp_path.glob("*.json"))
    assert produced == sorted(EXPECTED)
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(EXPECTED), "stray dashboard files"
    for name in EXPECTED:
        fresh = (tmp_path / name).read_bytes()
        committed = (DASHBOARDS / name).read_bytes()
        assert fresh == committed, f"grafana/dashboards/{name} is stale: run python grafana/generate.py"


def test_generation_is_deterministic():
    generator = load_generator()
    assert generator.render_all() == generator.render_all()
    assert generator.main(["--check"]) == 0


def test_json_is_sorted_and_newline_terminated():
    for name in EXPECTED:
        text = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------ structure


def test_uids_titles_and_tags():
    for name, board in dashboards().items():
        assert board["uid"] == EXPECTED[name]
        assert board["title"].startswith("Carbon / ")
        assert TAG in board["tags"]
        assert board.get("id") is None, "dashboards must not carry a database id"


def test_dashboards_link_to_each_other():
    for board in dashboards().values():
        links = board.get("links") or []
        assert any(link.get("type") == "dashboards" and TAG in link.get("tags", []) and link.get("keepTime")
                   and link.get("includeVars") for link in links), board["uid"]
    # panel data links only point at dashboards that exist
    uids = set(EXPECTED.values())
    text = "".join((DASHBOARDS / name).read_text(encoding="utf-8") for name in EXPECTED)
    targets = set(re.findall(r"/d/([a-z0-9-]+)", text))
    assert targets and targets <= uids
    cluster = (DASHBOARDS / "cluster.json").read_text(encoding="utf-8")
    assert "/d/carbon-node" in cluster and "/d/carbon-workload" in cluster


def test_template_variables():
    required_vars = {
        "node.json": {"datasource", "job", "instance"},
        "cluster.json": {"datasource", "job", "instance", "namespace", "topn"},
        "workload.json": {"datasource", "job", "instance", "namespace", "pod", "workload_job"},
    }
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert required_vars[name] <= set(variables), name
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for v in variables.values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == "${datasource}"
                if v.get("includeAll"):
                    assert v.get("allValue") == ".*", f"{name}: {v['name']} needs allValue .*"


def test_panels_use_the_datasource_variable_and_have_units():
    for name, board in dashboards().items():
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels(board):
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel.get("description"), f"{name}: {panel['title']} has no description"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
            if panel["type"] != "table":
                assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']} has no unit"


def test_units_match_the_quantities():
    for board in dashboards().values():
        for panel in panels(board):
            if panel["type"] in ("row", "table"):
                continue
            unit = panel["fieldConfig"]["defaults"]["unit"]
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if "/ 3.6e6" in exprs:
                assert unit == "kwatth", panel["title"]
            elif "carbon_power_watts" in exprs and "/" not in exprs:
                assert unit == "watt", panel["title"]
            if "carbon_grid_intensity_grams_per_kwh" in exprs:
                assert unit == "suffix: gCO2e/kWh", panel["title"]
            if unit.startswith("suffix:"):
                assert "CO2e" in unit, panel["title"]


def test_node_dashboard_covers_the_brief():
    titles = {p["title"] for p in panels(dashboards()["node.json"])}
    for wanted in ("Power by component", "Power by device", "Emissions rate", "Grid intensity in force",
                   "Cumulative energy", "Cumulative emissions", "GPU power and enforced limit", "Collectors"):
        assert wanted in titles, wanted


def test_cluster_and_workload_dashboards_cover_the_brief():
    cluster = {p["title"] for p in panels(dashboards()["cluster.json"])}
    for wanted in ("Nodes ranked by power", "Top namespaces by power",
                   "Top namespaces by emissions in time range", "Top pods"):
        assert wanted in cluster, wanted
    workload = [p["title"] for p in panels(dashboards()["workload.json"])]
    for wanted in ("Energy in time range", "Emissions in time range", "Share of node power"):
        assert workload.count(wanted) >= 2, wanted  # once for the pod, once for the batch job


# ------------------------------------------------------------------ PromQL


def test_inventory_covers_rules_and_every_panel_target():
    items = inv.all_promql_expressions()
    kinds = {item.kind for item in items}
    assert kinds == {"record", "alert", "panel", "variable"}
    targets = sum(len(p.get("targets") or []) for board in dashboards().values() for p in panels(board))
    assert sum(1 for item in items if item.kind == "panel") == targets
    for item in items:
        assert "$" not in item.expr and "[[" not in item.expr, item.origin
        assert item.expr.strip(), item.origin


def test_substitution():
    expr = 'topk($topn, sum(rate(x{job=~"$job", instance=~"${instance}"}[$__rate_interval])))'
    assert inv.substitute(expr) == 'topk(10, sum(rate(x{job=~"carbon-exporter", instance=~".*"}[1m])))'
    assert inv.substitute("x[$__range]", {**inv.DEFAULT_SUBSTITUTIONS, "__range": "6h"}) == "x[6h]"
    with pytest.raises(inv.UnknownTemplateVariable):
        inv.substitute("x{a=~\"$nope\"}")


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Every substituted dashboard query parses: promtool checks them as recording rules."""
    tool = promtool()
    items = inv.dashboard_expressions()
    rules = [{"record": f"dashboard:query_{i}:check", "expr": item.expr} for i, item in enumerate(items)]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        # name the offending panel for each reported rule index
        bad = sorted({int(m) for m in re.findall(r"dashboard:query_(\d+):check", result.stdout + result.stderr)})
        origins = "\n".join(items[i].origin for i in bad)
        pytest.fail(f"{result.stdout}{result.stderr}\n{origins}")
