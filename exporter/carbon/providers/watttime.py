"""WattTime API v3: marginal operating emissions rate (MOER), kind="marginal".

GET /login with HTTP basic auth answers {"token": ...} (valid 30 minutes; cached, renewed
on expiry or a 401). Then, with `Authorization: Bearer <token>`:
- GET /v3/forecast?region=R&signal_type=co2_moer: `data[]` of {`point_time`, `value`} and
  `meta.units` (lbs_co2_per_mwh) and `meta.generated_at`. The point covering now is the
  value in force, converted with 1 lb/MWh = 0.453592 g/kWh; the rest is the forecast.
- GET /v3/signal-index?region=R&signal_type=co2_moer: `data[0].value`, a percentile 0-100
  (`meta.units` "percentile") of the current MOER against the recent past. A percentile
  cannot become grams: it is exported only as carbon_grid_intensity_index_ratio (value/100).
MOER is direct CO2 from combustion (basis="direct"), marginal (kind="marginal").

Plans: /v3/forecast (and so the MOER in grams) is for subscribers, except in the preview
region CAISO_NORTH; every account may read /v3/signal-index. A free account's 403 on
/v3/forecast is not an authentication failure: the provider keeps working from the index,
says the MOER and forecast are not in the account's plan, and asks for the forecast again
only every FORECAST_RECHECK_SECONDS (a plan can be upgraded). A 401 is bad credentials.
"""

from __future__ import annotations

import base64

from exporter.carbon import DIRECT, Intensity
from exporter.carbon.providers import (
    AUTH, INVALID, NO_DATA, Fetched, ForecastPoint, Provider, ProviderError, check_grams, dig,
    parse_time, unit_factor,
)
from exporter.carbon.secrets import Secret, load_secret
from exporter.confutil import ConfigError

USER_ENV = "CARBON_EXPORTER_WATTTIME_USERNAME"
PASSWORD_ENV = "CARBON_EXPORTER_WATTTIME_PASSWORD"
TOKEN_LIFETIME = 30 * 60 - 60  # renew a minute before WattTime's 30 minutes run out
FORECAST_RECHECK_SECONDS = 6 * 3600.0


class WattTime(Provider):
    type = "watttime"
    auth = (
        '`GET /login` with HTTP basic auth (`username_file`/`username_env`, '
        '`password_file`/`password_env`, or `CARBON_EXPORTER_WATTTIME_USERNAME`/`_PASSWORD`) '
        'returns `token`, used as `Authorization: Bearer` and renewed before its 30 minutes '
        'run out or on a 401'
    )
    summary = (
        '`GET /v3/forecast?region=R&signal_type=co2_moer`: `data[].point_time`, '
        '`data[].value` in `meta.units` = `lbs_co2_per_mwh`, converted with 1 lb/MWh = '
        '0.453592 g/kWh; the point covering now is in force with `kind="marginal"`, '
        '`basis="direct"`, the rest is the forecast. `/v3/forecast` is for subscribers (except '
        'the preview region `CAISO_NORTH`): on a plan without it (HTTP 403, not a credentials '
        'problem) the provider stays up, reads only the index, says so in its detail, and asks '
        'for the forecast again every 6 hours. `GET /v3/signal-index?region=R&signal_type=co2_moer`: '
        '`data[0].value`, a percentile (`meta.units` = `percentile`): a percentile cannot '
        'become grams, so it is exported only as `carbon_grid_intensity_index_ratio` (value /'
        " 100). Region: `region`, else the cloud region's WattTime region."
    )
    options = {"region": {"type": "string", "minLength": 1},
               "username_env": {"type": "string"}, "username_file": {"type": "string"},
               "password_env": {"type": "string"}, "password_file": {"type": "string"},
               "forecast": {"type": "boolean"}}
    refresh = 300.0
    max_age = 3600.0
    base_url = "https://api.watttime.org"
    kind = "marginal"

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        self.region = spec.option("region") or spec.zone or zone.wt_region
        if not self.region:
            raise ConfigError(f"{self.where}: no region: set the provider's region "
                              f"(e.g. CAISO_NORTH) or a cloud region as carbon.zone")
        username = load_secret(self.where, "username", spec.option("username_file"),
                               spec.option("username_env"), USER_ENV)
        password = load_secret(self.where, "password", spec.option("password_file"),
                               spec.option("password_env"), PASSWORD_ENV)
        if username is None or password is None:
            raise ConfigError(f"{self.where}: no credentials: set username_file/username_env and "
                              f"password_file/password_env, or {USER_ENV} and {PASSWORD_ENV}")
        self.username: Secret = username
        self.password: Secret = password
        self.with_forecast = spec.option("forecast", True)
        self._token: str | None = None
        self._token_until = 0.0
        self._forecast_denied_until = 0.0  # a 403 on /v3/forecast: not in this plan

    def describe(self) -> str:
        return f"{self.base} region {self.region}"

    async def _login(self, session) -> str:
        if self._token and self.clock() < self._token_until:
            return self._token
        basic = base64.b64encode(
            f"{self.username.reveal()}:{self.password.reveal()}".encode()).decode()
        answer = await self.get_json(session, f"{self.base}/login",
                                     headers={"Authorization": f"Basic {basic}"})
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(INVALID, "login answer has no token")
        Secret(token, short_lived=True)  # registers it for redaction
        self._token, self._token_until = token, self.clock() + TOKEN_LIFETIME
        return token

    async def _get(self, session, path: str) -> dict:
        params = {"region": self.region, "signal_type": "co2_moer"}
        url = f"{self.base}{path}"
        token = await self._login(session)
        try:
            return await self.get_json(session, url, params=params,
                                       headers={"Authorization": f"Bearer {token}"})
        except ProviderError as exc:
            if exc.reason != AUTH or exc.status == 403:
                raise  # 403: the token is good, the plan does not cover this
        self._token = None  # the token expired early: log in again, once
        token = await self._login(session)
        return await self.get_json(session, url, params=params,
                                   headers={"Authorization": f"Bearer {token}"})

    async def fetch(self, session) -> Fetched:
        answer = None
        if self.clock() >= self._forecast_denied_until:
            try:
                answer = await self._get(session, "/v3/forecast")
            except ProviderError as exc:
                if exc.status != 403:
                    raise
                self._forecast_denied_until = self.clock() + FORECAST_RECHECK_SECONDS
        if answer is None:
            return await self._index_only(session)
        factor = unit_factor(dig(answer, "meta.units", "forecast"), "meta.units")
        items = dig(answer, "data", "forecast")
        if not isinstance(items, list) or not items:
            raise ProviderError(INVALID, "forecast data is empty")
        points = sorted((parse_time(dig(p, "point_time", "forecast"), "data[].point_time"),
                         check_grams(dig(p, "value", "forecast"), "data[].value", factor))
                        for p in items)
        period = answer.get("meta", {}).get("data_point_period_seconds", 300)
        period = period if isinstance(period, (int, float)) and period > 0 else 300
        now = self.wall()
        current = [p for p in points if p[0] <= now] or points[:1]
        stamp, grams = current[-1]
        forecast = tuple(ForecastPoint(start, start + period, g) for start, g in points) \
            if self.with_forecast else ()
        try:
            index = await self._index(session)
        except ProviderError:
            index = None  # the index is optional: the MOER above is what is accounted
        return Fetched(Intensity(grams, self.region, self.name, "marginal", min(stamp, now),
                                 DIRECT), forecast, index)

    async def _index(self, session) -> float | None:
        signal = await self._get(session, "/v3/signal-index")
        units = str(dig(signal, "meta.units", "signal-index")).lower()
        value = dig(signal, "data.0.value", "signal-index")
        if units == "percentile" and isinstance(value, (int, float)) and 0 <= value <= 100:
            return float(value) / 100
        raise ProviderError(INVALID, f"signal-index: {value!r} {units!r} is not a percentile")

    async def _index_only(self, session) -> Fetched:
        """A plan without /v3/forecast: the index, which every account may read."""
        note = (f"MOER and forecast unavailable: /v3/forecast for {self.region} is not in this "
                f"WattTime plan (HTTP 403); reading the index only")
        index = await self._index(session)
        if index is None:
            raise ProviderError(NO_DATA, note)
        return Fetched(None, (), index, zone=self.region, note=note, at=self.wall())
