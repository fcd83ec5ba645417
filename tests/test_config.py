"""Settings: every config error is exit code 2 with one line naming the field; precedence;
durations; SIGHUP reload and clean shutdown of the real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import SETTINGS, ConfigError, parse_duration, resolve
from tests.fixtures import ProcfsTree, amd_one_socket
from tests.harness import ROOT, ExporterProcess, wait_for


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
    env.update(extra)
    return env


# --- through the real command line: exit code and the one line --------------------------------

def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CLI_CASES = [
    # (args or a function of tmp_path giving args, env, words the line must contain)
    (["--carbon.pue=0.5"], {}, ["--carbon.pue", "at least 1"]),
    (["--sample.interval=0"], {}, ["--sample.interval", "at least 0.01s"]),
    (["--carbon.zone=XX"], {}, ["carbon.zone", "'XX'"]),
    (["--no-such-flag"], {}, ["--no-such-flag"]),
    (lambda tmp: ["--config.file=" + _file(tmp, "unknown.yml", "carbon:\n  pue: 1.2\n  colour: green\n")],
     {}, ["unknown key carbon.colour"]),
]


def test_cli_config_errors_exit_2_with_one_line(tmp_path):
    """Started side by side: each exits before binding a port."""
    procs = []
    for args, env, words in CLI_CASES:
        argv = args(tmp_path) if callable(args) else args
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:1", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(**env), cwd=ROOT)
        procs.append((argv, env, words, proc))
    for argv, env, words, proc in procs:
        out, err = proc.communicate(timeout=30)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 2, (argv, env, err)
        assert out == b""
        assert len(lines) == 1, (argv, lines)
        assert lines[0].startswith("carbon-exporter: error: ")
        for word in words:
            assert word in lines[0], (argv, lines[0])


# --- through resolve(): the rest of the errors --------------------------------------------------

RESOLVE_CASES = [
    # (flags, config file text or None, environment, words)
    ({}, "carbon:\n  pue: 1.2\n  colour: green\n", {}, ["unknown key carbon.colour"]),
    ({}, "nonsense:\n  a: 1\n", {}, ["unknown key nonsense"]),
    ({}, "carbon:\n  pue: high\n", {}, ["carbon.pue", "'high' must be a number"]),
    ({}, "collector:\n  rapl: maybe\n", {}, ["collector.rapl", "true or false"]),
    ({}, "carbon:\n  intensity: -5\n", {}, ["carbon.intensity", "at least 0"]),
    ({}, "carbon:\n  pue: 0.9\n", {}, ["carbon.pue", "at least 1"]),
    ({}, "carbon:\n  pue: .nan\n", {}, ["carbon.pue", "finite"]),
    ({}, "sample:\n  interval: 0\n", {}, ["sample.interval", "at least 0.01s"]),
    ({}, "sample:\n  interval: -1\n", {}, ["sample.interval", "at least 0.01s"]),
    ({}, "kubernetes:\n  timeout: 0\n", {}, ["kubernetes.timeout", "greater than 0"]),
    ({}, "sample:\n  interval: 1h2x\n", {}, ["sample.interval", "not a duration"]),
    ({}, "sample:\n  interval: .inf\n", {}, ["sample.interval", "not a duration"]),
    ({}, "log:\n  level: loud\n", {}, ["log.level", "one of debug, info, warn, error"]),
    ({}, "web:\n  telemetry_path: metrics\n", {}, ["web.telemetry_path", "must start with /"]),
    ({}, "web:\n  listen_address: localhost\n", {}, ["web.listen_address", "[host]:port"]),
    ({}, "carbon: 5\n", {}, ["carbon must be a mapping"]),
    ({}, "- carbon\n- pue\n", {}, ["must hold a mapping", "list"]),
    ({}, "just a string\n", {}, ["must hold a mapping", "str"]),
    ({}, "carbon:\n  pue: [1\n", {}, ["line 3", "expected ',' or ']'"]),
    ({}, "a: b: c\n", {}, ["line 1"]),
    ({}, "cpu_model:\n  idle_watts: 100\n  max_watts: 50\n", {}, ["cpu_model.max_watts"]),
    ({"carbon.pue": 0.99}, None, {}, ["flag --carbon.pue", "at least 1"]),
    ({"carbon.intensity": -0.1}, None, {}, ["flag --carbon.intensity", "at least 0"]),
    ({"sample.interval": "0s"}, None, {}, ["flag --sample.interval", "at least 0.01s"]),
    ({"sample.interval": "nan"}, None, {}, ["flag --sample.interval", "not a duration"]),
    ({"carbon.intensity": float("inf")}, None, {}, ["flag --carbon.intensity", "at most 2000"]),
    ({"carbon.pue": float("inf")}, None, {}, ["flag --carbon.pue", "at most 5"]),
    ({}, None, {"CARBON_EXPORTER_CARBON_PUE": "0.5"}, ["environment CARBON_EXPORTER_CARBON_PUE"]),
    ({}, None, {"CARBON_EXPORTER_CARBON_PUE": "high"}, ["CARBON_EXPORTER_CARBON_PUE", "not a number"]),
    ({}, None, {"CARBON_EXPORTER_COLLECTOR_RAPL": "perhaps"},
     ["environment CARBON_EXPORTER_COLLECTOR_RAPL", "not a boolean"]),
    ({}, None, {"CARBON_EXPORTER_SAMPLE_INTERVAL": "-2"}, ["CARBON_EXPORTER_SAMPLE_INTERVAL"]),
]


@pytest.mark.parametrize("flags, text, environ, words", RESOLVE_CASES)
def test_resolve_errors_name_the_field_in_one_line(tmp_path, flags, text, environ, words):
    path = _file(tmp_path, "config.yml", text) if text is not None else None
    with pytest.raises(ConfigError) as caught:
        resolve(flags, path, environ)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yml: No such file"):
        resolve({}, str(tmp_path / "missing.yml"), {})


def test_unknown_zone_names_the_field():
    from exporter.carbon import static_intensity

    with pytest.raises(ConfigError, match=r"^carbon\.zone: 'ZZ'"):
        static_intensity(resolve({"carbon.zone": "ZZ"}, None, {}))
    assert static_intensity(resolve({"carbon.zone": "de"}, None, {})).grid_zone == "DE"
    world = static_intensity(resolve({}, None, {}))
    assert world.grid_zone == "WORLD" and world.provider == "dataset"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    path = _file(tmp_path, "c.yml", "carbon:\n  pue: 1.1\n  intensity: 100\n"
                                    "dram_model:\n  watts_per_gib: 0.5\n")
    environ = {"CARBON_EXPORTER_CARBON_PUE": "1.2", "CARBON_EXPORTER_CARBON_INTENSITY": "200"}
    config = resolve({"carbon.pue": 1.3}, path, environ)
    assert config.carbon_pue == 1.3  # flag
    assert config.carbon_intensity == 200.0  # environment over file
    assert config.dram_model_watts_per_gib == 0.5  # file over default
    assert config.sample_interval == 1.0  # default
    assert config.web_listen_address == "127.0.0.1:9875"  # default: loopback only
    assert config.config_file == path
    assert resolve({}, path, {}).carbon_pue == 1.1
    assert resolve({}, None, {}).carbon_pue == 1.0
    defaults = resolve({}, None, {})
    for setting in SETTINGS:
        if setting.kind not in ("duration", "float"):
            assert setting.value_of(defaults) == setting.default


def test_empty_config_file_is_the_defaults(tmp_path):
    config = resolve({}, _file(tmp_path, "empty.yml", ""), {})
    assert config.carbon_pue == 1.0 and config.collector("rapl") is True


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("1s", 1.0), ("1m30s", 90.0), ("0.5", 0.5), ("2", 2.0), (" 15s ", 15.0),
    ("1h", 3600.0), ("1d", 86400.0), ("1m", 60.0), ("1s500ms", 1.5), (3, 3.0), (0.25, 0.25),
    ("1.5s", 1.5), ("0.5s", 0.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "1x", "s1", ".5s", "1ms1s", "fast", "nan", "inf",
                                  True, float("nan")])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- the real process: SIGHUP reload, SIGTERM/SIGINT --------------------------------------------

def _value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


@pytest.fixture
def node(tmp_path):
    return amd_one_socket(tmp_path / "sys"), ProcfsTree(tmp_path / "proc")


def test_sighup_reload_applies_a_good_file_and_keeps_the_old_config_on_a_bad_one(tmp_path, node):
    sysfs, procfs = node
    config = tmp_path / "carbon.yml"
    config.write_text("carbon:\n  intensity: 100\n")
    exporter = ExporterProcess(tmp_path, [
        f"--config.file={config}", f"--path.sysfs={sysfs.sysfs}", f"--path.procfs={procfs.procfs}",
        "--no-collector.nvml", "--sample.interval=100ms"])
    try:
        exporter.wait_ready()
        assert _value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh") == 100.0

        config.write_text("carbon:\n  intensity: 250\n  pue: 1.25\n")
        exporter.signal(signal.SIGHUP)
        wait_for(lambda: _value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh") == 250.0,
                 10, "reloaded intensity")
        assert _value(exporter.metrics(), "carbon_pue_ratio") == 1.25
        wait_for(lambda: "config reloaded: carbon.intensity, carbon.pue" in exporter.output(),
                 5, "reload log line")

        config.write_text("carbon:\n  intensity: 300\n  pue: 0.5\n")
        exporter.signal(signal.SIGHUP)
        wait_for(lambda: "config reload failed" in exporter.output(), 10, "reload error log line")
        line = next(entry for entry in exporter.output().splitlines() if "config reload failed" in entry)
        assert "level=error" in line and "carbon.pue" in line
        text = exporter.metrics()
        assert _value(text, "carbon_grid_intensity_grams_per_kwh") == 250.0
        assert _value(text, "carbon_pue_ratio") == 1.25

        config.write_text("carbon: [\n")  # not even YAML
        exporter.signal(signal.SIGHUP)
        wait_for(lambda: exporter.output().count("config reload failed") == 2, 10, "second error")
        assert exporter.proc.poll() is None
        assert _value(exporter.metrics(), "carbon_grid_intensity_grams_per_kwh") == 250.0
    finally:
        code = exporter.stop()
    log = exporter.log_path.read_text()
    assert code == 0, log
    assert "shutting down" in log and "Traceback" not in log


def test_sigint_exits_0(tmp_path, node):
    sysfs, procfs = node
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={sysfs.sysfs}", f"--path.procfs={procfs.procfs}", "--no-collector.nvml",
        "--sample.interval=100ms"])
    try:
        exporter.wait_ready()
        exporter.signal(signal.SIGINT)
        assert exporter.proc.wait(10) == 0
    finally:
        exporter.stop()
    assert "Traceback" not in exporter.log_path.read_text()
