"""The provider registration seam: a provider's schema, defaults and required options live on
its class, and the spec, the chain's type table and the README derive from them."""

from __future__ import annotations

import asyncio

import pytest

from exporter.carbon.providers import Fetched, ForecastPoint, Provider, ProviderError
from exporter.carbon.providers.spec import COMMON_OPTIONS, item_schema, parse_chain, provider_types
from exporter.carbon.zones import resolve_zone
from exporter.confutil import ConfigError


def test_the_type_table_is_the_declared_classes():
    types = provider_types()
    assert set(types) == {"electricitymaps", "watttime", "ukgrid", "http_json", "file", "static",
                          "dataset"}
    for kind, cls in types.items():
        assert cls.type == kind and cls.summary, kind
        schema = item_schema(cls)
        assert set(schema["properties"]) == set(COMMON_OPTIONS) | set(cls.options)
        assert schema["required"] == ["type", *cls.required]


@pytest.mark.parametrize("kind", sorted(provider_types()))
def test_defaults_and_required_options_come_from_the_class(kind):
    cls = provider_types()[kind]
    if cls.required:
        with pytest.raises(ConfigError, match=f"'{cls.required[0]}' is required"):
            parse_chain([{"type": kind}], "carbon.providers")
        return
    (spec,) = parse_chain([kind], "carbon.providers")
    assert (spec.refresh, spec.max_age) == (cls.refresh, cls.max_age)


def test_base_url_is_the_class_default_unless_url_is_set():
    cls = provider_types()["ukgrid"]
    (default,) = parse_chain(["ukgrid"], "p")
    (custom,) = parse_chain([{"type": "ukgrid", "url": "http://127.0.0.1:1/x/"}], "p")
    assert cls(default, resolve_zone(None)).base == cls.base_url
    assert cls(custom, resolve_zone(None)).base == "http://127.0.0.1:1/x"


def test_a_failed_forecast_keeps_the_current_value():
    class Flaky(Provider):
        type = ""  # not registered: a test double of the base class behaviour

        async def fetch(self, session):
            return Fetched(None, await self.forecast_or_keep(self._forecast()))  # type: ignore[arg-type]

        async def _forecast(self) -> tuple[ForecastPoint, ...]:
            raise ProviderError("invalid", "forecast is not a list")

    (spec,) = parse_chain(["ukgrid"], "p")
    fetched = asyncio.run(Flaky(spec, resolve_zone(None)).fetch(None))
    assert fetched.forecast == ()
