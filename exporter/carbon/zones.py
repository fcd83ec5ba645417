"""--carbon.zone: a country code, a provider zone id, or a cloud region resolved through the
bundled mapping (exporter/data/cloud_regions.csv)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from exporter import data
from exporter.confutil import ConfigError

CLOUDS = ("aws", "gcp", "azure")
_ZONE_ID = re.compile(r"^[A-Za-z]{2}(?:-[A-Za-z0-9]+)*$")


@dataclass(frozen=True, slots=True)
class GridZone:
    text: str  # as configured
    country: str  # ISO 3166-1 alpha-2 (or WORLD): the bundled dataset's key
    em_zone: str | None  # Electricity Maps zone id
    wt_region: str | None  # WattTime region
    cloud_region: str | None  # "aws:eu-west-1" when given as a cloud region


@dataclass(frozen=True, slots=True)
class CloudRegion:
    provider: str
    region: str
    location: str
    country: str
    em_zone: str
    wt_region: str
    source: str = ""


@functools.lru_cache(maxsize=1)
def cloud_regions() -> dict[str, CloudRegion]:
    return {f"{r['provider']}:{r['region']}": CloudRegion(**r)
            for r in data.rows("cloud_regions.csv")}


def resolve_zone(text: str | None) -> GridZone:
    """'' -> WORLD; 'DE' -> DE; 'US-MIDA-PJM' -> country US; 'aws:eu-west-1' -> IE."""
    text = (text or "").strip()
    if not text:
        return GridZone("", "WORLD", None, None, None)
    if ":" in text:
        cloud, _, region = text.partition(":")
        key = f"{cloud.strip().lower()}:{region.strip().lower()}"
        if cloud.strip().lower() not in CLOUDS:
            raise ConfigError(f"carbon.zone: {text!r}: cloud must be one of {', '.join(CLOUDS)}")
        row = cloud_regions().get(key)
        if row is None:
            known = sorted(k for k in cloud_regions() if k.startswith(key.split(':')[0] + ":"))
            raise ConfigError(f"carbon.zone: {text!r} is not in the bundled cloud region table "
                              f"({len(known)} {key.split(':')[0]} regions known, e.g. {known[0]}); "
                              f"set the country code instead")
        return GridZone(text, row.country, row.em_zone or None, row.wt_region or None, key)
    if not _ZONE_ID.match(text):
        raise ConfigError(f"carbon.zone: {text!r} is not a zone (use a country code such as DE, a "
                          f"zone id such as US-CAL-CISO, or a cloud region such as aws:eu-west-1)")
    upper = text.upper()
    country = "WORLD" if upper == "WORLD" else upper[:2]
    return GridZone(text, country, upper if upper != "WORLD" else None, None, None)
