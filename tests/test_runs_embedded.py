"""`carbon-exporter run` in embedded mode and the Python API, against this machine's real
procfs (no RAPL here: the CPU figure is the utilisation model's, with configured watts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.ledger import JOULES_PER_KWH
from exporter.runs import track
from exporter.runs.record import RecordError, load_record, validate
from tests.harness import ROOT, wait_for

IDLE_W, MAX_W = 10.0, 50.0
# Model figures fixed so the expected energy is known; the interval keeps samples many.
ENV = {"CARBON_EXPORTER_CPU_MODEL_IDLE_WATTS": str(IDLE_W),
       "CARBON_EXPORTER_CPU_MODEL_MAX_WATTS": str(MAX_W),
       "CARBON_EXPORTER_SAMPLE_INTERVAL": "500ms",
       "CARBON_EXPORTER_CARBON_INTENSITY": "400",
       "CARBON_EXPORTER_RUNS_SOCKET": ""}


def threads() -> int:
    text = Path("/proc/cpuinfo").read_text()
    return sum(1 for line in text.splitlines() if line.split(":")[0].strip() == "processor")


def wrapper(tmp: Path, *args: str, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBON_EXPORTER_")}
    env.update(ENV)
    return subprocess.Popen([sys.executable, "-m", "exporter", "run", "--mode", "embedded",
                             *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                            **popen)


BUSY = """
import sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
open(sys.argv[1], "w").write(str(time.process_time()))
"""


def test_cpu_busy_child_energy_matches_model_and_cpu_share(tmp_path):
    record_path = tmp_path / "run.json"
    cpu_file = tmp_path / "cpu"
    proc = wrapper(tmp_path, "--name", "busy", "--json", str(record_path), "--",
                   sys.executable, "-c", BUSY, str(cpu_file), "3")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    record = load_record(str(record_path))  # validates against the schema
    child_cpu = float(cpu_file.read_text())
    assert child_cpu > 0.5, "the child got almost no CPU: machine too loaded to judge"
    # The model: P = idle + (max - idle) x busy/threads, so the run's share of the active
    # energy is (max - idle) / threads per CPU second of its tree, whatever else runs.
    expected = (MAX_W - IDLE_W) / threads() * child_cpu
    cpu = next(c for c in record["components"] if c["component"] == "cpu")
    assert cpu["energy_joules"] > 0
    assert cpu["energy_joules"] == pytest.approx(expected, rel=0.2), (record, child_cpu)
    assert cpu["devices"] == [{"device": "node", "source": "model", "method": "model"}]
    assert record["energy_joules"] == pytest.approx(sum(c["energy_joules"] for c in record["components"]))
    assert record["energy_kwh"] == pytest.approx(record["energy_joules"] / JOULES_PER_KWH)
    assert record["emissions"]["operational_grams"] == pytest.approx(
        record["energy_joules"] * 400 / JOULES_PER_KWH)
    assert record["emissions_grams"] == pytest.approx(
        record["emissions"]["operational_grams"] + record["emissions"]["embodied_grams"])
    assert record["mode"] == "embedded" and record["status"] == "completed"
    assert record["exit_code"] == 0 and record["command"][0] == sys.executable
    assert 0 < record["energy_joules"] <= record["node"]["energy_joules"]  # a part of the node's
    assert record["intensity"]["grams_per_kwh"] == pytest.approx(400)
    assert record["intensity"]["provider"] == "static"
    assert "busy" in stderr and "kWh" in stderr and "gCO2e" in stderr  # the summary


def test_exit_code_comes_back(tmp_path):
    record_path = tmp_path / "run.json"
    proc = wrapper(tmp_path, "--quiet", "--json", str(record_path), "--", "sh", "-c", "exit 3")
    proc.communicate(timeout=60)
    assert proc.returncode == 3
    record = load_record(str(record_path))
    assert record["exit_code"] == 3 and record["status"] == "failed"


def test_missing_command_is_127_and_no_command_is_usage(tmp_path):
    proc = wrapper(tmp_path, "--quiet", "--", "/nonexistent/command")
    proc.communicate(timeout=60)
    assert proc.returncode == 127
    proc = wrapper(tmp_path, "--quiet")
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "no command" in stderr


CATCHES_SIGINT = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("SIGINT")
    sys.exit(5)
signal.signal(signal.SIGINT, stop)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""


def test_sigint_reaches_child_and_record_is_written(tmp_path):
    record_path = tmp_path / "run.json"
    marker = tmp_path / "marker"
    proc = wrapper(tmp_path, "--quiet", "--json", str(record_path), "--",
                   sys.executable, "-c", CATCHES_SIGINT, str(marker))
    wait_for(lambda: Path(str(marker) + ".ready").exists(), 30, "child ready")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert marker.read_text() == "SIGINT"
    assert proc.returncode == 5
    record = load_record(str(record_path))
    assert record["status"] == "interrupted" and record["exit_code"] == 5


def test_units_file_and_per_unit_values(tmp_path):
    record_path = tmp_path / "run.json"
    script = 'echo 600 >> "$CARBON_EXPORTER_RUN_UNITS_FILE"; echo 400 >> "$CARBON_EXPORTER_RUN_UNITS_FILE"'
    proc = wrapper(tmp_path, "--quiet", "--unit", "images", "--json", str(record_path),
                   "--tag", "variant=a", "--param", "preindex=0.42", "--param", "epochs=7",
                   "--model", "m", "--phase", "training", "--", "sh", "-c", script)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    record = load_record(str(record_path))
    assert record["units"]["name"] == "images" and record["units"]["count"] == 1000
    if record["energy_joules"] > 0:
        assert record["units"]["energy_joules_per_unit"] == pytest.approx(record["energy_joules"] / 1000)
    assert record["tags"] == {"variant": "a"}
    assert record["params"] == {"preindex": 0.42, "epochs": 7}
    assert (record["model"], record["phase"]) == ("m", "training")


SETTINGS = {"cpu_model.idle_watts": IDLE_W, "cpu_model.max_watts": MAX_W,
            "sample.interval": "200ms", "carbon.intensity": 400.0, "runs.socket": ""}


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_api_context_manager_units_from_threads(tmp_path):
    path = tmp_path / "api.json"
    with track("api", unit="tokens", json=str(path), mode="embedded", settings=SETTINGS,
               model="m", phase="inference") as run:
        workers = [threading.Thread(target=lambda: [run.add_units(1) for _ in range(5000)])
                   for _ in range(4)]
        for w in workers:
            w.start()
        _spin(1.0)
        for w in workers:
            w.join()
        run.set(preindex=0.5)
    assert run.record is not None
    assert json.loads(path.read_text()) == run.record
    assert run.record["units"]["count"] == 20000
    assert run.record["energy_joules"] > 0
    assert run.record["units"]["energy_joules_per_unit"] == pytest.approx(
        run.record["energy_joules"] / 20000)
    assert run.record["params"]["preindex"] == 0.5
    assert run.record["command"] is None and run.record["exit_code"] is None


def test_api_exception_still_ends_run_and_keeps_record(tmp_path):
    path = tmp_path / "failed.json"
    with pytest.raises(ZeroDivisionError):
        with track("fails", json=str(path), mode="embedded", settings=SETTINGS) as run:
            _spin(0.5)
            raise ZeroDivisionError("division by zero")
    record = load_record(str(path))
    assert record["status"] == "failed"
    assert record["error"].startswith("ZeroDivisionError")
    assert record is not None and run.record == record
    assert not any(t.name == "carbon-run-sampler" for t in threading.enumerate())


def test_api_decorator_one_run_per_call(tmp_path):
    @track("decorated", mode="embedded", settings=SETTINGS)
    def work(n):
        _spin(0.3)
        return n * 2

    assert work(2) == 4
    first = work.last_run.record
    assert work(3) == 6
    second = work.last_run.record
    assert first["run_id"] != second["run_id"]
    assert first["name"] == second["name"] == "decorated"


def test_schema_rejects_bad_records(tmp_path):
    with track("schema", mode="embedded", settings=SETTINGS) as run:
        pass
    record = dict(run.record)
    validate(record)
    del record["energy_joules"]
    with pytest.raises(RecordError, match="energy_joules"):
        validate(record)
    with pytest.raises(RecordError, match="schema_version"):
        validate(dict(run.record, schema_version="2.0"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(RecordError, match="not JSON"):
        load_record(str(bad))
    with pytest.raises(ValueError, match="phase"):
        track("x", phase="lunch")


def test_readme_training_and_inference_loops_run(tmp_path, monkeypatch):
    """The README's ML section examples, run as written (embedded mode, no daemon)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## ML runs", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for key, value in {**ENV, "CARBON_EXPORTER_SAMPLE_INTERVAL": "200ms"}.items():
        monkeypatch.setenv(key, value)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    train = load_record(str(tmp_path / "train.json"))
    serve = load_record(str(tmp_path / "serve.json"))
    assert train["units"]["count"] == 20 * 20_000 and train["phase"] == "training"
    assert train["params"]["epochs"] == 20 and 0.5 < train["params"]["accuracy"] <= 1
    assert train["energy_joules"] > 0
    assert serve["units"]["count"] == 1000 and serve["phase"] == "inference"


def test_the_watchdog_notes_its_own_cpu_time_and_the_run_is_not_charged_for_it():
    """The watchdog thread wakes every few seconds in the tracked process; it notes its own
    CPU time before the first cycle and after each look (Sampler.watchdog_cpu), and the run's
    tree takes that out, with no clock read of its own for it at every sample."""
    from exporter.config import resolve
    from exporter.runs.embedded import EmbeddedTracker

    config = resolve({"sample.interval": "100ms", "runs.socket": "", "collector.nvml": False,
                      "kubernetes.metadata": "none"}, None, environ={})
    tracker = EmbeddedTracker(config, os.getpid())
    tracker.sampler.watch_every = 0.1  # look as often as it samples (5 s in a run)
    tracker.start()
    try:
        watchdog = tracker.sampler.watchdog
        assert watchdog is not None and watchdog.ident is not None
        clock = time.pthread_getcpuclockid(watchdog.ident)
        assert clock not in tracker.tree.exclude_clocks
        assert [noted() for noted in tracker.tree.exclude_reported] == [
            tracker.sampler.watchdog_cpu]
        first = tracker.sampler.watchdog_cpu
        assert first > 0
        wait_for(lambda: tracker.sampler.watchdog_cpu > first, 10, "a look noted")
        assert tracker.sampler.watchdog_cpu <= time.clock_gettime(clock)
    finally:
        tracker.stop()


def test_a_sampler_thread_started_after_a_stall_is_not_charged_to_the_run():
    """The watchdog's fresh sampler thread (after a read stalled) is the tracker's overhead,
    like the first one: its CPU clock joins those taken out of the run's CPU time."""
    from exporter.config import resolve
    from exporter.runs.embedded import EmbeddedTracker

    config = resolve({"sample.interval": "100ms", "runs.socket": "", "collector.nvml": False,
                      "kubernetes.metadata": "none"}, None, environ={})
    tracker = EmbeddedTracker(config, os.getpid())
    model = next(w.source for w in tracker.sampler.workers if w.source.name == "cpu-model")
    # the model's part in the cycle: its capture of /proc/stat (read when the cycle is counted)
    capture, stalled, release = model.capture, threading.Event(), threading.Event()

    def stalling():
        if not stalled.is_set():
            stalled.set()
            release.wait(10)
        return capture()

    tracker.start()
    try:
        first = tracker.sampler._thread
        assert first is not None and first.ident is not None
        assert time.pthread_getcpuclockid(first.ident) in tracker.tree.exclude_clocks
        model.capture = stalling
        assert stalled.wait(5)

        def set_aside() -> bool:
            tracker.sampler.watch()  # what the watchdog thread does every 5 s
            return tracker.sampler._thread is not first

        wait_for(set_aside, 5, "a fresh sampler thread")
        fresh = tracker.sampler._thread
        assert fresh is not None
        wait_for(lambda: fresh.ident is not None
                 and time.pthread_getcpuclockid(fresh.ident) in tracker.tree.exclude_clocks,
                 5, "the fresh thread's CPU clock taken out of the run's")
    finally:
        release.set()
        tracker.stop()
