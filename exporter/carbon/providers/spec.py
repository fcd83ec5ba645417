"""carbon.providers: the structured provider list, validated with jsonschema.

In the config file it is a list; each item is a provider type (a string) or a mapping with
`type` and that type's options. A flag or environment variable holds the simple case:
comma-separated types (`ukgrid,dataset`). Errors are one line naming the item and field,
e.g. `config file F: carbon.providers[1].timeout: -1 must be greater than 0`.

Secrets are never written inline: options ending in `_file` name a file that holds the
secret, options ending in `_env` name an environment variable (see secrets.py).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.confutil import ConfigError, check_schema, parse_duration

if TYPE_CHECKING:
    import jsonschema

    from exporter.carbon.providers import Provider

# Options every provider type takes; a type's own options are declared on its class.
COMMON_OPTIONS: dict[str, Any] = {
    "type": {"type": "string"},
    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"},
    "zone": {"type": "string", "minLength": 1},
    "refresh": {"type": ["number", "string"]},
    "timeout": {"type": ["number", "string"]},
    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
    "backoff": {"type": ["number", "string"]},
    "max_age": {"type": ["number", "string"]},
    "url": {"type": "string", "pattern": "^https?://"},
}
DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_BACKOFF = 10.0, 2, 1.0
# Keys people try for secrets written inline: the error says where secrets go instead.
_SECRET_HINT = (" (secrets are read from files or environment variables: use token_file or "
                "token_env)")
_HINTS = {"token": _SECRET_HINT, "password": _SECRET_HINT, "username": _SECRET_HINT}


@functools.cache
def provider_types() -> dict[str, type[Provider]]:
    """Every provider class in exporter/carbon/providers/, by its `type`: live ones first.

    The provider registration seam: a provider is one module there whose Provider subclass
    declares type, options, required, refresh and max_age; this table, the schema and the
    chain all derive from it."""
    import exporter.carbon.providers as package
    from exporter.carbon.providers import Provider

    found: dict[str, type[Provider]] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name in ("spec", "chain"):
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Provider) and value.type:
                held = found.setdefault(value.type, value)
                if held is not value:
                    raise RuntimeError(f"two providers declare type {value.type!r}")
    return dict(sorted(found.items(), key=lambda item: (not item[1].live, item[0])))


def item_schema(cls: type[Provider]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "properties": {**COMMON_OPTIONS, **cls.options},
            "required": ["type", *cls.required]}


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(item_schema(provider_types()[kind]))


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


def _duration(item: dict[str, Any], key: str, default: float, where: str) -> float:
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
    types = provider_types()
    kind = item.get("type")
    if not isinstance(kind, str) or kind not in types:
        raise ConfigError(f"{where}.type: {kind!r} must be one of {', '.join(types)}")
    cls = types[kind]

    def name(parts: Any) -> str:
        return where + "".join(f".{p}" for p in parts)

    check_schema(_validator(kind), item, where, name, _HINTS)
    refresh = _duration(item, "refresh", cls.refresh, where)
    timeout = _duration(item, "timeout", DEFAULT_TIMEOUT, where)
    backoff = _duration(item, "backoff", DEFAULT_BACKOFF, where)
    max_age = _duration(item, "max_age", cls.max_age, where)
    options = tuple(sorted((k, v) for k, v in item.items() if k not in COMMON_OPTIONS))
    return ProviderSpec(kind, item.get("name", kind), item.get("zone"), refresh, timeout,
                        item.get("retries", DEFAULT_RETRIES), backoff, max_age, item.get("url"),
                        options)


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
