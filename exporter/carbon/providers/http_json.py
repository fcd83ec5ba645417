"""A generic HTTP JSON endpoint (in-house or utility feeds).

GET `url`; the value is at the dotted `field` path (e.g. `data.0.intensity`), in `unit`
(default g/kWh; kg/kWh, kg/MWh, lbs/MWh, t/MWh are converted) or in the unit named at
`unit_field` in the answer. `time_field`, where given, is the value's timestamp (ISO 8601 or
unix seconds) and its age counts from there; otherwise from the fetch. An optional token
(token_file / token_env) goes in `header` (default Authorization, as `Bearer <token>`).
"""

from __future__ import annotations


from exporter.carbon import UNKNOWN, Intensity
from exporter.carbon.providers import (
    BASIS_OPTION, KIND_OPTION, TOKEN_OPTIONS, Fetched, Provider, check_grams, dig, parse_time,
    unit_factor,
)
from exporter.carbon.secrets import load_secret


class HttpJson(Provider):
    type = "http_json"
    auth = (
        'optional `token_file`/`token_env`, sent in `header` (default `Authorization: Bearer '
        '<token>`)'
    )
    summary = (
        '`GET url`; the value at the dotted `field` path (`a.b.0.c`), in `unit` or in the '
        'unit named at `unit_field`; its timestamp at `time_field` (ISO 8601 or unix '
        'seconds), else the fetch time. `kind` may be `marginal`; `basis` `lifecycle` or '
        '`direct` (default `unknown`).'
    )
    options = {**TOKEN_OPTIONS, **KIND_OPTION, **BASIS_OPTION,
               "field": {"type": "string", "minLength": 1},
               "time_field": {"type": "string", "minLength": 1},
               "unit": {"enum": ["g/kWh", "kg/kWh", "kg/MWh", "lbs/MWh", "t/MWh"]},
               "unit_field": {"type": "string", "minLength": 1},
               "header": {"type": "string", "pattern": r"^[A-Za-z0-9-]+$"}}
    required = ("url", "field")
    refresh = 300.0

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        self.url = spec.url
        self.field = spec.option("field")
        self.time_field = spec.option("time_field")
        self.unit = spec.option("unit", "g/kWh")
        self.unit_field = spec.option("unit_field")
        self.kind = spec.option("kind", "average")
        self.basis = spec.option("basis", UNKNOWN)
        self.header = spec.option("header", "Authorization")
        self.token = load_secret(self.where, "token", spec.option("token_file"),
                                 spec.option("token_env"), None)
        self.zone_label = spec.zone or (zone.em_zone or zone.country if zone.text else "")

    def describe(self) -> str:
        return f"{self.url.split('?')[0]} field {self.field}"

    async def fetch(self, session) -> Fetched:
        headers = {}
        if self.token is not None:
            value = self.token.reveal()
            headers[self.header] = f"Bearer {value}" if self.header.lower() == "authorization" else value
        answer = await self.get_json(session, self.url, headers=headers)
        unit = dig(answer, self.unit_field, "answer") if self.unit_field else self.unit
        grams = check_grams(dig(answer, self.field, "answer"), self.field,
                            unit_factor(unit, self.unit_field or "unit"))
        now = self.wall()
        stamp = parse_time(dig(answer, self.time_field, "answer"), self.time_field) \
            if self.time_field else now
        return Fetched(Intensity(grams, self.zone_label, self.name, self.kind, min(stamp, now),
                                 self.basis))
