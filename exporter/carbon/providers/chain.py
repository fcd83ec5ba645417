"""The provider chain: each provider on its own refresh timer (an asyncio task), with a
timeout, retries with exponential backoff and jitter, Retry-After on 429 and 5xx, and its
last good value cached. The value in force is the first provider's, in configured order,
whose cached value is younger than its max_age; after the list, the fallback (static
--carbon.intensity or the bundled dataset), which never fails.

Time comes in three injected parts (tests move them instead of sleeping): `clock`
(monotonic: request durations, the providers' own timers), `wall` (unix time: values' ages,
forecast windows) and `sleep` (the refresh, retry and tick timers).

The chain only ever *publishes* a GridState (a plain assignment the sampler reads at its
next cycle): sampling never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp

from exporter import __version__
from exporter.carbon import Intensity, static_intensity
from exporter.carbon.providers import (
    INVALID, TIMEOUT, Fetched, ForecastPoint, Provider, ProviderError,
)
from exporter.carbon.providers.spec import provider_types
from exporter.carbon.secrets import redact
from exporter.carbon.zones import resolve_zone

log = logging.getLogger(__name__)

FORECAST_WINDOW = 24 * 3600.0
USER_AGENT = f"carbon-exporter/{__version__}"


def client_session() -> aiohttp.ClientSession:
    """The providers' HTTP session (in a running event loop), verifying TLS against the
    system CA store through its own context: aiohttp's import-time ones may be empty (see
    exporter.aiohttp_lean)."""
    return aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, raise_for_status=False,
                                 connector=aiohttp.TCPConnector(ssl=ssl.create_default_context()))


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    type: str
    description: str
    up: bool
    reason: str  # ok, not_yet, or a ProviderError reason
    detail: str  # redacted
    value: Intensity | None  # the cached last good value
    in_force: bool


@dataclass(frozen=True, slots=True)
class ForecastMin:
    grid_zone: str
    provider: str
    grams_per_kwh: float
    start: float  # unix time the cleanest period starts (may be now or in the past if current)


@dataclass(frozen=True, slots=True)
class GridState:
    intensity: Intensity
    forecast_min: ForecastMin | None = None
    indexes: tuple[tuple[str, str, float], ...] = ()  # (grid_zone, provider, 0..1)
    providers: tuple[ProviderStatus, ...] = ()


@dataclass(slots=True)
class _State:
    provider: Provider
    fetched: Fetched | None = None
    forecast: tuple[ForecastPoint, ...] = ()
    reason: str = "not_yet"
    detail: str = "not fetched yet"
    attempts: int = 0

    def fresh(self, now: float) -> bool:
        """Whether its intensity may be in force."""
        if self.fetched is None or self.fetched.intensity is None:
            return False
        return self.fetched.intensity.age(now) <= self.provider.spec.max_age

    def index_fresh(self, now: float) -> bool:
        fetched = self.fetched
        if fetched is None or fetched.index is None:
            return False
        age = fetched.intensity.age(now) if fetched.intensity else max(0.0, now - fetched.at)
        return age <= self.provider.spec.max_age

    @property
    def zone(self) -> str:
        fetched = self.fetched
        if fetched is None:
            return ""
        return fetched.intensity.grid_zone if fetched.intensity else fetched.zone


def _why_not(state: _State) -> str:
    """Why a provider before the one in force is not in force."""
    if state.fetched is None:
        return state.reason
    return "index only" if state.fetched.intensity is None else "stale"


def build_providers(config) -> list[Provider]:
    """Providers for config.carbon_providers; ConfigError for a bad zone or missing secret."""
    zone = resolve_zone(config.carbon_zone)
    specs = config.carbon_providers or ()
    types = provider_types() if specs else {}  # provider modules load only when configured
    return [types[spec.type](spec, zone) for spec in specs]


class Chain:
    def __init__(self, providers: list[Provider], fallback: Intensity,
                 publish: Callable[[GridState], None], tick: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.clock, self.wall, self.sleep = clock, wall, sleep
        for provider in providers:
            provider.clock, provider.wall = clock, wall
        self.states = [_State(p) for p in providers]
        self.fallback = fallback
        self.publish = publish
        self.tick = tick
        self.in_force_name: str | None = None
        self.in_force_basis: tuple[str, str] | None = None  # (kind, basis) of the value in force
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        # (provider, outcome, seconds) per request: selfmetrics.FetchMetrics.observe
        self.observe: Callable[[str, str, float], None] | None = None

    @classmethod
    def from_config(cls, config, publish: Callable[[GridState], None], tick: float = 1.0,
                    previous: "Chain | None" = None) -> "Chain":
        if previous is None:
            return cls(build_providers(config), static_intensity(config), publish, tick)
        # a reload: the same time as before, so kept values go on ageing on it
        chain = cls(build_providers(config), static_intensity(config), publish, tick,
                    clock=previous.clock, wall=previous.wall, sleep=previous.sleep)
        chain.observe = previous.observe  # keep cached values of providers that did not change
        old = {(s.provider.spec, s.provider.zone): s for s in previous.states}
        for state in chain.states:
            kept = old.get((state.provider.spec, state.provider.zone))
            if kept is not None:
                state.fetched, state.forecast = kept.fetched, kept.forecast
                state.reason, state.detail = kept.reason, kept.detail
        return chain

    # --- selection ---------------------------------------------------------------------------

    def select(self, now: float | None = None) -> GridState:
        now = self.wall() if now is None else now
        chosen = next((s for s in self.states if s.fresh(now)), None)
        intensity = chosen.fetched.intensity if chosen and chosen.fetched and \
            chosen.fetched.intensity else self.fallback
        name = intensity.provider
        if name != self.in_force_name:
            before = self.states[: self.states.index(chosen)] if chosen else self.states
            skipped = "; ".join(f"{s.provider.name} {_why_not(s)}" for s in before)
            basis = (intensity.kind, intensity.basis)
            changed = self.in_force_basis is not None and basis != self.in_force_basis
            log.log(logging.WARNING if changed else logging.INFO,
                    "grid intensity in force: %g gCO2e/kWh from %s (zone %s, %s, %s)%s%s",
                    intensity.grams_per_kwh, name, intensity.grid_zone or "-", intensity.kind,
                    intensity.basis, f"; skipped: {skipped}" if skipped else "",
                    f"; the basis changes from {self.in_force_basis[0]} {self.in_force_basis[1]}"
                    f" to {basis[0]} {basis[1]}: values before and after do not compare"
                    if changed and self.in_force_basis else "")
            self.in_force_name = name
            self.in_force_basis = basis
        return GridState(
            intensity=intensity,
            forecast_min=self._forecast_min(chosen, now),
            indexes=tuple((s.zone, s.provider.name, s.fetched.index)
                          for s in self.states if s.fetched and s.fetched.index is not None
                          and s.index_fresh(now)),
            providers=tuple(ProviderStatus(
                s.provider.name, s.provider.type, s.provider.describe(), s.reason == "ok",
                s.reason, s.detail, s.fetched.intensity if s.fetched else None, s is chosen)
                for s in self.states),
        )

    def _forecast_min(self, chosen: _State | None, now: float) -> ForecastMin | None:
        """Cleanest forecast period over the next 24 h: the value in force's provider first,
        else the first provider in order with a forecast covering the window."""
        order = ([chosen] if chosen else []) + [s for s in self.states if s is not chosen]
        for state in order:
            window = [p for p in state.forecast if p.end > now and p.start < now + FORECAST_WINDOW]
            if window:
                best = min(window, key=lambda p: (p.grams_per_kwh, p.start))
                zone = state.zone
                return ForecastMin(zone, state.provider.name, best.grams_per_kwh, best.start)
        return None

    def _publish(self) -> None:
        try:
            self.publish(self.select())
        except Exception:  # a publishing bug must not stop the providers
            log.exception("publishing the grid state failed")

    # --- fetching ----------------------------------------------------------------------------

    async def _attempt(self, state: _State) -> Fetched:
        provider = state.provider
        spec = provider.spec
        attempt = 0
        while True:
            state.attempts += 1
            assert self._session is not None  # start() opens it before any fetch
            started, outcome = self.clock(), "error"  # "error": a provider bug raised
            try:
                async with asyncio.timeout(spec.timeout):
                    fetched = await provider.fetch(self._session)
                outcome = "ok"
                return fetched
            except TimeoutError:
                error = ProviderError(TIMEOUT, f"no answer within {spec.timeout:g} s")
                outcome = error.reason
            except ProviderError as exc:
                error, outcome = exc, exc.reason
            except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
                error = ProviderError(INVALID, f"unexpected answer shape: {type(exc).__name__}: {exc}")
                outcome = error.reason
            except asyncio.CancelledError:
                outcome = ""  # shutdown or reload: not an answer to count
                raise
            finally:
                if self.observe is not None and outcome:
                    self.observe(provider.name, outcome, self.clock() - started)
            if not error.retryable or attempt == spec.retries:
                raise error
            delay = min(spec.refresh, spec.backoff * 2 ** attempt) * random.uniform(0.5, 1.5)
            if error.retry_after is not None:
                if error.retry_after > spec.refresh:
                    raise error  # the server wants longer than a refresh: wait in _run
                delay = max(delay, error.retry_after)
            log.debug("provider %s: %s (%s); retry %d in %.2f s", provider.name, error.reason,
                      error.detail, attempt + 1, delay)
            await self.sleep(delay)
            attempt += 1

    async def _run(self, state: _State) -> None:
        provider = state.provider
        while True:
            # +-10% jitter spreads a fleet's requests; never below what the server asked for
            delay = provider.spec.refresh * (random.uniform(0.9, 1.1) if provider.live else 1)
            previous = state.reason
            try:
                fetched = await self._attempt(state)
                state.fetched = fetched
                if fetched.forecast:
                    state.forecast = fetched.forecast
                state.reason, state.detail = "ok", fetched.note
                if previous != "ok" and fetched.intensity is not None:
                    log.info("provider %s: ok, %g gCO2e/kWh (%s, %s, zone %s)%s", provider.name,
                             fetched.intensity.grams_per_kwh, fetched.intensity.kind,
                             fetched.intensity.basis, fetched.intensity.grid_zone or "-",
                             f"; {fetched.note}" if fetched.note else "")
                elif previous != "ok":
                    log.warning("provider %s: ok, index only (zone %s): %s", provider.name,
                                fetched.zone or "-", fetched.note)
            except ProviderError as exc:
                state.reason, state.detail = exc.reason, exc.detail
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if previous != exc.reason:
                    kept = (f"keeping its last value from "
                            f"{state.fetched.intensity.age(self.wall()):.0f} s ago"
                            if state.fetched and state.fetched.intensity else "no value yet")
                    log.warning("provider %s: %s (%s); %s; next try in %g s", provider.name,
                                exc.reason, exc.detail, kept, delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a provider bug: report it, keep the chain alive
                state.reason, state.detail = "error", redact(f"{type(exc).__name__}: {exc}")
                log.exception("provider %s failed", provider.name)
            self._publish()
            await self.sleep(delay)

    async def _ticker(self) -> None:
        """Re-select every tick: values age, forecasts slide, even when nothing is fetched."""
        while True:
            await self.sleep(self.tick)
            self._publish()

    def start(self) -> None:
        self._publish()
        if not self.states:
            return
        self._session = client_session()
        self._tasks = [asyncio.create_task(self._run(s), name=f"provider-{s.provider.name}")
                       for s in self.states]
        self._tasks.append(asyncio.create_task(self._ticker(), name="provider-ticker"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
