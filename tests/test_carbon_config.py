"""carbon.providers validation, cloud regions, the file provider, embodied carbon and what
the collector renders from them."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import time
from importlib import resources
from types import SimpleNamespace

import pytest

from exporter import cli
from exporter.carbon import Intensity, grid_dataset
from exporter.carbon.embodied import Embodied, embodied_table, gpu_row
from exporter.carbon.providers import ProviderError
from exporter.carbon.providers.chain import ForecastMin, GridState, ProviderStatus, build_providers
from exporter.carbon.providers.file import FileProvider
from exporter.carbon.providers.spec import parse_chain
from exporter.carbon.zones import cloud_regions, resolve_zone
from exporter.collector import SnapshotCollector
from exporter.config import ConfigError, resolve
from exporter.sampler import Snapshot
from exporter.sources import GpuInfo


def error_of(flags=None, config_text=None, tmp_path=None, environ=None) -> str:
    path = None
    if config_text is not None:
        path = tmp_path / "config.yml"
        path.write_text(config_text)
    with pytest.raises(ConfigError) as err:
        config = resolve(flags or {}, str(path) if path else None, environ or {})
        build_providers(config)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- carbon.providers ----------------------------------------------------------------------------

def test_flag_takes_comma_separated_types():
    config = resolve({"carbon.providers": "ukgrid, dataset"}, None, {})
    assert [s.type for s in config.carbon_providers] == ["ukgrid", "dataset"]
    assert config.carbon_providers[0].refresh == 900 and config.carbon_providers[0].retries == 2


def test_config_file_list_with_options(tmp_path):
    config_file = tmp_path / "c.yml"
    config_file.write_text("carbon:\n  providers:\n"
                           "    - {type: ukgrid, region: 13, refresh: 5m, timeout: 2s, retries: 4}\n"
                           "    - {type: http_json, name: utility, url: 'https://x.example/v', field: a.b}\n"
                           "    - dataset\n")
    specs = resolve({}, str(config_file), {}).carbon_providers
    assert (specs[0].refresh, specs[0].timeout, specs[0].retries, specs[0].option("region")) == (300, 2, 4, 13)
    assert specs[1].name == "utility" and specs[1].option("field") == "a.b"


@pytest.mark.parametrize("text,expected", [
    ("carbon:\n  providers: [{type: nope}]\n", "carbon.providers[0].type: 'nope' must be one of"),
    ("carbon:\n  providers: [{type: ukgrid, timeout: -1}]\n", "carbon.providers[0].timeout: -1 must be greater than 0"),
    ("carbon:\n  providers: [{type: ukgrid, region: 40}]\n", "carbon.providers[0].region: 40 must be at most 17"),
    ("carbon:\n  providers: [{type: electricitymaps, token: abc}]\n", "unknown key token (secrets are read from files"),
    ("carbon:\n  providers: [{type: http_json, url: 'http://x'}]\n", "carbon.providers[0]: 'field' is required"),
    ("carbon:\n  providers: [{type: static, value: 5000}]\n", "carbon.providers[0].value: 5000 must be at most 2000"),
    ("carbon:\n  providers: [ukgrid, ukgrid]\n", "two providers are named 'ukgrid'"),
    ("carbon:\n  providers: [{type: ukgrid, refresh: soon}]\n",
     "carbon.providers[0].refresh: 'soon' is not a duration"),
    ("carbon:\n  providers: 7\n", "carbon.providers: 7 must be"),
])
def test_bad_provider_config_names_the_field(tmp_path, text, expected):
    message = error_of(config_text=text, tmp_path=tmp_path)
    assert expected in message and message.startswith("config file ")


def test_missing_secret_names_the_setting_not_a_value(tmp_path):
    message = error_of(config_text="carbon:\n  zone: DE\n  providers: [{type: electricitymaps, "
                                   "token_env: EM_TOKEN_NOT_SET}]\n", tmp_path=tmp_path)
    assert message == "provider electricitymaps.token_env: environment variable EM_TOKEN_NOT_SET is not set"
    message = error_of({"carbon.providers": "electricitymaps", "carbon.zone": "DE"})
    assert "no API token" in message and "CARBON_EXPORTER_ELECTRICITYMAPS_TOKEN" in message
    message = error_of(config_text="carbon:\n  providers: [{type: watttime, region: CAISO_NORTH, "
                                   f"username_file: {tmp_path}/none, password_env: X}}]\n",
                       tmp_path=tmp_path)
    assert message.startswith("provider watttime.username_file: cannot read")


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    config_file = tmp_path / "c.yml"
    config_file.write_text("carbon:\n  providers: [{type: file}]\n")
    assert cli.main([f"--config.file={config_file}", "--web.listen-address=127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"carbon-exporter: error: config file {config_file}: carbon.providers[0]: 'path' is required"


# --- zones ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,country,em_zone,wt", [
    ("aws:eu-west-1", "IE", "IE", "IE"),
    ("AWS:us-east-1", "US", "US-MIDA-PJM", "PJM_DC"),
    ("gcp:europe-west4", "NL", "NL", "NL"),
    ("azure:westus3", "US", "US-SW-AZPS", "AZPS"),
    ("azure:westus", "US", "US-CAL-CISO", "CAISO_NORTH"),  # California, not Washington
    ("gcp:northamerica-south1", "MX", None, None),
    ("US-CAL-CISO", "US", "US-CAL-CISO", None),
    ("de", "DE", "DE", None),
    ("", "WORLD", None, None),
])
def test_zone_resolution(text, country, em_zone, wt):
    zone = resolve_zone(text)
    assert (zone.country, zone.em_zone, zone.wt_region) == (country, em_zone, wt)


def test_every_cloud_region_row_names_its_source_and_a_consistent_zone():
    rows = cloud_regions()
    counts = {p: sum(1 for k in rows if k.startswith(p + ":")) for p in ("aws", "gcp", "azure")}
    assert counts == {"aws": 33, "gcp": 42, "azure": 26}  # as exporter/data/README.md says
    for key, row in rows.items():
        assert row.source.startswith("location: "), key
        assert "real-time-cloud" not in row.source and "Green Software" not in row.source, key
        if row.em_zone:
            assert row.em_zone[:2] == row.country, key


def test_unknown_cloud_region_is_a_clear_error():
    with pytest.raises(ConfigError, match="aws:mars-1.*not in the bundled cloud region table"):
        resolve_zone("aws:mars-1")
    with pytest.raises(ConfigError, match="cloud must be one of aws, gcp, azure"):
        resolve_zone("ibm:eu-de")


def test_every_cloud_region_has_a_dataset_country():
    countries = grid_dataset()
    rows = cloud_regions()
    assert len(rows) >= 90 and {r.provider for r in rows.values()} == {"aws", "gcp", "azure"}
    for key, row in rows.items():
        assert row.country in countries, key
        assert not row.em_zone or row.em_zone[:2] == row.country, key


# --- file provider -------------------------------------------------------------------------------

def fetch_file(path, provider=None):
    if provider is None:
        spec = parse_chain([{"type": "file", "path": str(path)}], "test")[0]
        provider = FileProvider(spec, resolve_zone("FR"))
    return provider, asyncio.run(provider.fetch(None))


def test_file_timestamped_csv_and_reread_on_change(tmp_path):
    now = time.time()
    path = tmp_path / "grid.csv"
    path.write_text("timestamp,grams_per_kwh\n"
                    f"{now - 7200:.0f},90\n{now - 600:.0f},80\n{now + 3600:.0f},20\n{now + 7200:.0f},60\n")
    provider, got = fetch_file(path)
    assert got.intensity.grams_per_kwh == 80 and 599 <= got.intensity.age() < 700
    assert [p.grams_per_kwh for p in got.forecast] == [80, 20, 60]
    path.write_text(f"timestamp,grams_per_kwh\n{now - 5:.0f},55\n")
    os.utime(path, (now + 10, now + 10))  # a new mtime even within the clock's resolution
    assert fetch_file(path, provider)[1].intensity.grams_per_kwh == 55


def test_file_json_hourly_profile(tmp_path):
    path = tmp_path / "profile.json"
    profile = [100 + h for h in range(24)]
    path.write_text(json.dumps({"hourly": profile}))
    _, got = fetch_file(path)
    hour = int(time.time() // 3600) % 24
    assert got.intensity.grams_per_kwh == 100 + hour and got.intensity.grid_zone == "FR"
    assert len(got.forecast) == 24 and min(p.grams_per_kwh for p in got.forecast) == 100


@pytest.mark.parametrize("name,text,reason", [
    ("a.json", '[{"timestamp": 1, "grams_per_kwh": -4}]', "invalid"),
    ("a.json", '{"hourly": [1, 2]}', "invalid"),
    ("a.json", "{not json", "invalid"),
    ("a.csv", "time,value\n1,2\n", "invalid"),
    ("a.csv", "timestamp,grams_per_kwh\n4102444800,50\n", "no_data"),  # only in 2100
    ("missing.csv", None, "no_data"),
])
def test_file_bad_contents(tmp_path, name, text, reason):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ProviderError) as err:
        fetch_file(path)
    assert err.value.reason == reason


# --- embodied ------------------------------------------------------------------------------------

def embodied_config(**overrides):
    values = dict(embodied_enabled=True, embodied_gpu_kgco2e=None, embodied_server_kgco2e=None,
                  embodied_server_model=None, embodied_lifetime=4 * 365 * 86400.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def gpu(device, name):
    return GpuInfo(device, "GPU-x", name, "550", "0000:01:00.0", 700.0)


def test_embodied_amortisation():
    embodied = Embodied(embodied_config(embodied_server_model="gpu-server", embodied_lifetime=1000.0))
    gpus = [gpu("gpu-0", "NVIDIA A100-SXM4-80GB"), gpu("gpu-1", "NVIDIA H100 80GB HBM3")]
    rate = embodied.update(gpus, 2.0)
    # 2500 kg server + 2 x 150 kg GPUs over 1000 s = 2800 g/s
    assert rate == pytest.approx(2800.0)
    assert embodied.totals == {("other", "server"): pytest.approx(5000.0),
                               ("gpu", "gpu-0"): pytest.approx(300.0), ("gpu", "gpu-1"): pytest.approx(300.0)}
    # the rates are worked out again when the GPUs change (and kept while they stay)
    assert embodied.rates(gpus[:1]) == {("other", "server"): pytest.approx(2500.0),
                                         ("gpu", "gpu-0"): pytest.approx(150.0)}
    assert embodied.update(list(gpus), 1.0) == pytest.approx(2800.0)
    embodied.configure(embodied_config(embodied_enabled=False))
    assert embodied.update(gpus, 5.0) == 0 and embodied.totals[("other", "server")] == pytest.approx(7500.0)


def test_embodied_table_rows_have_sources():
    for row in embodied_table():
        assert row.kind in ("gpu", "server") and row.kgco2e > 0 and "arXiv" in row.source
    assert gpu_row("NVIDIA A100-PCIE-40GB").name == "nvidia-a100"
    assert gpu_row("Tesla T4").name == "gpu-generic"
    with pytest.raises(ConfigError, match="embodied.server_model: 'dell' is not a server row"):
        Embodied(embodied_config(embodied_server_model="dell"))


def test_collector_renders_embodied_forecast_index_and_providers():
    grid = GridState(
        Intensity(123.0, "CAISO_NORTH", "watttime", "marginal", time.time(), "direct"),
        ForecastMin("CAISO_NORTH", "watttime", 99.0, 1_800_000_000.0),
        (("CAISO_NORTH", "watttime", 0.73),),
        (ProviderStatus("watttime", "watttime", "x", True, "ok", "", None, True),
         ProviderStatus("em", "electricitymaps", "y", False, "auth", "HTTP 401", None, False)))
    snap = Snapshot(timestamp=time.time(), intensity=grid.intensity, grid=grid,
                    embodied=(("gpu", "gpu-0", 12.5),), embodied_grams_per_second=0.001)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in SnapshotCollector(lambda: snap).collect() for s in family.samples}

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    watttime = {"grid_zone": "CAISO_NORTH", "provider": "watttime"}
    assert value("carbon_emissions_grams_total", component="gpu", device="gpu-0", scope="embodied") == 12.5
    assert value("carbon_emissions_grams_per_second", scope="embodied") == 0.001
    assert value("carbon_grid_intensity_forecast_min_grams_per_kwh", **watttime) == 99.0
    assert value("carbon_grid_intensity_forecast_min_start_timestamp_seconds", **watttime) == 1.8e9
    assert value("carbon_grid_intensity_index_ratio", **watttime) == 0.73
    assert value("carbon_grid_provider_up", provider="em") == 0
    assert value("carbon_grid_provider_status_info", provider="em", reason="auth") == 1
    assert value("carbon_grid_intensity_grams_per_kwh", kind="marginal", basis="direct", **watttime) == 123.0


def test_bundled_csvs_parse_with_comment_headers():
    for name in ("cloud_regions.csv", "embodied.csv"):
        text = resources.files("exporter.data").joinpath(name).read_text("utf-8")
        rows = list(csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#")))
        assert rows and all(all(v is not None for v in r.values()) for r in rows), name
