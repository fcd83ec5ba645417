"""The real exporter process with live intensity providers (a fake of their APIs on
127.0.0.1): emissions integrate the intensity in force at each sample, SIGHUP rebuilds the
chain, embodied carbon accrues, and no secret reaches logs, /metrics or the landing page."""

from __future__ import annotations

import json
import signal

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import metrics
from tests.fake_grid import FakeGrid
from tests.fixtures import PowercapTree, ProcfsTree
from tests.harness import ExporterProcess, http_get, wait_for

JOULES_PER_KWH = 3.6e6


@pytest.fixture
def fake():
    grid = FakeGrid()
    yield grid
    grid.close()


def value(text: str, name: str, **labels) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def start(tmp_path, config: dict, extra=(), env=None, nvml_state=None) -> tuple[ExporterProcess, PowercapTree]:
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone("intel-rapl:0", "package-0", 1_000_000)
    procfs = ProcfsTree(tmp_path / "proc")
    config_file = tmp_path / "carbon.yml"
    config_file.write_text(yaml.safe_dump(config))
    args = [f"--config.file={config_file}", f"--path.sysfs={tree.sysfs}", f"--path.procfs={procfs.procfs}",
            "--sample.interval=250ms", "--no-collector.cpu-model", "--no-collector.dram-model", *extra]
    if nvml_state is None:
        args.append("--no-collector.nvml")
    exporter = ExporterProcess(tmp_path, args, env=env, fake_nvml_state=nvml_state)
    exporter.wait_ready()
    return exporter, tree


def test_emissions_integrate_the_intensity_in_force_at_each_sample(tmp_path, fake):
    feed = {"type": "http_json", "name": "feed", "url": f"{fake.url}/json", "field": "reading.co2",
            "time_field": "reading.at", "token_env": "FEED_TOKEN", "refresh": 0.2, "timeout": 1}
    config = {"carbon": {"zone": "DE", "providers": [feed]}}
    exporter, tree = start(tmp_path, config, env={"FEED_TOKEN": fake.json_token})
    try:
        def in_force(provider, grams):
            return lambda: value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh",
                                 provider=provider) == grams

        def energy(joules):
            return lambda: value(exporter.metrics(), "carbon_energy_joules_total",
                                 device="package-0") == pytest.approx(joules)

        wait_for(in_force("feed", 400.0), 10, "the feed's 400 g/kWh in force")
        wait_for(energy(0.0), 10, "the RAPL baseline")
        tree.advance("intel-rapl:0", 720.0)  # < 5 kW over one 0.25 s interval
        wait_for(energy(720.0), 10, "720 J counted")
        fake.value["json"] = 100.0  # intensity changes mid-run
        wait_for(in_force("feed", 100.0), 10, "the new 100 g/kWh in force")
        tree.advance("intel-rapl:0", 360.0)
        wait_for(energy(1080.0), 10, "1080 J counted")
        text = exporter.metrics()
        expected = 720 / JOULES_PER_KWH * 400 + 360 / JOULES_PER_KWH * 100  # 0.08 + 0.01 g
        assert value(text, "carbon_emissions_grams_total", device="package-0",
                     scope="operational") == pytest.approx(expected, rel=1e-9)
        age = value(text, "carbon_grid_intensity_age_seconds", provider="feed")
        assert age is not None and 0 <= age < 5

        # SIGHUP rebuilds the chain: the feed fails over to the UK grid API; counters keep going
        config["carbon"]["providers"] = [
            {"type": "ukgrid", "url": f"{fake.url}/uk", "refresh": 0.2, "timeout": 1}]
        (tmp_path / "carbon.yml").write_text(yaml.safe_dump(config))
        exporter.signal(signal.SIGHUP)
        wait_for(in_force("ukgrid", 200.0), 10, "ukgrid in force after SIGHUP")
        tree.advance("intel-rapl:0", 360.0)
        wait_for(energy(1440.0), 10, "1440 J counted")
        text = exporter.metrics()
        expected += 360 / JOULES_PER_KWH * 200
        assert value(text, "carbon_emissions_grams_total", device="package-0",
                     scope="operational") == pytest.approx(expected, rel=1e-9)
        assert value(text, "carbon_grid_intensity_forecast_min_grams_per_kwh", provider="ukgrid") == 200.0
        assert value(text, "carbon_grid_provider_up", provider="ukgrid") == 1
        assert value(text, "carbon_grid_provider_status_info", provider="ukgrid", reason="ok") == 1
        assert value(text, "carbon_grid_provider_up", provider="feed") is None
    finally:
        assert exporter.stop() == 0


def test_embodied_carbon_accrues_per_gpu_and_server(tmp_path, fake):
    state = tmp_path / "nvml.json"
    state.write_text(json.dumps({"driver": "550.54.15", "gpus": [
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": "GPU-a", "pci": "00000000:18:00.0",
         "energy_mj": 1000, "power_mw": 300000, "limit_mw": 400000, "error": None, "mig": False,
         "processes": []}]}))
    config = {"embodied": {"server_model": "gpu-server", "lifetime": "1000s"}}
    exporter, _ = start(tmp_path, config, nvml_state=state)
    try:
        def embodied(device):
            return value(exporter.metrics(), "carbon_emissions_grams_total", device=device,
                         scope="embodied")
        wait_for(lambda: embodied("gpu-0"), 10, "GPU embodied series")
        text = exporter.metrics()
        # 2500 kg + 150 kg over 1000 s = 2650 g/s
        assert value(text, "carbon_emissions_grams_per_second", scope="embodied") == pytest.approx(2650.0)
        # the growth over the exporter's own sample times (one scrape gives both), so a slow
        # scrape on a loaded machine does not count
        stamp = "carbon_exporter_last_sample_timestamp_seconds"

        def gpu_and_stamp() -> tuple[float, float]:
            text = exporter.metrics()
            return (value(text, "carbon_emissions_grams_total", device="gpu-0", scope="embodied"),
                    value(text, stamp))
        first_gpu, first_at = gpu_and_stamp()

        def a_second_later() -> tuple[float, float] | None:
            gpu, at = gpu_and_stamp()
            return (gpu, at) if at >= first_at + 1 else None
        last_gpu, last_at = wait_for(a_second_later, 15, "a second of samples")
        assert (last_gpu - first_gpu) / (last_at - first_at) == pytest.approx(150.0, rel=0.1)
        assert embodied("server") > embodied("gpu-0")
    finally:
        assert exporter.stop() == 0


def test_failing_providers_keep_sampling_and_never_leak_secrets(tmp_path, fake):
    token_file = tmp_path / "em.token"
    token_file.write_text(fake.token + "\n")
    fake.mode["em"] = "500"
    fake.mode["wt"] = "slow"
    fake.slow_seconds = 3.0
    providers = [
        {"type": "electricitymaps", "url": f"{fake.url}/em/v3", "token_file": str(token_file),
         "refresh": 0.3, "timeout": 0.5, "retries": 1, "backoff": 0.05},
        {"type": "watttime", "url": f"{fake.url}/wt", "region": "CAISO_NORTH", "refresh": 0.3,
         "timeout": 0.5, "retries": 0},
        {"type": "http_json", "name": "feed", "url": f"{fake.url}/json", "field": "reading.co2",
         "unit_field": "reading.unit", "refresh": 0.3, "timeout": 1},
    ]
    env = {"CARBON_EXPORTER_WATTTIME_USERNAME": fake.username,
           "CARBON_EXPORTER_WATTTIME_PASSWORD": fake.password,
           "CARBON_EXPORTER_JSON_TOKEN_UNUSED": fake.json_token}
    exporter, _ = start(tmp_path, {"carbon": {"zone": "aws:us-west-1", "providers": providers}},
                        extra=["--log.level=debug"], env=env)
    try:
        wait_for(lambda: fake.count("em") >= 4 and fake.count("wt") >= 2, 15, "providers retrying")
        text = exporter.metrics()
        assert value(text, "carbon_grid_provider_up", provider="electricitymaps") == 0
        assert value(text, "carbon_grid_provider_status_info", provider="electricitymaps", reason="http_error") == 1
        assert value(text, "carbon_grid_provider_up", provider="watttime") == 0
        assert value(text, "carbon_grid_provider_status_info", provider="watttime", reason="timeout") == 1
        # the feed wants a token it is not given: 401, so the dataset (US) is in force
        assert value(text, "carbon_grid_provider_up", provider="feed") == 0
        assert value(text, "carbon_grid_provider_status_info", provider="feed", reason="auth") == 1
        assert value(text, "carbon_grid_intensity_grams_per_kwh", provider="dataset", grid_zone="US")
        # the sampler keeps sampling while providers fail and hang (10 s: a hang guard)
        first = value(exporter.metrics(), "carbon_exporter_last_sample_timestamp_seconds")
        wait_for(lambda: value(exporter.metrics(),
                               "carbon_exporter_last_sample_timestamp_seconds") >= first + 0.5,
                 10, "new samples")
        assert http_get(exporter.url + "/healthz")[0] == 200
        landing = http_get(exporter.url + "/")[2].decode()
        assert "electricitymaps" in landing and "http_error" in landing
        fake.mode["em"] = fake.mode["wt"] = "ok"  # now the token is accepted and used
        wait_for(lambda: value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh",
                               provider="electricitymaps", grid_zone="US-CAL-CISO") == 300.0,
                 10, "Electricity Maps in force")
        wait_for(lambda: value(exporter.metrics(), "carbon_grid_intensity_index_ratio",
                               provider="watttime") == 0.73, 10, "the WattTime index")
        # the metrics only live providers produce, as metrics.py defines them
        families = {f.name: f for f in text_string_to_metric_families(exporter.metrics())}
        for spec in (metrics.GRID_FORECAST_MIN, metrics.GRID_FORECAST_MIN_START, metrics.GRID_INDEX,
                     metrics.GRID_PROVIDER_UP):
            family = families[spec.family_name]
            assert (family.type, family.documentation) == (spec.type, spec.help)
            assert family.samples and all(set(x.labels) == set(spec.labels) for x in family.samples)
        landing = http_get(exporter.url + "/")[2].decode()
        everything = exporter.output() + exporter.metrics() + landing
        for secret in (fake.token, fake.password, fake.wt_token, fake.json_token):
            assert secret not in everything
        assert "<redacted>" not in exporter.metrics()
    finally:
        assert exporter.stop() == 0


def test_fallback_that_changes_basis_shows_in_metrics_and_log(tmp_path, fake):
    """Electricity Maps (lifecycle CO2e) fails; the UK API (direct CO2) takes over: the series
    says so in its basis label, and the log warns that values before and after do not compare."""
    em = {"type": "electricitymaps", "url": f"{fake.url}/em/v3", "token_env": "EM_TOKEN",
          "zone": "GB", "refresh": 0.2, "timeout": 1, "retries": 0, "max_age": 1}
    uk = {"type": "ukgrid", "url": f"{fake.url}/uk", "refresh": 0.2, "timeout": 1}
    config = {"carbon": {"zone": "GB", "providers": [em, uk]}}
    exporter, _tree = start(tmp_path, config, env={"EM_TOKEN": fake.token})
    try:
        def in_force(provider: str, basis: str):
            return lambda: value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh",
                                 provider=provider, basis=basis, kind="average") is not None

        wait_for(in_force("electricitymaps", "lifecycle"), 10, "Electricity Maps in force")
        fake.mode["em"] = "500"
        wait_for(in_force("ukgrid", "direct"), 10, "the UK API (direct) in force")
        text = exporter.metrics()
        assert value(text, "carbon_grid_intensity_grams_per_kwh", provider="electricitymaps") is None
        page = http_get(exporter.url + "/")[2].decode()
        assert "provider ukgrid, average, basis direct" in page
    finally:
        assert exporter.stop() == 0
    log = exporter.output()
    assert "the basis changes from average lifecycle to average direct" in log


def test_watttime_free_plan_is_up_with_its_index_not_auth(tmp_path, fake):
    """A free WattTime account outside the preview region: the provider is up (reason ok, not
    auth), its index is exported, no MOER is in force (the dataset is), and the landing page
    says the forecast is not in the plan."""
    fake.wt_plan = "free"
    wt = {"type": "watttime", "url": f"{fake.url}/wt", "region": "PJM_DC", "refresh": 0.3,
          "timeout": 1, "username_env": "WT_USER", "password_env": "WT_PASS"}
    config = {"carbon": {"zone": "US", "providers": [wt]}}
    exporter, _tree = start(tmp_path, config,
                            env={"WT_USER": fake.username, "WT_PASS": fake.password})
    try:
        wait_for(lambda: value(exporter.metrics(), "carbon_grid_intensity_index_ratio",
                               provider="watttime") == pytest.approx(0.73), 10, "the index")
        text = exporter.metrics()
        assert value(text, "carbon_grid_provider_up", provider="watttime") == 1
        assert value(text, "carbon_grid_provider_status_info", provider="watttime",
                     reason="ok") == 1
        assert value(text, "carbon_grid_provider_status_info", provider="watttime",
                     reason="auth") is None
        assert value(text, "carbon_grid_intensity_grams_per_kwh", provider="dataset",
                     basis="lifecycle") is not None
        assert value(text, "carbon_grid_intensity_forecast_min_grams_per_kwh",
                     provider="watttime") is None
        page = http_get(exporter.url + "/")[2].decode()
        assert "not in this WattTime plan (HTTP 403)" in page
    finally:
        assert exporter.stop() == 0
