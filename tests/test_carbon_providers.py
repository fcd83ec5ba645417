"""Every intensity provider against a fake of its API on 127.0.0.1: the documented answer,
then every way it can misbehave. Then the chain: fallback, cached values ageing, retries,
Retry-After, and a sampler that keeps its clock while a provider hangs.

Time is a Timeline (tests/harness.py): the chain's clocks and timers, and the fake APIs' "now",
move when a test advances them; only the HTTP exchanges on 127.0.0.1 take real time."""

from __future__ import annotations

import asyncio
import logging
import random
from email.utils import formatdate

import aiohttp
import pytest

from exporter.carbon import Intensity
from exporter.carbon.providers import LBS_PER_MWH_TO_G_PER_KWH, ProviderError
from exporter.carbon.providers.chain import Chain
from exporter.carbon.providers.spec import provider_types
from exporter.carbon.providers.spec import parse_chain
from exporter.carbon.providers.watttime import FORECAST_RECHECK_SECONDS, TOKEN_LIFETIME
from exporter.carbon.secrets import REDACTED, RedactingFilter, Secret, redact
from exporter.carbon.zones import resolve_zone
from exporter.ledger import Reading
from exporter.sampler import Sampler
from exporter.sources import OK, Source, SourceResult, Status
from tests.fake_grid import FakeGrid
from tests.harness import FakeClock, Timeline

FALLBACK = Intensity(473.05, "WORLD", "dataset")


@pytest.fixture(scope="module")
def fake():
    grid = FakeGrid()
    grid.slow_seconds = 1.0
    yield grid
    grid.close()


@pytest.fixture(autouse=True)
def reset(fake, monkeypatch):
    fake.mode = {api: "ok" for api in fake.mode}
    fake.value = {"em": 300.0, "wt": 1000.0, "uk": 200.0, "json": 400.0}
    fake.data_time = None
    fake.retry_after = "1"
    fake.requests.clear()
    fake.wt_plan = "pro"
    fake.em_queries.clear()
    fake.wt_logins = 0
    monkeypatch.setenv("TEST_EM_TOKEN", fake.token)
    monkeypatch.setenv("TEST_WT_USER", fake.username)
    monkeypatch.setenv("TEST_WT_PASSWORD", fake.password)
    monkeypatch.setenv("TEST_JSON_TOKEN", fake.json_token)


@pytest.fixture
def timeline(fake, monkeypatch) -> Timeline:
    """The test's time; the fake APIs stamp their answers on its wall clock."""
    line = Timeline()
    monkeypatch.setattr(fake, "wall", line.wall)
    return line


def spec_for(api: str, fake: FakeGrid, **extra) -> dict:
    base = {"timeout": 0.3, "retries": 0, "refresh": 0.2}
    item = {
        "em": {"type": "electricitymaps", "url": f"{fake.url}/em/v3", "token_env": "TEST_EM_TOKEN"},
        "wt": {"type": "watttime", "url": f"{fake.url}/wt", "region": "CAISO_NORTH",
               "username_env": "TEST_WT_USER", "password_env": "TEST_WT_PASSWORD"},
        "uk": {"type": "ukgrid", "url": f"{fake.url}/uk"},
        "json": {"type": "http_json", "url": f"{fake.url}/json", "field": "reading.co2",
                 "unit_field": "reading.unit", "time_field": "reading.at", "token_env": "TEST_JSON_TOKEN"},
    }[api]
    return {**base, **item, **extra}


def build(items, zone: str = "DE"):
    specs = parse_chain(items, "test")
    return [provider_types()[s.type](s, resolve_zone(zone)) for s in specs]


def fetch(provider, timeline: Timeline | None = None):
    line = timeline or Timeline()

    async def go():
        chain = Chain([provider], FALLBACK, lambda state: None, clock=line.clock, wall=line.wall,
                      sleep=line.sleep)
        async with aiohttp.ClientSession() as session:
            chain._session = session
            return await chain._attempt(chain.states[0])
    return asyncio.run(go())


# --- each provider, documented shape -----------------------------------------------------------

def test_electricitymaps_latest_and_forecast(fake, timeline):
    got = fetch(build([spec_for("em", fake)], zone="aws:us-east-1")[0], timeline)
    assert got.intensity.grams_per_kwh == 300.0
    assert got.intensity.grid_zone == "US-MIDA-PJM"  # resolved through cloud_regions.csv
    assert got.intensity.kind == "average" and got.intensity.provider == "electricitymaps"
    assert got.intensity.age(timeline.wall()) == 0  # stamped now
    assert len(got.forecast) == 24
    best = min(got.forecast, key=lambda p: p.grams_per_kwh)
    assert best.grams_per_kwh == 300.0 and best.start - got.forecast[0].start == 5 * 3600


def test_watttime_moer_converted_and_marginal(fake):
    got = fetch(build([spec_for("wt", fake)])[0])
    assert got.intensity.grams_per_kwh == pytest.approx(1000.0 * 0.453592)
    assert LBS_PER_MWH_TO_G_PER_KWH == 0.453592
    assert got.intensity.kind == "marginal" and got.intensity.grid_zone == "CAISO_NORTH"
    assert got.index == pytest.approx(0.73)  # percentile 73 -> index only, never grams
    assert len(got.forecast) == 288


def test_watttime_relogs_in_when_the_token_is_refused(fake):
    provider = build([spec_for("wt", fake)])[0]
    fetch(provider)
    provider._token = "expired-token"  # as if WattTime had expired it early
    assert fetch(provider).intensity.grams_per_kwh == pytest.approx(453.592)


def test_watttime_token_is_kept_for_its_lifetime_then_renewed(fake, timeline):
    provider = build([spec_for("wt", fake)])[0]
    fetch(provider, timeline)
    assert fake.wt_logins == 1
    timeline.clock.advance(TOKEN_LIFETIME - 1)
    fetch(provider, timeline)
    assert fake.wt_logins == 1  # the token is reused
    timeline.clock.advance(1)
    fetch(provider, timeline)
    assert fake.wt_logins == 2  # a minute before WattTime's 30 min run out: a new one


def test_watttime_bad_credentials_is_auth(fake, monkeypatch):
    monkeypatch.setenv("TEST_WT_PASSWORD", "wrong-password")
    with pytest.raises(ProviderError) as err:
        fetch(build([spec_for("wt", fake)])[0])
    assert err.value.reason == "auth" and not err.value.retryable


def test_ukgrid_national_and_regional(fake):
    national = fetch(build([spec_for("uk", fake)])[0])
    assert national.intensity.grams_per_kwh == 200.0 and national.intensity.grid_zone == "GB"
    assert len(national.forecast) == 48
    regional = fetch(build([spec_for("uk", fake, region=13)])[0])
    assert regional.intensity.grams_per_kwh == 200.0 and regional.intensity.grid_zone == "GB-13"
    assert min(p.grams_per_kwh for p in regional.forecast) == 200.0


def test_http_json_field_path_unit_and_time(fake, timeline):
    fake.data_time = timeline.wall() - 120
    got = fetch(build([spec_for("json", fake, name="plant", zone="plant-7")])[0], timeline)
    assert got.intensity.grams_per_kwh == 400.0
    assert got.intensity.grid_zone == "plant-7" and got.intensity.provider == "plant"
    assert got.intensity.age(timeline.wall()) == 120


def test_http_json_converts_a_configured_unit(fake):
    item = spec_for("json", fake, unit="lbs/MWh")
    del item["unit_field"]
    assert fetch(build([item])[0]).intensity.grams_per_kwh == pytest.approx(400 * 0.453592)


def test_a_wrong_token_is_auth(fake, monkeypatch):
    monkeypatch.setenv("TEST_EM_TOKEN", "not-the-token")
    with pytest.raises(ProviderError) as err:
        fetch(build([spec_for("em", fake)])[0])
    assert err.value.reason == "auth"


# --- each provider, misbehaving ----------------------------------------------------------------

EXPECTED = {"401": "auth", "429": "rate_limited", "500": "http_error", "slow": "timeout",
            "malformed": "invalid", "missing": "invalid", "negative": "invalid", "absurd": "invalid",
            "wrong_units": "invalid", "string": "invalid"}
CASES = [(api, mode) for api in ("em", "wt", "uk", "json") for mode in EXPECTED
         if not (api == "uk" and mode == "wrong_units")]  # the UK API has no unit field


@pytest.mark.parametrize("api,mode", CASES)
def test_misbehaviour_is_reported_not_used(fake, api, mode):
    fake.mode[api] = mode
    with pytest.raises(ProviderError) as err:
        fetch(build([spec_for(api, fake)])[0])
    assert err.value.reason == EXPECTED[mode], err.value.detail
    for secret in (fake.token, fake.password, fake.json_token, fake.wt_token):
        assert secret not in str(err.value)


# --- the chain -----------------------------------------------------------------------------------

def run_chain(providers, timeline: Timeline, during=None, tick: float = 10.0):
    """Start a chain on the timeline and settle: every provider has fetched (and retried) as
    far as it can without time passing. Then `during(chain)` is awaited; then it stops.
    Returns the chain and every GridState it published."""
    published = []

    async def go():
        chain = Chain(providers, FALLBACK, published.append, tick=tick, clock=timeline.clock,
                      wall=timeline.wall, sleep=timeline.sleep)
        chain.start()
        timeline.watch(chain._tasks)
        try:
            await timeline.settle()
            if during is not None:
                await during(chain)
        finally:
            await chain.stop()
        return chain
    return asyncio.run(go()), published


def delays(timeline: Timeline, provider: str) -> list[float]:
    """What the provider's task waited for, in order (retry back-offs, refreshes)."""
    return [seconds for task, seconds in timeline.delays if task == f"provider-{provider}"]


def test_fallback_moves_down_the_chain(fake, timeline):
    fake.mode["em"] = "401"
    chain, published = run_chain(build([spec_for("em", fake), spec_for("uk", fake)]), timeline)
    last = published[-1]
    assert last.intensity.provider == "ukgrid" and last.intensity.grams_per_kwh == 200.0
    states = {p.name: p for p in last.providers}
    assert states["electricitymaps"].reason == "auth" and not states["electricitymaps"].up
    assert states["ukgrid"].in_force


def test_everything_down_falls_back_to_the_dataset(fake, timeline):
    fake.mode["em"] = fake.mode["uk"] = "500"
    _, published = run_chain(build([spec_for("em", fake), spec_for("uk", fake)]), timeline)
    assert published[-1].intensity == FALLBACK
    assert {p.name: p.reason for p in published[-1].providers} == {
        "electricitymaps": "http_error", "ukgrid": "http_error"}


def test_last_good_value_stays_with_growing_age_then_expires(fake, timeline):
    items = [spec_for("em", fake, max_age=600, refresh=60), spec_for("uk", fake, refresh=60)]
    ages = []

    async def during(chain):
        assert chain.select().intensity.provider == "electricitymaps"
        fake.mode["em"] = "500"
        for _ in range(3):
            await timeline.advance(120)  # two failed refreshes each
            state = chain.select()
            assert state.intensity.provider == "electricitymaps"  # kept despite the errors
            assert state.intensity.grams_per_kwh == 300.0
            ages.append(state.intensity.age(timeline.wall()))
        await timeline.advance(239)  # just short of max_age: still in force
        assert chain.select().intensity.provider == "electricitymaps"
        await timeline.advance(2)  # past max_age: the next provider takes over
        assert chain.select().intensity.provider == "ukgrid"
        errors = {p.name: p.reason for p in chain.select().providers}
        assert errors["electricitymaps"] == "http_error"

    run_chain(build(items), timeline, during)
    assert ages == pytest.approx([120, 240, 360])
    assert fake.count("em") >= 1 + 3 * 2  # it kept asking meanwhile


def test_retries_back_off_then_wait_for_the_next_refresh(fake, timeline, monkeypatch):
    fake.mode["uk"] = "500"
    item = spec_for("uk", fake, retries=2, backoff=0.05, refresh=5)
    jitter = []  # the jitter's ranges; each draw is its midpoint, so the delays are exact
    monkeypatch.setattr(random, "uniform", lambda a, b: jitter.append((a, b)) or (a + b) / 2)

    async def during(chain):
        await timeline.advance(1)
        assert fake.count("uk") == 3  # first try + 2 retries, then nothing until the refresh
        await timeline.advance(4.1)  # the last retry was at 0.15 s: the refresh is due at 5.15
        assert fake.count("uk") == 3
        await timeline.advance(0.06)  # the next attempt's first try
        assert fake.count("uk") == 4
        await timeline.advance(1)  # and its retries
        assert fake.count("uk") == 6

    run_chain(build([item]), timeline, during)
    assert delays(timeline, "ukgrid")[:4] == pytest.approx([0.05, 0.1, 5.0, 0.05])
    assert jitter[:3] == [(0.9, 1.1), (0.5, 1.5), (0.5, 1.5)]  # refresh +-10%, retries +-50%


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(fake, timeline, form):
    fake.mode["uk"] = "429"
    # seconds, or an HTTP date 7 s after the API's (and the chain's) now
    fake.retry_after = "7" if form == "seconds" else formatdate(timeline.wall() + 7, usegmt=True)
    # Retry-After above the refresh: no retry in the attempt, the next refresh waits for it
    item = spec_for("uk", fake, retries=3, backoff=0.01, refresh=1)

    async def during(chain):
        await timeline.advance(6.9)
        assert fake.count("uk") == 1
        await timeline.advance(0.2)
        # the date has passed: the next 429s ask for no wait, so the 3 retries follow at once
        assert fake.count("uk") == (2 if form == "seconds" else 1 + 1 + 3)

    run_chain(build([item]), timeline, during)
    assert delays(timeline, "ukgrid")[0] == pytest.approx(7.0)


def test_retry_after_within_the_refresh_delays_the_retry(fake, timeline):
    fake.mode["uk"] = "429"
    fake.retry_after = "2"
    item = spec_for("uk", fake, retries=1, backoff=0.01, refresh=60)

    async def during(chain):
        await timeline.advance(1.9)
        assert fake.count("uk") == 1
        await timeline.advance(0.2)
        assert fake.count("uk") == 2  # the one retry, at the server's 2 s, not 0.01 s

    run_chain(build([item]), timeline, during)
    assert delays(timeline, "ukgrid")[0] == 2.0


def test_cache_survives_a_rebuild_with_the_same_spec(fake, timeline):
    providers = build([spec_for("em", fake)])
    chain, _ = run_chain(providers, timeline)
    assert chain.states[0].fetched is not None

    class Config:
        carbon_zone, carbon_intensity = "DE", None
        carbon_providers = parse_chain([spec_for("em", fake)], "test")

    rebuilt = Chain.from_config(Config, lambda state: None, previous=chain)
    assert rebuilt.wall is timeline.wall  # the same time: the kept value's age goes on
    assert rebuilt.select().intensity.provider == "electricitymaps"


def test_forecast_minimum_over_the_next_24_hours(fake, timeline):
    _, published = run_chain(build([spec_for("em", fake)]), timeline)
    low = published[-1].forecast_min
    hour = timeline.wall() - timeline.wall() % 3600
    assert low.grams_per_kwh == 300.0 and low.start == pytest.approx(hour + 5 * 3600)
    assert low.provider == "electricitymaps" and low.grid_zone == "DE"


class _Counter(Source):
    """A source whose energy counter grows 10 J per read."""

    name = "fake"

    def __init__(self):
        self.joules = 0.0

    def read(self, covered=frozenset()):
        self.joules += 10
        return SourceResult(Status(OK), [Reading("fake", "package-0", "rapl", self.joules,
                                                  self.clock(), component="cpu")])


def test_sampling_never_waits_on_a_hung_provider(fake, timeline, monkeypatch):
    """While the provider's request hangs (the fake API answers after 30 s, the timeout is
    60 s), the sampler runs 20 cycles and counts every joule: nothing in a cycle waits on the
    network. The 15 s limit is a hang guard, not a speed bound."""
    fake.mode["uk"] = "slow"
    monkeypatch.setattr(fake, "slow_seconds", 30.0)
    item = spec_for("uk", fake, timeout=60, refresh=600)
    clock = FakeClock()

    async def go():
        sampler = Sampler([_Counter()], 0.05, FALLBACK, 1.0, clock=clock)
        chain = Chain(build([item]), FALLBACK,
                      lambda s: setattr(sampler, "intensity", s.intensity),
                      clock=timeline.clock, wall=timeline.wall, sleep=timeline.sleep)
        chain.start()
        try:
            async with asyncio.timeout(15):
                while fake.count("uk") == 0:  # until the request has reached the API
                    clock.advance(1.0)
                    await sampler.step()
                before = sampler.cycles
                for _ in range(20):
                    clock.advance(1.0)
                    await sampler.step()
            assert sampler.cycles - before == 20
            assert chain.states[0].reason == "not_yet"  # the answer is still outstanding
            (series,) = sampler.snapshot.energy
            assert series.joules == pytest.approx(10.0 * (sampler.cycles - 1))
        finally:
            await chain.stop()
            sampler.close()
    asyncio.run(go())


# --- secrets -------------------------------------------------------------------------------------

def test_redaction_of_registered_secrets(caplog):
    secret = Secret("tok-abcdef-123456")
    assert repr(secret) == REDACTED and str(secret) == REDACTED
    assert redact("GET /x?token=tok-abcdef-123456 failed") == f"GET /x?token={REDACTED} failed"
    logger = logging.getLogger("test.secrets")
    handler = logging.Handler()
    records = []
    handler.emit = records.append
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.error("request with %s", "tok-abcdef-123456")
        try:
            raise RuntimeError("server said: bad token tok-abcdef-123456")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "tok-abcdef-123456" not in records[0].getMessage()
    assert "tok-abcdef-123456" not in records[1].getMessage() and records[1].exc_info is None


def test_configured_secrets_outlive_a_stream_of_short_lived_tokens():
    Secret("configured-api-key-777")
    for n in range(200):
        Secret(f"short-lived-token-{n:04d}", short_lived=True)
    text = redact("configured-api-key-777 short-lived-token-0000 short-lived-token-0199")
    assert text == f"{REDACTED} short-lived-token-0000 {REDACTED}"


# --- basis, plans, redirects -------------------------------------------------------------------

def test_each_provider_states_its_basis(fake):
    assert fetch(build([spec_for("em", fake)])[0]).intensity.basis == "lifecycle"
    assert fake.em_queries[-1]["emissionFactorType"] == "lifecycle"
    direct = fetch(build([spec_for("em", fake, basis="direct")])[0]).intensity
    assert direct.basis == "direct" and fake.em_queries[-1]["emissionFactorType"] == "direct"
    assert fetch(build([spec_for("uk", fake)])[0]).intensity.basis == "direct"
    assert fetch(build([spec_for("wt", fake)])[0]).intensity.basis == "direct"
    assert fetch(build([spec_for("json", fake)])[0]).intensity.basis == "unknown"
    assert fetch(build([spec_for("json", fake, basis="lifecycle")])[0]).intensity.basis == "lifecycle"
    assert fetch(build([{"type": "dataset"}])[0]).intensity.basis == "lifecycle"
    assert fetch(build([{"type": "static", "value": 100}])[0]).intensity.basis == "unknown"


def test_watttime_free_plan_reads_the_index_and_says_the_forecast_is_unavailable(fake, timeline):
    fake.wt_plan = "free"
    provider = build([spec_for("wt", fake, region="PJM_DC")])[0]
    got = fetch(provider, timeline)
    assert got.intensity is None and got.forecast == ()
    assert got.index == pytest.approx(0.73) and got.zone == "PJM_DC"
    assert "not in this WattTime plan (HTTP 403)" in got.note
    forecasts = sum(1 for api, _, path in fake.requests if path.endswith("/v3/forecast"))
    fetch(provider, timeline)  # the next refresh does not ask for the forecast again
    assert sum(1 for api, _, path in fake.requests if path.endswith("/v3/forecast")) == forecasts
    timeline.clock.advance(FORECAST_RECHECK_SECONDS)  # after six hours it asks again
    fetch(provider, timeline)
    assert sum(1 for api, _, path in fake.requests if path.endswith("/v3/forecast")) \
        == forecasts + 1
    # through the chain: up and ok (not auth), its index exported, the fallback in force
    _, published = run_chain([build([spec_for("wt", fake, region="PJM_DC")])[0]], timeline)
    last = published[-1]
    (state,) = last.providers
    assert state.up and state.reason == "ok" and "HTTP 403" in state.detail
    assert last.intensity == FALLBACK
    assert last.indexes == (("PJM_DC", "watttime", pytest.approx(0.73)),)


def test_watttime_free_plan_in_the_preview_region_reads_the_moer(fake):
    fake.wt_plan = "free"
    got = fetch(build([spec_for("wt", fake, region="CAISO_NORTH")])[0])
    assert got.intensity.grams_per_kwh == pytest.approx(453.592)


def test_electricitymaps_redirects_on_the_same_host_only(fake):
    moved = fetch(build([spec_for("em", fake, url=f"{fake.url}/em-moved/v3", forecast=False)])[0])
    assert moved.intensity.grams_per_kwh == 300.0
    answered = len(fake.em_queries)
    with pytest.raises(ProviderError) as err:
        fetch(build([spec_for("em", fake, url=f"{fake.url}/em-away/v3", forecast=False)])[0])
    assert err.value.reason == "http_error" and not err.value.retryable
    assert "another host; not followed with the credentials" in err.value.detail
    assert len(fake.em_queries) == answered  # nothing reached the other host's endpoint
