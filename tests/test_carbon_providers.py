"""Every intensity provider against a fake of its API on 127.0.0.1: the documented answer,
then every way it can misbehave. Then the chain: fallback, cached values ageing, retries,
Retry-After, and a sampler that keeps its clock while a provider hangs."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from exporter.carbon import Intensity
from exporter.carbon.providers import LBS_PER_MWH_TO_G_PER_KWH, ProviderError
from exporter.carbon.providers.chain import Chain
from exporter.carbon.providers.spec import provider_types
from exporter.carbon.providers.spec import parse_chain
from exporter.carbon.secrets import REDACTED, RedactingFilter, Secret, redact
from exporter.carbon.zones import resolve_zone
from exporter.ledger import Reading
from exporter.sampler import Sampler
from exporter.sources import OK, Source, SourceResult, Status
from tests.fake_grid import FakeGrid

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
    monkeypatch.setenv("TEST_EM_TOKEN", fake.token)
    monkeypatch.setenv("TEST_WT_USER", fake.username)
    monkeypatch.setenv("TEST_WT_PASSWORD", fake.password)
    monkeypatch.setenv("TEST_JSON_TOKEN", fake.json_token)


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


def fetch(provider):
    async def go():
        chain = Chain([provider], FALLBACK, lambda state: None)
        async with aiohttp.ClientSession() as session:
            chain._session = session
            return await chain._attempt(chain.states[0])
    return asyncio.run(go())


# --- each provider, documented shape -----------------------------------------------------------

def test_electricitymaps_latest_and_forecast(fake):
    got = fetch(build([spec_for("em", fake)], zone="aws:us-east-1")[0])
    assert got.intensity.grams_per_kwh == 300.0
    assert got.intensity.grid_zone == "US-MIDA-PJM"  # resolved through cloud_regions.csv
    assert got.intensity.kind == "average" and got.intensity.provider == "electricitymaps"
    assert got.intensity.age() < 5
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


def test_http_json_field_path_unit_and_time(fake):
    fake.data_time = time.time() - 120
    got = fetch(build([spec_for("json", fake, name="plant", zone="plant-7")])[0])
    assert got.intensity.grams_per_kwh == 400.0
    assert got.intensity.grid_zone == "plant-7" and got.intensity.provider == "plant"
    assert 119 <= got.intensity.age() < 130


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

def run_chain(providers, seconds: float, during=None, tick: float = 0.05):
    """Run a chain for `seconds`; `during(chain)` is awaited meanwhile; returns the chain."""
    published = []

    async def go():
        chain = Chain(providers, FALLBACK, published.append, tick=tick)
        chain.start()
        try:
            if during is not None:
                await during(chain)
            else:
                await asyncio.sleep(seconds)
        finally:
            await chain.stop()
        return chain
    return asyncio.run(go()), published


def test_fallback_moves_down_the_chain(fake):
    fake.mode["em"] = "401"
    chain, published = run_chain(build([spec_for("em", fake), spec_for("uk", fake)]), 0.5)
    last = published[-1]
    assert last.intensity.provider == "ukgrid" and last.intensity.grams_per_kwh == 200.0
    states = {p.name: p for p in last.providers}
    assert states["electricitymaps"].reason == "auth" and not states["electricitymaps"].up
    assert states["ukgrid"].in_force


def test_everything_down_falls_back_to_the_dataset(fake):
    fake.mode["em"] = fake.mode["uk"] = "500"
    _, published = run_chain(build([spec_for("em", fake), spec_for("uk", fake)]), 0.4)
    assert published[-1].intensity == FALLBACK


def test_last_good_value_stays_with_growing_age_then_expires(fake):
    items = [spec_for("em", fake, max_age=1.5), spec_for("uk", fake)]
    ages = []

    async def during(chain):
        await asyncio.sleep(0.4)
        assert chain.select().intensity.provider == "electricitymaps"
        fake.mode["em"] = "500"
        for _ in range(3):
            await asyncio.sleep(0.3)
            state = chain.select()
            assert state.intensity.provider == "electricitymaps"  # kept despite the errors
            assert state.intensity.grams_per_kwh == 300.0
            ages.append(state.intensity.age())
        await asyncio.sleep(1.2)  # past max_age: the next provider takes over
        assert chain.select().intensity.provider == "ukgrid"
        errors = {p.name: p.reason for p in chain.select().providers}
        assert errors["electricitymaps"] == "http_error"

    run_chain(build(items), 0, during)
    assert ages == sorted(ages) and ages[-1] - ages[0] >= 0.5


def test_retries_back_off_then_wait_for_the_next_refresh(fake):
    fake.mode["uk"] = "500"
    item = spec_for("uk", fake, retries=2, backoff=0.05, refresh=5)
    run_chain(build([item]), 0.6)
    stamps = [t for api, t, _ in fake.requests if api == "uk"]
    assert len(stamps) == 3  # first try + 2 retries, then nothing until the 5 s refresh
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert 0.02 <= gaps[0] <= 0.2 and 0.05 <= gaps[1] <= 0.3  # 0.05 then 0.1, +-50% jitter


def test_retry_after_is_honoured(fake):
    fake.mode["uk"] = "429"
    fake.retry_after = "1"
    item = spec_for("uk", fake, retries=3, backoff=0.01, refresh=0.1)
    run_chain(build([item]), 1.5)
    stamps = [t for api, t, _ in fake.requests if api == "uk"]
    assert 2 <= len(stamps) <= 3, stamps
    assert all(b - a >= 0.95 for a, b in zip(stamps, stamps[1:]))


def test_cache_survives_a_rebuild_with_the_same_spec(fake):
    providers = build([spec_for("em", fake)])
    chain, _ = run_chain(providers, 0.3)
    assert chain.states[0].fetched is not None

    class Config:
        carbon_zone, carbon_intensity = "DE", None
        carbon_providers = parse_chain([spec_for("em", fake)], "test")

    rebuilt = Chain.from_config(Config, lambda state: None, previous=chain)
    assert rebuilt.select().intensity.provider == "electricitymaps"


def test_forecast_minimum_over_the_next_24_hours(fake):
    _, published = run_chain(build([spec_for("em", fake)]), 0.4)
    low = published[-1].forecast_min
    hour = time.time() - time.time() % 3600
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
                                                  time.monotonic(), component="cpu")])


def test_sampling_never_waits_on_a_hung_provider(fake):
    fake.mode["uk"] = "slow"
    fake.slow_seconds = 1.0
    item = spec_for("uk", fake, timeout=5, refresh=10)

    async def go():
        sampler = Sampler([_Counter()], 0.05, FALLBACK, 1.0)
        chain = Chain(build([item]), FALLBACK, lambda s: setattr(sampler, "intensity", s.intensity))
        chain.start()
        stop = asyncio.Event()
        task = asyncio.create_task(sampler.run(stop))
        await asyncio.sleep(0.8)  # the provider is still waiting for its answer
        stop.set()
        await task
        await chain.stop()
        sampler.close()
        return sampler.cycles
    cycles = asyncio.run(go())
    assert cycles >= 12, cycles  # 0.8 s / 0.05 s = 16 with nothing waiting on the network


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


def test_watttime_free_plan_reads_the_index_and_says_the_forecast_is_unavailable(fake):
    fake.wt_plan = "free"
    provider = build([spec_for("wt", fake, region="PJM_DC")])[0]
    got = fetch(provider)
    assert got.intensity is None and got.forecast == ()
    assert got.index == pytest.approx(0.73) and got.zone == "PJM_DC"
    assert "not in this WattTime plan (HTTP 403)" in got.note
    forecasts = sum(1 for api, _, path in fake.requests if path.endswith("/v3/forecast"))
    fetch(provider)  # the next refresh does not ask for the forecast again
    assert sum(1 for api, _, path in fake.requests if path.endswith("/v3/forecast")) == forecasts
    # through the chain: up and ok (not auth), its index exported, the fallback in force
    _, published = run_chain([build([spec_for("wt", fake, region="PJM_DC")])[0]], 0.4)
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
