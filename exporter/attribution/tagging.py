"""Job tagging: rules from a YAML file name workloads (label workload_job) without code changes.

    rules:
      - match: {unit: "resnet-*.service"}          # every key must match (shell globs)
        workload_job: "{unit_name}"                # str.format fields, see FIELDS
      - match: {labels: {batch.kubernetes.io/job-name: "*"}}
        workload_job: "{labels[batch.kubernetes.io/job-name]}"
      - match: {slurm_job: "*"}
        workload_job: "slurm-{slurm_job}"

The first rule that matches wins; a pattern (even "*") only matches a field that is set, and
a rule whose template names a missing field, or renders empty, does not match. A workload
matches a `process` pattern when any of its processes' names (comm) does.
"""

from __future__ import annotations

import fnmatch
import re
import string
from dataclasses import dataclass
from typing import Any, Iterable

from exporter.confutil import ConfigError, check_schema, read_yaml

FIELDS = ("kind", "unit", "unit_name", "container", "container_id", "namespace", "pod",
          "pod_uid", "qos", "slurm_job", "process")
MAPS = ("labels", "annotations")

_GLOB = {"type": "string", "minLength": 1}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rules"],
    "properties": {"rules": {"type": "array", "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["match", "workload_job"],
        "properties": {
            "match": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {**{f: _GLOB for f in FIELDS},
                               **{m: {"type": "object", "minProperties": 1,
                                      "additionalProperties": _GLOB} for m in MAPS}},
            },
            "workload_job": {"type": "string", "minLength": 1},
        },
    }}},
}


class _Missing(KeyError):
    pass


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise _Missing(key)


@dataclass(frozen=True, slots=True)
class Rule:
    fields: tuple[tuple[str, re.Pattern[str]], ...]
    maps: tuple[tuple[str, str, re.Pattern[str]], ...]  # (labels|annotations, key, pattern)
    template: str

    def matches(self, values: dict[str, Any], comms: Iterable[str]) -> bool:
        for name, pattern in self.fields:
            if name == "process" and not values.get("process"):
                if not any(pattern.match(c) for c in comms):
                    return False
            elif not values.get(name) or not pattern.match(str(values[name])):
                return False  # a pattern, even "*", needs the field to be there
        for mapping, key, pattern in self.maps:
            value = values.get(mapping, {}).get(key)
            if value is None or not pattern.match(value):
                return False
        return True

    def render(self, values: dict[str, Any]) -> str:
        try:
            return self.template.format_map(_Fields(values)).strip()
        except (_Missing, KeyError, IndexError, AttributeError, ValueError):
            return ""


def _glob(text: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(text))


def _check_template(template: str, where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: workload_job {template!r}: {exc}") from None
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if base not in FIELDS and base not in MAPS and base != "pid":
            raise ConfigError(f"{where}: workload_job {template!r} names unknown field "
                              f"{base!r} (one of {', '.join(FIELDS + MAPS)}, pid)")


class Tagger:
    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules = rules or []

    @property
    def wants_process_names(self) -> bool:
        return any(name == "process" for r in self.rules for name, _ in r.fields) or any(
            "{process" in r.template for r in self.rules)

    def tag(self, values: dict[str, Any], comms: Iterable[str] = ()) -> str:
        comms = tuple(comms)
        for rule in self.rules:
            if rule.matches(values, comms):
                tag = rule.render(values)
                if tag:
                    return tag
        return ""


def parse_rules(tree: Any, origin: str) -> Tagger:
    import jsonschema

    check_schema(jsonschema.Draft202012Validator(SCHEMA), tree, origin)
    rules = []
    for index, raw in enumerate(tree["rules"]):
        where = f"{origin}: rules.{index}"
        _check_template(raw["workload_job"], where)
        fields = tuple((k, _glob(v)) for k, v in raw["match"].items() if k in FIELDS)
        maps = tuple((m, k, _glob(v)) for m in MAPS for k, v in raw["match"].get(m, {}).items())
        rules.append(Rule(fields, maps, raw["workload_job"]))
    return Tagger(rules)


def load_rules(path: str | None) -> Tagger:
    """The rules in `path` (attribution.rules_file), or no rules; ConfigError names the field."""
    if not path:
        return Tagger()
    origin = f"rules file {path}"
    return parse_rules(read_yaml(path, origin), origin)
