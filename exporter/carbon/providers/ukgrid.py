"""National Grid ESO Carbon Intensity API (api.carbonintensity.org.uk), no auth.

National: GET /intensity -> `data[0]` = {`from`, `to`, `intensity`: {`forecast`, `actual`,
`index`}}; `actual` (gCO2/kWh) where published, else `forecast`. Forecast:
GET /intensity/{from}/fw24h -> `data[]` of the same, half-hourly.
Regional (`region` 1-17): GET /regional/regionid/{id} -> `data[0].data[0]` = {`from`, `to`,
`intensity`: {`forecast`, `index`}} (regional values are forecasts only); forecast:
GET /regional/intensity/{from}/fw24h/regionid/{id} -> `data.data[]`.
The `index` word (very low .. very high) is not used: the number is.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from exporter.carbon import DIRECT, Intensity
from exporter.carbon.providers import (
    INVALID, Fetched, ForecastPoint, Provider, ProviderError, check_grams, dig, parse_time,
)

log = logging.getLogger(__name__)

class UkGrid(Provider):
    type = "ukgrid"
    auth = 'none'
    summary = (
        'api.carbonintensity.org.uk. National: `GET /intensity`: `data[0].intensity.actual` '
        "(gCO2/kWh) where published, else `.forecast`; `data[0].from` is the half-hour's "
        'start. Regional (`region` 1-17): `GET /regional/regionid/{id}`: '
        '`data[0].data[0].intensity.forecast` (regional values are forecasts only). Forecast:'
        ' `GET /intensity/{from}/fw24h` (`data[].from`, `.to`, `.intensity.forecast`) or `GET'
        ' /regional/intensity/{from}/fw24h/regionid/{id}` (`data.data[]`). The `index` word '
        'is not used. Zone label `GB` or `GB-<region>`. Direct CO2 from generation: '
        '`basis=\"direct\"`.'
    )
    options = {"region": {"type": "integer", "minimum": 1, "maximum": 17},
               "forecast": {"type": "boolean"}}
    refresh = 900.0
    base_url = "https://api.carbonintensity.org.uk"

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        self.region = spec.option("region")
        self.zone_label = spec.zone or ("GB" if self.region is None else f"GB-{self.region}")
        self.with_forecast = spec.option("forecast", True)

    def describe(self) -> str:
        return f"{self.base} {'national' if self.region is None else f'region {self.region}'}"

    async def fetch(self, session) -> Fetched:
        if self.region is None:
            answer = await self.get_json(session, f"{self.base}/intensity")
            period = dig(answer, "data.0", "intensity")
        else:
            answer = await self.get_json(session, f"{self.base}/regional/regionid/{self.region}")
            period = dig(answer, "data.0.data.0", "regional")
        actual = period.get("intensity", {}).get("actual") if isinstance(period, dict) else None
        value = actual if actual is not None else dig(period, "intensity.forecast", "intensity")
        grams = check_grams(value, "intensity.actual" if actual is not None else "intensity.forecast")
        stamp = parse_time(dig(period, "from", "intensity"), "from")
        forecast: tuple[ForecastPoint, ...] = ()
        if self.with_forecast:
            forecast = await self.forecast_or_keep(self._forecast(session))
        # direct CO2 from generation (the API's methodology), not lifecycle
        return Fetched(Intensity(grams, self.zone_label, self.name, "average",
                                 min(stamp, self.wall()), DIRECT), forecast)

    async def _forecast(self, session) -> tuple[ForecastPoint, ...]:
        start = datetime.fromtimestamp(self.wall(), timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        if self.region is None:
            answer = await self.get_json(session, f"{self.base}/intensity/{start}/fw24h")
            items = dig(answer, "data", "forecast")
        else:
            answer = await self.get_json(
                session, f"{self.base}/regional/intensity/{start}/fw24h/regionid/{self.region}")
            data = dig(answer, "data", "forecast")
            items = dig(data[0] if isinstance(data, list) and data else data, "data", "forecast")
        if not isinstance(items, list):
            raise ProviderError(INVALID, "forecast data is not a list")
        return tuple(sorted(
            (ForecastPoint(parse_time(dig(p, "from", "forecast"), "from"),
                           parse_time(dig(p, "to", "forecast"), "to"),
                           check_grams(dig(p, "intensity.forecast", "forecast"), "intensity.forecast"))
             for p in items), key=lambda p: p.start))
