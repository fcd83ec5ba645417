"""Grid intensity providers. Each turns one API (or file) into a `Fetched` value; the chain
(chain.py) schedules them, retries, caches and picks the value in force.

A provider raises ProviderError with a short reason for anything it cannot trust: the
chain keeps the last good value and moves down the list. Values are checked before use:
a number, finite, within 0..MAX_GRAMS_PER_KWH, in a unit we know how to convert.
"""

from __future__ import annotations

import abc
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar

import aiohttp
import yarl

from exporter.carbon import Intensity
from exporter.carbon.secrets import redact
from exporter.carbon.zones import GridZone
# Above any grid on record: the one cap for providers' values and carbon.intensity alike.
from exporter.confutil import MAX_GRAMS_PER_KWH

if TYPE_CHECKING:
    from exporter.carbon.providers.spec import ProviderSpec

log = logging.getLogger(__name__)

# Secret options of providers that send a token (see exporter.carbon.secrets).
TOKEN_OPTIONS: dict[str, Any] = {"token_file": {"type": "string"}, "token_env": {"type": "string"}}
KIND_OPTION: dict[str, Any] = {"kind": {"enum": ["average", "marginal"]}}
# what a configured value counts: lifecycle CO2e or direct CO2 (exporter.carbon.BASES)
BASIS_OPTION: dict[str, Any] = {"basis": {"enum": ["lifecycle", "direct", "unknown"]}}

MAX_REDIRECTS = 3
LBS_PER_MWH_TO_G_PER_KWH = 0.453592  # 1 lb = 453.592 g; 1 MWh = 1000 kWh

# Units seen in provider answers or configured for http_json, to gCO2e/kWh.
UNIT_FACTORS = {
    "g/kwh": 1.0, "gco2/kwh": 1.0, "gco2eq/kwh": 1.0, "gco2e/kwh": 1.0, "g_co2_per_kwh": 1.0,
    "kg/kwh": 1000.0, "kg/mwh": 1.0, "kg_co2_per_mwh": 1.0, "t/mwh": 1000.0,
    "lbs/mwh": LBS_PER_MWH_TO_G_PER_KWH, "lbs_co2_per_mwh": LBS_PER_MWH_TO_G_PER_KWH,
}

# ProviderError reasons, exported as carbon_grid_provider_status_info{reason}.
AUTH, RATE_LIMITED, HTTP, TIMEOUT, UNREACHABLE, INVALID, NO_DATA = (
    "auth", "rate_limited", "http_error", "timeout", "unreachable", "invalid", "no_data")


class ProviderError(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None,
                 retryable: bool = True, status: int | None = None) -> None:
        super().__init__(redact(detail))
        self.status = status  # the HTTP status, where one came
        self.reason = reason
        self.detail = redact(detail)
        self.retry_after = retry_after
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    start: float  # unix time
    end: float
    grams_per_kwh: float


@dataclass(frozen=True, slots=True)
class Fetched:
    # None: the account may read no intensity, only the index (WattTime's free plan)
    intensity: Intensity | None
    forecast: tuple[ForecastPoint, ...] = ()
    index: float | None = None  # 0..1 where the provider gives a relative index (WattTime)
    zone: str = ""  # the index's zone where there is no intensity
    note: str = ""  # what this fetch could not read, for the provider's detail
    at: float = field(default_factory=time.time)  # unix time of the fetch


def check_grams(value: Any, field: str, factor: float = 1.0) -> float:
    """A plausible gCO2e/kWh from `value` (in a unit converted by `factor`), or INVALID."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProviderError(INVALID, f"{field} is {value!r}, not a number")
    grams = float(value) * factor
    if not math.isfinite(grams) or grams < 0:
        raise ProviderError(INVALID, f"{field} is {value!r}: negative or not finite")
    if grams > MAX_GRAMS_PER_KWH:
        raise ProviderError(INVALID, f"{field} is {value!r} = {grams:g} gCO2e/kWh, above the "
                                     f"plausible {MAX_GRAMS_PER_KWH:g}")
    return grams


def unit_factor(unit: Any, field: str) -> float:
    key = str(unit).strip().lower().replace(" ", "")
    if key not in UNIT_FACTORS:
        raise ProviderError(INVALID, f"{field} is {unit!r}: not a unit of carbon intensity we "
                                     f"can convert to gCO2e/kWh")
    return UNIT_FACTORS[key]


def parse_time(value: Any, field: str) -> float:
    """ISO 8601 (with Z or offset; '2018-01-20T12:00Z' too) or unix seconds -> unix time."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if not isinstance(value, str) or not value:
        raise ProviderError(INVALID, f"{field} is {value!r}, not a timestamp")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ProviderError(INVALID, f"{field} is {value!r}, not an ISO 8601 timestamp") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def dig(document: Any, path: str, what: str) -> Any:
    """document['a']['b'][0] for path 'a.b.0'; NO_DATA/INVALID naming the missing part."""
    node = document
    walked = []
    for part in path.split("."):
        walked.append(part)
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise ProviderError(INVALID, f"{what}: no field {'.'.join(walked)} in the answer")
    return node


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


class Provider(abc.ABC):
    """Base class of a grid intensity provider: one module in exporter/carbon/providers/.

    A subclass declares its `type` (the config's `type:`), its own options as JSON schema
    properties, which of them are required, how often it asks (`refresh`) and how long a value
    may serve (`max_age`), and its API's `base_url` where it has one (the `url` option
    overrides it); exporter.carbon.providers.spec derives the schema, the defaults and the
    type table from these. It implements fetch().
    """

    type: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}  # JSON schema properties beyond the common ones
    required: ClassVar[tuple[str, ...]] = ()
    refresh: ClassVar[float] = 300.0  # seconds between fetches, by default
    max_age: ClassVar[float] = 7200.0  # seconds a value may serve after its timestamp
    base_url: ClassVar[str | None] = None  # the API's default base URL
    auth: ClassVar[str] = "none"  # how it authenticates, for the README's provider table
    summary: ClassVar[str] = ""  # what it reads (units), for the README's provider table
    kind = "average"
    live = True  # False for static/dataset: never aged, never fetched over the network
    # The chain sets both to its own: monotonic seconds for the provider's timers (token
    # lifetime, back-off), unix time for "now" against data timestamps.
    clock: Callable[[], float] = staticmethod(time.monotonic)
    wall: Callable[[], float] = staticmethod(time.time)

    def __init__(self, spec: ProviderSpec, zone: GridZone) -> None:
        self.spec = spec
        self.zone = zone
        self.name = spec.name
        self.base = (spec.url or self.base_url or "").rstrip("/")

    @property
    def where(self) -> str:
        return f"provider {self.name}"

    @abc.abstractmethod
    async def fetch(self, session: aiohttp.ClientSession) -> Fetched:
        """The value in force now (and a forecast where the API has one)."""

    def describe(self) -> str:
        """One line for the landing page and start-up log: no secrets, only where from."""
        return self.spec.url or self.type

    async def forecast_or_keep(
            self, request: Awaitable[tuple[ForecastPoint, ...]]) -> tuple[ForecastPoint, ...]:
        """A forecast, or () when it fails: a failed forecast never fails the current value,
        and the chain keeps the last good forecast (it replaces it only with a non-empty one)."""
        try:
            return await request
        except ProviderError as exc:
            log.debug("provider %s: forecast unusable: %s", self.name, exc.detail)
            return ()

    async def get_json(self, session: aiohttp.ClientSession, url: str, *,
                       headers: dict[str, str] | None = None,
                       params: dict[str, str] | None = None) -> Any:
        """GET and decode. Redirects are followed by hand and only on the same scheme and
        host (a moved path): credentials travel in headers, and aiohttp would send custom
        ones (auth-token) on to whatever host a redirect names."""
        target = yarl.URL(url)
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                async with session.get(target, headers=headers, params=params,
                                       allow_redirects=False) as response:
                    body = await response.read()
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"), self.wall())
                    location = response.headers.get("Location")
            except aiohttp.ClientError as exc:
                raise ProviderError(UNREACHABLE, f"{type(exc).__name__}: {exc}") from None
            if status not in (301, 302, 303, 307, 308) or not location:
                return decode(status, body, retry_after, url)
            moved = target.join(yarl.URL(location))
            if (moved.scheme, moved.host, moved.port) != (target.scheme, target.host, target.port):
                raise ProviderError(
                    HTTP, f"HTTP {status} from {target.with_query(None)}: moved to "
                          f"{moved.with_query(None)}, another host; not followed with the "
                          f"credentials: set the provider's url if the move is genuine",
                    retryable=False)
            target = moved
            params = None if moved.query_string else params  # a Location with a query wins
        raise ProviderError(HTTP, f"more than {MAX_REDIRECTS} redirects from {url.split('?')[0]}",
                            retryable=False)


def decode(status: int, body: bytes, retry_after: float | None, url: str) -> Any:
    path = url.split("?")[0]
    if status in (401, 403):
        raise ProviderError(AUTH, f"HTTP {status} from {path}: check the credentials",
                            retryable=False, status=status)
    if status == 429:
        raise ProviderError(RATE_LIMITED, f"HTTP 429 from {path}", retry_after=retry_after)
    if status >= 500:
        raise ProviderError(HTTP, f"HTTP {status} from {path}", retry_after=retry_after)
    if status != 200:
        raise ProviderError(HTTP, f"HTTP {status} from {path}", retryable=False)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProviderError(INVALID, f"malformed JSON from {path}: {exc}") from None


def _retry_after(header: str | None, now: float) -> float | None:
    """Retry-After in seconds (delta-seconds, or an HTTP date against `now`, unix time)."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        from email.utils import parsedate_to_datetime
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)
