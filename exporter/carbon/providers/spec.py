"""carbon.providers: the structured provider list, validated with jsonschema.

In the config file it is a list; each item is a provider type (a string) or a mapping with
`type` and that type's options. A flag or environment variable holds the simple case:
comma-separated types (`ukgrid,dataset`). Errors are one line naming the item and field,
e.g. `config file F: carbon.providers[1].timeout: -1 must be greater than 0`.

Secrets are never written inline: options ending in `_file` name a file that holds the
secret, options ending in `_env` name an environment variable (see secrets.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema

from exporter.config import ConfigError, parse_duration

TYPES = ("electricitymaps", "watttime", "ukgrid", "http_json", "file", "static", "dataset")

_COMMON = {
    "type": {"enum": list(TYPES)},
    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"},
    "zone": {"type": "string", "minLength": 1},
    "refresh": {"type": ["number", "string"]},
    "timeout": {"type": ["number", "string"]},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "backoff": {"type": ["number", "string"]},
    "max_age": {"type": ["number", "string"]},
    "url": {"type": "string", "pattern": "^https?://"},
}
_SECRET = {"token_file": {"type": "string"}, "token_env": {"type": "string"}}
# what a configured value counts: lifecycle CO2e or direct CO2 (exporter.carbon.BASES)
_BASIS = {"enum": ["lifecycle", "direct", "unknown"]}
_OPTIONS: dict[str, dict[str, Any]] = {
    "electricitymaps": {**_SECRET, "forecast": {"type": "boolean"},
                        "basis": {"enum": ["lifecycle", "direct"]}},
    "watttime": {"region": {"type": "string", "minLength": 1},
                 "username_env": {"type": "string"}, "username_file": {"type": "string"},
                 "password_env": {"type": "string"}, "password_file": {"type": "string"},
                 "forecast": {"type": "boolean"}},
    "ukgrid": {"region": {"type": "integer", "minimum": 1, "maximum": 17},
               "forecast": {"type": "boolean"}},
    "http_json": {**_SECRET, "field": {"type": "string", "minLength": 1},
                  "time_field": {"type": "string", "minLength": 1},
                  "unit": {"enum": ["g/kWh", "kg/kWh", "kg/MWh", "lbs/MWh", "t/MWh"]},
                  "unit_field": {"type": "string", "minLength": 1},
                  "kind": {"enum": ["average", "marginal"]}, "basis": _BASIS,
                  "header": {"type": "string", "pattern": r"^[A-Za-z0-9-]+$"}},
    "file": {"path": {"type": "string", "minLength": 1},
             "kind": {"enum": ["average", "marginal"]}, "basis": _BASIS},
    "static": {"value": {"type": "number", "minimum": 0, "maximum": 2000},
               "kind": {"enum": ["average", "marginal"]}, "basis": _BASIS},
    "dataset": {},
}
_REQUIRED = {"http_json": ["url", "field"], "file": ["path"], "static": ["value"]}


def _item_schema(kind: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {**_COMMON, **_OPTIONS[kind]},
            "required": ["type", *_REQUIRED.get(kind, [])]}


_VALIDATORS = {kind: jsonschema.Draft202012Validator(_item_schema(kind)) for kind in TYPES}

# Defaults per type: how often to ask, how long a value may serve after its timestamp.
_DEFAULTS = {
    "electricitymaps": {"refresh": 900.0, "max_age": 7200.0},
    "watttime": {"refresh": 300.0, "max_age": 3600.0},
    "ukgrid": {"refresh": 900.0, "max_age": 7200.0},
    "http_json": {"refresh": 300.0, "max_age": 7200.0},
    "file": {"refresh": 10.0, "max_age": 7200.0},
    "static": {"refresh": 3600.0, "max_age": float("inf")},
    "dataset": {"refresh": 3600.0, "max_age": float("inf")},
}


@dataclass(frozen=True)
class ProviderSpec:
    """One validated provider entry. `options` holds the type-specific keys, sorted."""

    type: str
    name: str
    zone: str | None
    refresh: float
    timeout: float
    retries: int
    backoff: float
    max_age: float
    url: str | None
    options: tuple[tuple[str, Any], ...]

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


def _describe(error: jsonschema.ValidationError, where: str) -> str:
    path = "".join(f".{p}" for p in error.absolute_path)
    field = f"{where}{path}"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        hint = " (secrets are read from files or environment variables: use token_file or " \
               "token_env)" if extra[0] in ("token", "password", "username") else ""
        return f"{where}: unknown key {extra[0]}{hint}"
    if error.validator == "required":
        return f"{where}: {error.message.split(' ')[0]} is required"
    if error.validator == "enum":
        return f"{field}: {error.instance!r} must be one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern":
        return f"{field}: {error.instance!r} does not match {error.validator_value}"
    if error.validator in ("minimum", "maximum"):
        relation = "at least" if error.validator == "minimum" else "at most"
        return f"{field}: {error.instance!r} must be {relation} {error.validator_value}"
    if error.validator == "type":
        return f"{field}: {error.instance!r} must be of type {error.validator_value}"
    return f"{field}: {error.message}"


def _duration(item: dict, key: str, default: float, where: str) -> float:
    if key not in item:
        return default
    try:
        seconds = parse_duration(item[key])
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: {exc}") from None
    if seconds <= 0:
        raise ConfigError(f"{where}.{key}: {item[key]!r} must be greater than 0")
    return seconds


def _parse_item(raw: Any, where: str) -> ProviderSpec:
    item = {"type": raw} if isinstance(raw, str) else raw
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be a provider type or a mapping with a type")
    kind = item.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type: {kind!r} must be one of {', '.join(TYPES)}")
    error = jsonschema.exceptions.best_match(_VALIDATORS[kind].iter_errors(item))
    if error is not None:
        raise ConfigError(_describe(error, where))
    defaults = _DEFAULTS[kind]
    refresh = _duration(item, "refresh", defaults["refresh"], where)
    timeout = _duration(item, "timeout", 10.0, where)
    backoff = _duration(item, "backoff", 1.0, where)
    max_age = _duration(item, "max_age", defaults["max_age"], where)
    common = set(_COMMON)
    options = tuple(sorted((k, v) for k, v in item.items() if k not in common))
    return ProviderSpec(kind, item.get("name", kind), item.get("zone"), refresh, timeout,
                        item.get("retries", 2), backoff, max_age, item.get("url"), options)


def parse_chain(value: Any, where: str) -> tuple[ProviderSpec, ...]:
    """Validate carbon.providers; return the specs in order (empty: static/dataset only)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    specs = tuple(_parse_item(item, f"{where}[{n}]") for n, item in enumerate(value))
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{where}: two providers are named {name!r}; give each a distinct name")
    return specs
