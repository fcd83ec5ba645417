"""Every PromQL expression the project ships, ready to send to a Prometheus server.

Sources:
  * prometheus/rules/*.yml and prometheus/alerts/*.yml: each `expr` of a recording or
    alerting rule (no template variables);
  * grafana/dashboards/*.json: each panel target's `expr` and each query variable's
    `label_values(<selector>, <label>)`, reduced to the selector.

Dashboard expressions contain Grafana template variables ($job, $instance,
$__rate_interval ...). `all_promql_expressions()` substitutes them with values that
make each expression a valid query against a Prometheus that scrapes the exporter
with job "carbon-exporter" (see DEFAULT_SUBSTITUTIONS; pass your own mapping to
change any of them). An unknown variable raises UnknownTemplateVariable, so a new
dashboard variable cannot slip through untested.

Usage (integration tests):

    from promql_inventory import all_promql_expressions
    for item in all_promql_expressions():
        resp = prom.get("/api/v1/query", params={"query": item.expr})
        assert resp.json()["status"] == "success", item.origin

Needs only the standard library and PyYAML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "prometheus" / "rules"
ALERTS_DIR = ROOT / "prometheus" / "alerts"
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"

#: Values substituted for Grafana template variables. Label variables are matched
#: with =~ in every dashboard query, so ".*" selects everything.
DEFAULT_SUBSTITUTIONS: dict[str, str] = {
    "job": "carbon-exporter",
    "instance": ".*",
    "namespace": ".*",
    "pod": ".*",
    "workload_job": ".*",
    "topn": "10",
    "datasource": "prometheus",
    # Grafana's built-in interval variables
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format}, [[name]], [[name:format]]
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}"
    r"|\[\[(?P<bracket>\w+)(?::[^\]]*)?\]\]"
    r"|\$(?P<plain>\w+)"
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\(\s*(?P<expr>.+)\)\s*$", re.S)
# A metric name that is not part of a recording rule name (level:metric:operations).
_METRIC_NAME = re.compile(r"(?<![\w:])(carbon_[a-z0-9_]+)(?![\w:])")


class UnknownTemplateVariable(KeyError):
    """A dashboard uses a template variable that has no substitution."""


@dataclass(frozen=True)
class PromQLExpression:
    origin: str  #: where it comes from, e.g. "grafana/dashboards/node.json: panel 2 'Power' target A"
    kind: str    #: "record", "alert", "panel" or "variable"
    name: str    #: rule name, panel title or variable name
    raw: str     #: the expression as written, template variables included
    expr: str    #: the expression with template variables substituted


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana template variables in `expr` with `values` (DEFAULT_SUBSTITUTIONS by default)."""
    table = dict(DEFAULT_SUBSTITUTIONS if values is None else values)

    def repl(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracket") or match.group("plain")
        if name not in table:
            raise UnknownTemplateVariable(f"no substitution for template variable ${name} in: {expr}")
        return table[name]

    return _VARIABLE.sub(repl, expr)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def rule_files() -> list[Path]:
    """Recording rules first, then alerts, each directory sorted."""
    files: list[Path] = []
    for directory in (RULES_DIR, ALERTS_DIR):
        files.extend(sorted(directory.glob("*.yml")) + sorted(directory.glob("*.yaml")))
    return files


def dashboard_files(directory: Path | None = None) -> list[Path]:
    return sorted((directory or DASHBOARDS_DIR).glob("*.json"))


def _iter_rules() -> Iterator[tuple[str, str, str, str]]:
    for path in rule_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                kind = "record" if "record" in rule else "alert"
                name = rule.get("record") or rule.get("alert")
                origin = f"{_rel(path)}: group {group['name']}: {kind} {name}"
                yield origin, kind, name, str(rule["expr"]).strip()


def _iter_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        # collapsed rows keep their panels inside the row
        yield from _iter_panels(panel.get("panels") or [])


def _variable_query(variable: dict) -> str | None:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if not isinstance(query, str) or not query.strip():
        return None
    match = _LABEL_VALUES.match(query)
    if match:
        return match.group("selector")
    match = _QUERY_RESULT.match(query)
    if match:
        return match.group("expr")
    if query.lstrip().startswith(("label_values(", "label_names(", "metrics(")):
        return None  # label_values(label) and friends: no PromQL to check
    return query


def _iter_dashboards(directory: Path | None = None) -> Iterator[tuple[str, str, str, str]]:
    for path in dashboard_files(directory):
        board = json.loads(path.read_text(encoding="utf-8"))
        for variable in (board.get("templating") or {}).get("list", []):
            if variable.get("type") != "query":
                continue
            expr = _variable_query(variable)
            if expr:
                name = variable["name"]
                yield f"{_rel(path)}: variable {name}", "variable", name, expr
        for panel in _iter_panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if not expr:
                    continue
                title = panel.get("title", "")
                origin = f"{_rel(path)}: panel {panel.get('id')} {title!r} target {target.get('refId', '?')}"
                yield origin, "panel", title, expr


def rule_expressions() -> list[PromQLExpression]:
    return [PromQLExpression(o, k, n, e, e) for o, k, n, e in _iter_rules()]


def dashboard_expressions(substitutions: Mapping[str, str] | None = None,
                          directory: Path | None = None) -> list[PromQLExpression]:
    return [PromQLExpression(o, k, n, e, substitute(e, substitutions))
            for o, k, n, e in _iter_dashboards(directory)]


def all_promql_expressions(substitutions: Mapping[str, str] | None = None) -> list[PromQLExpression]:
    """Every expression from rules, alerts and dashboards, template variables substituted.

    `substitutions` replaces DEFAULT_SUBSTITUTIONS entirely when given; to change one
    value use ``{**DEFAULT_SUBSTITUTIONS, "job": "my-job"}``.
    """
    return rule_expressions() + dashboard_expressions(substitutions)


def recorded_names() -> set[str]:
    """Names produced by the recording rules."""
    return {item.name for item in rule_expressions() if item.kind == "record"}


def referenced_metric_names(expressions: list[PromQLExpression] | None = None) -> set[str]:
    """carbon_* metric names read by the expressions (recording rule names excluded)."""
    names: set[str] = set()
    for item in expressions if expressions is not None else all_promql_expressions():
        names.update(_METRIC_NAME.findall(item.expr))
    return names - recorded_names()


if __name__ == "__main__":  # print the inventory, one expression per line
    for item in all_promql_expressions():
        print(f"{item.origin}\n    {' '.join(item.expr.split())}")
