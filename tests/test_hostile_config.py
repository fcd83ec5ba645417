"""Config bombs and setting bounds against the real exporter process (issue 12, items 7-8):
every bomb exits 2 with one short line at start, and on SIGHUP is refused with "keeping the
previous config: ..." while scrapes go on. Bounded in count and time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.config import resolve
from exporter.confutil import ConfigError, parse_duration
from tests.harness import ROOT, ExporterProcess, free_port, http_get, wait_for

ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}' if prev else '1'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"],
                          ["a", "b", "c", "d", "e", "f", "g", "h"])
) + "carbon:\n  pue: *h\n"  # 9^8 = 43 million values under a known key

# name -> (how to make it in a directory, words the one line must hold)
BOMBS = {
    "alias bomb": (lambda d: _write(d, ALIAS_BOMB), "alias"),
    "binary": (lambda d: _write(d, bytes(range(256)) * 8), "not UTF-8"),
    "latin-1": (lambda d: _write(d, "carbon:\n  zone: Zürich\n".encode("latin-1")), "not UTF-8"),
    "utf-16": (lambda d: _write(d, "carbon:\n  pue: 1.2\n".encode("utf-16")), "not UTF-8"),
    "deep nesting": (lambda d: _write(d, "carbon: " + "[" * 5000 + "]" * 5000 + "\n"), "nested"),
    "50 MB": (lambda d: _big(d), "bytes"),
    "fifo": (lambda d: _fifo(d), "not a regular file"),
    "duplicate keys": (lambda d: _write(d, "carbon:\n  pue: 1.1\n  pue: 1.5\n"), "duplicate key"),
    "long value": (lambda d: _write(d, "carbon:\n  pue: '" + "9" * 200_000 + "'\n"), "must be"),
}


def _write(directory: Path, content: str | bytes) -> Path:
    path = directory / "bomb.yml"
    if isinstance(content, str):
        content = content.encode()
    tmp = directory / "bomb.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return path


def _big(directory: Path) -> Path:
    tmp = directory / "bomb.tmp"
    with open(tmp, "wb") as handle:
        handle.write(b"carbon:\n  zone: '")
        handle.write(b"a" * (50 * 1024 * 1024))
        handle.write(b"'\n")
    os.replace(tmp, directory / "bomb.yml")
    return directory / "bomb.yml"


def _fifo(directory: Path) -> Path:
    tmp = directory / "bomb.fifo"
    os.mkfifo(tmp)
    os.replace(tmp, directory / "bomb.yml")
    return directory / "bomb.yml"


def _start(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "exporter", "--no-collector.nvml",
                             f"--web.listen-address=127.0.0.1:{free_port()}", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_config_bomb_exits_2_with_one_short_line_at_start(tmp_path, bomb):
    make, words = BOMBS[bomb]
    path = make(tmp_path)
    result, seconds = _start(f"--config.file={path}")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and len(line) < 300, line[:2000]
    assert line.startswith(f"carbon-exporter: error: config file {path}") and words in line, line
    assert seconds < 15, seconds  # before: a 50 MB file took 47 s, a FIFO for ever


@pytest.mark.parametrize("bomb", ["alias bomb", "fifo", "50 MB", "duplicate keys"])
def test_web_config_bomb_exits_2_with_one_short_line_at_start(tmp_path, bomb):
    make, words = BOMBS[bomb]
    path = make(tmp_path)
    result, _ = _start(f"--web.config.file={path}")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert "\n" not in line and len(line) < 300 and words in line, line[:2000]


class Scraper(threading.Thread):
    """Scrapes every 50 ms; records the slowest answer and any failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.slowest = 0.0
        self.failed: list[str] = []
        self.scrapes = 0

    def run(self) -> None:
        while not self.stop.wait(0.05):
            started = time.monotonic()
            try:
                status = http_get(self.url, timeout=10)[0]
            except Exception as exc:
                self.failed.append(repr(exc))
                continue
            if status != 200:
                self.failed.append(f"HTTP {status}")
            self.scrapes += 1
            self.slowest = max(self.slowest, time.monotonic() - started)


@pytest.mark.slow  # load or fault sequence of tens of seconds: scripts/test.sh runs it
def test_config_bombs_on_sighup_keep_the_previous_config_and_scrapes_go_on(tmp_path):
    config = tmp_path / "bomb.yml"
    config.write_text("carbon:\n  pue: 1.1\n")
    exporter = ExporterProcess(tmp_path, [
        f"--path.sysfs={tmp_path / 'no-sysfs'}", "--no-collector.nvml",
        "--sample.interval=200ms", f"--config.file={config}"])
    scraper = Scraper("")
    try:
        exporter.wait_ready()
        scraper.url = exporter.url + "/metrics"
        scraper.start()
        for bomb, (make, words) in BOMBS.items():
            before = exporter.output().count("keeping the previous config")
            make(tmp_path)
            exporter.signal(signal.SIGHUP)
            wait_for(lambda n=before: exporter.output().count("keeping the previous config") > n,
                     20, f"the {bomb} to be refused")
            line = [x for x in exporter.output().splitlines()
                    if "keeping the previous config" in x][-1]
            assert words in line and len(line) < 500, (bomb, line[:2000])
            assert exporter.proc.poll() is None
            assert "carbon_pue_ratio 1.1" in exporter.metrics()  # the previous config stays
        config.unlink()
        config.write_text("carbon:\n  pue: 1.3\n")  # and a good file still applies
        exporter.signal(signal.SIGHUP)
        wait_for(lambda: "carbon_pue_ratio 1.3" in exporter.metrics(), 20, "the good config")
        scraper.stop.set()
        scraper.join(15)
        print(f"\n{len(BOMBS)} bombs on SIGHUP: {scraper.scrapes} scrapes, slowest "
              f"{scraper.slowest * 1000:.0f} ms")
        assert not scraper.failed, scraper.failed[:5]
        assert scraper.slowest < 2.0  # before: the alias bomb froze the event loop
        assert "Traceback" not in exporter.output()
    finally:
        scraper.stop.set()
        assert exporter.stop() == 0


# --- item 8: bounds on settings --------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    ({"sample.interval": "1e-9"}, "flag --sample.interval: '1e-9' must be at least 0.01s"),
    ({"sample.interval": "2m"}, "flag --sample.interval: '2m' must be at most 60s"),
    ({"carbon.pue": 1e308}, "flag --carbon.pue: 1e+308 must be at most 5"),
    ({"carbon.intensity": 1e308}, "flag --carbon.intensity: 1e+308 must be at most 2000"),
    ({"carbon.intensity": 2000.5}, "must be at most 2000"),
])
def test_setting_bounds(flags, words):
    with pytest.raises(ConfigError) as caught:
        resolve(flags, None, {})
    assert words in str(caught.value)


def test_durations_take_fractions_as_node_exporter_does():
    assert parse_duration("0.5s") == 0.5
    assert parse_duration("1.5m") == 90.0
    assert parse_duration("0.25") == 0.25
    assert resolve({"sample.interval": "0.5s"}, None, {}).sample_interval == 0.5
    assert resolve({"sample.interval": "10ms"}, None, {}).sample_interval == 0.01


def test_bounds_exit_2_with_one_line(tmp_path):
    result, _ = _start("--sample.interval=1e-9")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "at least 0.01s" in result.stderr
    config = tmp_path / "c.yml"
    config.write_text("carbon:\n  intensity: 1.0e+308\n  pue: 1.2\n")
    result, _ = _start(f"--config.file={config}")
    assert result.returncode == 2 and "carbon.intensity: 1e+308 must be at most 2000" in result.stderr
