"""Electricity Maps API v3 (https://api.electricitymaps.com/v3, the current host; the old
api.electricitymap.org redirects): GET /carbon-intensity/latest and /carbon-intensity/forecast.

Request: `?zone=<zone id>&emissionFactorType=<lifecycle|direct>` with the token in the
`auth-token` header. Answer used (latest): `carbonIntensity` (gCO2eq/kWh), `datetime` (ISO
8601, the hour the value describes), `zone`, `emissionFactorType` where present (the basis);
a `unit` field, where present, must be a unit of gCO2eq/kWh. Forecast: `forecast[]` of
{`carbonIntensity`, `datetime`}, hourly. Redirects are followed only on the same host: the
token is never sent to another one.
"""

from __future__ import annotations

import logging

from exporter.carbon import DIRECT, LIFECYCLE, Intensity
from exporter.carbon.providers import (
    TOKEN_OPTIONS,
    Fetched, ForecastPoint, Provider, ProviderError, INVALID, check_grams, dig, parse_time,
    unit_factor,
)
from exporter.carbon.secrets import Secret, load_secret
from exporter.confutil import ConfigError

log = logging.getLogger(__name__)

TOKEN_ENV = "CARBON_EXPORTER_ELECTRICITYMAPS_TOKEN"


class ElectricityMaps(Provider):
    type = "electricitymaps"
    auth = (
        '`auth-token` header: `token_file`, `token_env`, or '
        '`CARBON_EXPORTER_ELECTRICITYMAPS_TOKEN`'
    )
    summary = (
        'Host `https://api.electricitymaps.com/v3`; redirects are followed only on the same host'
        ' (the token is never sent to another). `GET /v3/carbon-intensity/latest?zone=Z&'
        'emissionFactorType=B` (`basis`: `lifecycle`, the default, or `direct`): '
        '`carbonIntensity` (gCO2eq/kWh), `emissionFactorType` (the `basis` label),'
        ' `datetime` (the hour it describes; the age counts from it), `zone`; a `unit` field,'
        ' where present, must be gCO2eq/kWh or convertible. `GET '
        '/v3/carbon-intensity/forecast?zone=Z`: `forecast[].carbonIntensity`, '
        "`forecast[].datetime` (hourly). Zone: the provider's `zone`, else the cloud region's"
        ' Electricity Maps zone, else `carbon.zone`.'
    )
    options = {**TOKEN_OPTIONS, "forecast": {"type": "boolean"},
               "basis": {"enum": [LIFECYCLE, DIRECT]}}
    refresh = 900.0
    base_url = "https://api.electricitymaps.com/v3"

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        zone_id = spec.zone or zone.em_zone or (zone.country if zone.country != "WORLD" else None)
        if not zone_id:
            raise ConfigError(f"{self.where}: no zone: set carbon.zone or the provider's zone")
        self.zone_id: str = zone_id
        token = load_secret(self.where, "token", spec.option("token_file"),
                            spec.option("token_env"), TOKEN_ENV)
        if token is None:
            raise ConfigError(f"{self.where}: no API token: set token_file, token_env or {TOKEN_ENV}")
        self.token: Secret = token
        self.with_forecast = spec.option("forecast", True)
        # lifecycle is Electricity Maps' default and the bundled dataset's basis
        self.basis = spec.option("basis", LIFECYCLE)

    def describe(self) -> str:
        return f"{self.base} zone {self.zone_id}"

    async def fetch(self, session) -> Fetched:
        headers = {"auth-token": self.token.reveal()}
        params = {"zone": self.zone_id, "emissionFactorType": self.basis}
        latest = await self.get_json(session, f"{self.base}/carbon-intensity/latest",
                                     headers=headers, params=params)
        factor = unit_factor(latest["unit"], "unit") if isinstance(latest, dict) and "unit" in latest else 1.0
        grams = check_grams(dig(latest, "carbonIntensity", "latest"), "carbonIntensity", factor)
        stamp = parse_time(dig(latest, "datetime", "latest"), "datetime")
        forecast: tuple[ForecastPoint, ...] = ()
        if self.with_forecast:
            forecast = await self.forecast_or_keep(self._forecast(session, headers, params, factor))
        zone = latest.get("zone") if isinstance(latest.get("zone"), str) else self.zone_id
        basis = latest.get("emissionFactorType")
        basis = basis if basis in (LIFECYCLE, DIRECT) else self.basis
        return Fetched(Intensity(grams, zone, self.name, "average", min(stamp, self.wall()),
                                 basis), forecast)


    async def _forecast(self, session, headers: dict[str, str], params: dict[str, str],
                        factor: float) -> tuple[ForecastPoint, ...]:
        answer = await self.get_json(session, f"{self.base}/carbon-intensity/forecast",
                                     headers=headers, params=params)
        return _points(dig(answer, "forecast", "forecast"), factor)


def _points(items, factor: float) -> tuple[ForecastPoint, ...]:
    if not isinstance(items, list):
        raise ProviderError(INVALID, "forecast is not a list")
    starts = [(parse_time(dig(p, "datetime", "forecast"), "forecast[].datetime"),
               check_grams(dig(p, "carbonIntensity", "forecast"), "forecast[].carbonIntensity", factor))
              for p in items]
    starts.sort()
    return tuple(ForecastPoint(start, starts[n + 1][0] if n + 1 < len(starts) else start + 3600, grams)
                 for n, (start, grams) in enumerate(starts))
