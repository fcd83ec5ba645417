"""A local file of intensities, re-read when its modification time or size changes.

CSV (by extension .csv) with a header row, or JSON:
- time-stamped values: CSV columns `timestamp,grams_per_kwh`; JSON a list of
  {"timestamp": ..., "grams_per_kwh": ...}. Timestamps are ISO 8601 or unix seconds. The
  latest point at or before now is in force (its age counts from its timestamp); later
  points are the forecast.
- an hourly profile: CSV columns `hour,grams_per_kwh` (hours 0-23, UTC); JSON
  {"hourly": [24 numbers]}. The current UTC hour's value is in force.
Values are gCO2e/kWh. Reading happens in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os

from exporter.carbon import UNKNOWN, Intensity
from exporter.carbon.providers import (
    BASIS_OPTION,
    KIND_OPTION,
    INVALID, NO_DATA, Fetched, ForecastPoint, Provider, ProviderError, check_grams, parse_time,
)

HOUR = 3600.0


class FileProvider(Provider):
    type = "file"
    auth = 'none'
    summary = (
        'A local CSV or JSON file, re-read when its modification time or size changes (parsed'
        ' in a worker thread). Time-stamped values: CSV `timestamp,grams_per_kwh` or JSON '
        '`[{"timestamp": ..., "grams_per_kwh": ...}]` (the latest point at or before now is '
        'in force; later points are the forecast). An hourly profile: CSV '
        '`hour,grams_per_kwh` (0-23, UTC) or JSON `{"hourly": [24 values]}`.'
    )
    options = {"path": {"type": "string", "minLength": 1}, **KIND_OPTION, **BASIS_OPTION}
    required = ("path",)
    refresh = 10.0

    def __init__(self, spec, zone) -> None:
        super().__init__(spec, zone)
        self.path = spec.option("path")
        self.kind = spec.option("kind", "average")
        self.basis = spec.option("basis", UNKNOWN)
        self.zone_label = spec.zone or (zone.em_zone or zone.country if zone.text else "")
        self._seen: tuple[float, int] | None = None
        self._series: list[tuple[float, float]] = []  # (start, grams), sorted
        self._profile: list[float] | None = None

    def describe(self) -> str:
        return self.path

    def _load(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ProviderError(NO_DATA, f"{self.path}: {exc.strerror}", retryable=False) from None
        seen = (stat.st_mtime, stat.st_size)
        if seen == self._seen:
            return  # unchanged since the last read: the parsed contents are the cache
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderError(NO_DATA, f"{self.path}: {exc}", retryable=False) from None
        if self.path.lower().endswith(".csv"):
            series, profile = _parse_csv(text)
        else:
            series, profile = _parse_json(text)
        self._series, self._profile, self._seen = series, profile, seen

    async def fetch(self, session) -> Fetched:
        await asyncio.to_thread(self._load)
        now = self.wall()
        if self._profile is not None:
            hour_start = now - now % HOUR
            hour = int(hour_start // HOUR) % 24
            forecast = tuple(ForecastPoint(hour_start + n * HOUR, hour_start + (n + 1) * HOUR,
                                           self._profile[(hour + n) % 24]) for n in range(24))
            return Fetched(Intensity(self._profile[hour], self.zone_label, self.name, self.kind,
                                     hour_start, self.basis), forecast)
        past = [p for p in self._series if p[0] <= now]
        if not past:
            raise ProviderError(NO_DATA, f"{self.path}: no value at or before now", retryable=False)
        start, grams = past[-1]
        future = [p for p in self._series if p[0] >= start]
        forecast = tuple(ForecastPoint(s, future[n + 1][0] if n + 1 < len(future) else s + HOUR, g)
                         for n, (s, g) in enumerate(future))
        return Fetched(Intensity(grams, self.zone_label, self.name, self.kind, start,
                                 self.basis), forecast)


def _series(rows, where: str) -> list[tuple[float, float]]:
    points = sorted((parse_time(_number(r.get("timestamp")), f"{where} timestamp"),
                     check_grams(_number(r.get("grams_per_kwh")), f"{where} grams_per_kwh"))
                    for r in rows)
    if not points:
        raise ProviderError(INVALID, f"{where}: no values", retryable=False)
    return points


def _profile(values, where: str) -> list[float]:
    if not isinstance(values, list) or len(values) != 24:
        raise ProviderError(INVALID, f"{where}: an hourly profile needs 24 values", retryable=False)
    return [check_grams(_number(v), f"{where}[{n}]") for n, v in enumerate(values)]


def _number(value):
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _parse_csv(text: str):
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or ())
    rows = list(reader)
    if {"hour", "grams_per_kwh"} <= columns:
        by_hour = {}
        for row in rows:
            hour = row.get("hour", "").strip()
            if not hour.isdigit() or not 0 <= int(hour) < 24:
                raise ProviderError(INVALID, f"CSV hour {hour!r} is not 0-23", retryable=False)
            by_hour[int(hour)] = row["grams_per_kwh"]
        return [], _profile([by_hour.get(h) for h in range(24)], "CSV profile")
    if {"timestamp", "grams_per_kwh"} <= columns:
        return _series(rows, "CSV"), None
    raise ProviderError(INVALID, "CSV needs columns timestamp,grams_per_kwh or hour,grams_per_kwh",
                        retryable=False)


def _parse_json(text: str):
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ProviderError(INVALID, f"malformed JSON: {exc}", retryable=False) from None
    if isinstance(document, dict) and "hourly" in document:
        return [], _profile(document["hourly"], "JSON hourly")
    if isinstance(document, list) and all(isinstance(r, dict) for r in document):
        return _series(document, "JSON"), None
    raise ProviderError(INVALID, 'JSON must be a list of {"timestamp", "grams_per_kwh"} or '
                                 '{"hourly": [24 values]}', retryable=False)
