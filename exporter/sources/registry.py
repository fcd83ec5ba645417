"""The source registration seam: every module in exporter/sources/ is imported once and every
Source subclass it holds with a `name` is a collector. Adding a source is one file there
(plus its tests): its flag, order in the sample cycle and README row follow from the
class's declarations (see Source in __init__.py).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING

from exporter.sources import MEASURED, MODEL, OBSERVER, Source

if TYPE_CHECKING:
    from exporter.config import Config

_ROLE_ORDER = {MEASURED: 0, OBSERVER: 1, MODEL: 2}


@functools.cache
def registered() -> tuple[type[Source], ...]:
    """Every declared source class: measured ones first, then observers, then models; by name."""
    import exporter.sources as package

    found: dict[str, type[Source]] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name == "registry":
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Source) and value.name:
                held = found.setdefault(value.name, value)
                if held is not value:
                    raise RuntimeError(f"two sources are named {value.name!r}: "
                                       f"{held.__module__} and {value.__module__}")
    for cls in found.values():
        check_declaration(cls)
    return tuple(sorted(found.values(), key=lambda c: (_ROLE_ORDER[c.role], c.name)))


def check_declaration(cls: type[Source]) -> None:
    """Refuse, when sources are registered, a class the sampler could not order or build."""
    if cls.role not in _ROLE_ORDER:
        raise RuntimeError(f"source {cls.name!r}: unknown role {cls.role!r}")
    if inspect.getattr_static(cls, "from_config") is vars(Source)["from_config"]:
        raise TypeError(f"source {cls.name!r} ({cls.__module__}.{cls.__qualname__}) declares "
                        "no from_config(): the registry cannot build it from the settings")
    if cls.captures and any(inspect.getattr_static(cls, method) is vars(Source)[method]
                            for method in ("capture", "read_captured")):
        raise TypeError(f"source {cls.name!r} ({cls.__module__}.{cls.__qualname__}) captures "
                        "but does not declare both capture() and read_captured()")


def by_name(name: str) -> type[Source]:
    for cls in registered():
        if cls.name == name:
            return cls
    raise KeyError(name)


def build_sources(config: Config, roles: frozenset[str] = frozenset(_ROLE_ORDER)) -> list[Source]:
    """The enabled sources of these roles, built from the settings, in registry order."""
    return [cls.from_config(config) for cls in registered()
            if cls.role in roles and config.collector(cls.name)]
