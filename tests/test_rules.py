"""Recording rules, alerts, their promtool unit tests, the runbook and the PrometheusRule.

promtool (Debian/Ubuntu: `apt-get install prometheus`) runs `check rules`,
`test rules` and `check config`. Without promtool these tests are skipped locally
with a message, but fail when CI=true: CI must install it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql_inventory as inv
from tests.harness import require_tool

ROOT = inv.ROOT
PROM = ROOT / "prometheus"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUSRULE = ROOT / "deploy" / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
RUNBOOK_URL = "https://github.com/carbon-exporter/carbon-exporter/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning", "info"}


def promtool() -> str:
    return require_tool("promtool", "prometheus")


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def load_groups(path: Path) -> list[dict]:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups", [])


def all_rules() -> list[dict]:
    return [rule for path in inv.rule_files() for group in load_groups(path) for rule in group["rules"]]


def alerts() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for the headings of a markdown document."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        text = re.sub(r"[`*_\[\]]|\(.*?\)", "", match.group(2)).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def load_build_prometheusrule():
    spec = importlib.util.spec_from_file_location("build_prometheusrule", PROM / "build_prometheusrule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ promtool


def test_promtool_check_rules():
    files = [str(p.relative_to(ROOT)) for p in inv.rule_files()]
    assert files, "no rule files found"
    result = run_promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests():
    assert RULE_TESTS, "no promtool unit tests found"
    result = run_promtool("test", "rules", *[str(p.relative_to(ROOT)) for p in RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_example_config():
    result = run_promtool("check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_remote_write_example_is_valid(tmp_path):
    """The commented remote_write block in prometheus.yml is valid once uncommented."""
    text = (PROM / "prometheus.yml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# remote_write:"))
    block = []
    for line in lines[start:]:
        body = line[2:] if line.startswith("# ") else line.lstrip("#")
        if not body.strip() or body.lstrip().startswith("#"):
            continue  # alternatives and comments stay comments
        block.append(body)
    config = yaml.safe_load(text)
    config["rule_files"] = [str(PROM / f) for f in config.get("rule_files", [])]
    config.update(yaml.safe_load("\n".join(block)))
    assert config["remote_write"][0]["write_relabel_configs"][0]["action"] == "keep"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_remote_write_regex_keeps_exactly_the_coarse_rules():
    text = (PROM / "prometheus.yml").read_text(encoding="utf-8")
    regex = re.search(r"regex: '([^']+)'", text).group(1)
    kept = {name for name in inv.recorded_names() if re.fullmatch(regex, name)}
    longterm = {rule["record"] for group in load_groups(PROM / "rules" / "carbon.rules.yml")
                if group["name"] in ("carbon-exporter.longterm", "carbon-exporter.totals")
                for rule in group["rules"]}
    assert longterm <= kept
    assert all(re.search(r":(rate1h|avg_over_time1h|increase1h|increase1d)$", name) for name in kept)
    assert not any(re.fullmatch(regex, m) for m in inv.referenced_metric_names())  # no raw series


# ------------------------------------------------------------------ rule hygiene


def test_recording_rule_names_follow_level_metric_operations():
    for name in inv.recorded_names():
        assert re.fullmatch(r"[a-z][a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*", name), name


def test_every_recording_rule_has_an_exact_value_test():
    tested: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("promql_expr_test") or []:
                if check.get("exp_samples"):
                    tested.add(check["expr"].strip())
    missing = sorted(inv.recorded_names() - tested)
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def test_rules_read_only_metrics_of_the_contract():
    """Rules and dashboards read only metrics the exporter defines, plus user-published budgets."""
    metrics = pytest.importorskip("exporter.metrics")
    contract: set[str] = set()
    for spec in metrics.ALL:
        contract.add(spec.name)
        if spec.type in ("summary", "histogram"):
            contract.update({spec.name + "_sum", spec.name + "_count", spec.name + "_bucket"})
    # attribution metrics arrive in a later change; the budget series is published by users
    contract.update({
        "carbon_workload_energy_joules_total",
        "carbon_workload_emissions_grams_total",
        "carbon_emission_budget_grams",
    })
    unknown = sorted(inv.referenced_metric_names() - contract)
    assert not unknown, f"metrics not in exporter/metrics.py: {unknown}"


def test_emissions_are_never_recomputed_from_intensity():
    """Emissions come from the exporter's integrated counters, never power x intensity in PromQL."""
    for item in inv.rule_expressions():
        if "carbon_grid_intensity_grams_per_kwh" in item.expr:
            assert not re.search(r"carbon_(power_watts|energy_joules)", item.expr) or item.name in {
                "CarbonHighIntensityLargeLoad",  # compares the two, computes nothing from them
            }, item.origin


# ------------------------------------------------------------------ alerts


def test_alerts_have_severity_and_annotations():
    names = [rule["alert"] for rule in alerts()]
    assert names, "no alerts found"
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alerts():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert annotations.get(key, "").strip(), f"{name}: missing {key}"


def test_runbook_urls_point_at_existing_runbook_sections():
    anchors = github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL), f"{rule['alert']}: {url}"
        anchor = url[len(RUNBOOK_URL):]
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: anchor {anchor}"
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_runbook_explains_budgets():
    text = RUNBOOK.read_text(encoding="utf-8")
    assert "emission-budgets" in github_anchors(text)
    assert "carbon_emission_budget_grams" in text


def alert_test_cases() -> tuple[set[str], set[str]]:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    return firing, quiet


def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = alert_test_cases()
    names = {rule["alert"] for rule in alerts()}
    assert not names - firing, f"alerts never tested firing: {sorted(names - firing)}"
    assert not names - quiet, f"alerts never tested not firing: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests for unknown alerts: {sorted((firing | quiet) - names)}"


def _durations(text: str) -> float:
    from exporter.confutil import parse_duration
    return parse_duration(str(text))


def test_every_alert_is_tested_recovering_and_with_missing_data():
    """Issue 10: each alert is shown firing and then clearing within one test case, and quiet
    when its input series are missing (an evaluation with no exporter series at all)."""
    recovers: set[str] = set()
    missing: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            # alert -> [(eval time, the label sets expected firing)]
            by_alert: dict[str, list[tuple[float, set[frozenset]]]] = {}
            for check in case.get("alert_rule_test") or []:
                fired = {frozenset(a["exp_labels"].items()) for a in check.get("exp_alerts") or []}
                by_alert.setdefault(check["alertname"], []).append((_durations(check["eval_time"]), fired))
            for name, evals in by_alert.items():
                evals.sort(key=lambda e: e[0])
                # some alert that fired is gone at a later evaluation
                if any(earlier - later for i, (_, earlier) in enumerate(evals) for _, later in evals[i + 1:]):
                    recovers.add(name)
            if "missing data" in case["name"]:
                missing.update(name for name, evals in by_alert.items() if not any(f for _, f in evals))
    names = {rule["alert"] for rule in alerts()}
    assert not names - recovers, f"alerts never shown recovering: {sorted(names - recovers)}"
    assert not names - missing, f"alerts without a missing-data case: {sorted(names - missing)}"


def test_collector_alert_ignores_absent_and_superseded():
    rule = next(r for r in alerts() if r["alert"] == "CarbonCollectorFailing")
    assert "absent" in rule["expr"] and "superseded" in rule["expr"]


# ------------------------------------------------------------------ PrometheusRule


def test_prometheusrule_is_up_to_date():
    module = load_build_prometheusrule()
    assert PROMETHEUSRULE.read_text(encoding="utf-8") == module.render(), (
        f"{PROMETHEUSRULE.relative_to(ROOT)} is stale: run python prometheus/build_prometheusrule.py"
    )


def test_prometheusrule_carries_the_rule_files_unchanged():
    manifest = yaml.safe_load(PROMETHEUSRULE.read_text(encoding="utf-8"))
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"]
    expected = [group for path in inv.rule_files() for group in load_groups(path)]
    assert manifest["spec"]["groups"] == expected


def test_prometheusrule_groups_pass_promtool(tmp_path):
    manifest = yaml.safe_load(PROMETHEUSRULE.read_text(encoding="utf-8"))
    path = tmp_path / "groups.yml"
    path.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}), encoding="utf-8")
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_prometheusrule_check_mode(tmp_path):
    module = load_build_prometheusrule()
    assert module.main(["--check"]) == 0
    stale = tmp_path / "stale.yaml"
    stale.write_text("old\n", encoding="utf-8")
    assert module.main(["--check", "--output", str(stale)]) == 1


# ------------------------------------------------------------------ alertmanager example


def test_alertmanager_example_routes_to_defined_receivers():
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text(encoding="utf-8"))
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(route["receiver"] in receivers for route in routes)
    used = {rule["labels"]["severity"] for rule in alerts()}
    routed = {m.split("=")[1].strip().strip('"') for route in config["route"]["routes"]
              for m in route.get("matchers", []) if m.startswith("severity")}
    assert used <= routed
    alert_names = {rule["alert"] for rule in alerts()}
    for inhibit in config.get("inhibit_rules", []):
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            value = matcher.split("=", 1)[1].strip().lstrip("~").strip().strip('"')
            assert set(value.split("|")) <= alert_names, matcher


def test_alertmanager_example_with_amtool():
    """amtool (Debian: prometheus-alertmanager, installed by scripts/test.sh) validates the
    example and its routes."""
    amtool = require_tool("amtool", "prometheus-alertmanager")
    config = str(PROM / "alertmanager.yml")
    result = subprocess.run([amtool, "check-config", config], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for severity, receiver in (("warning", "carbon-warning"), ("info", "carbon-info")):
        result = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={config}", f"--verify.receivers={receiver}",
             f"severity={severity}", "alertname=CarbonExporterDown"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
