"""Energy and gCO2e per ML run: a context manager and decorator for training and inference code.

    from exporter.runs import track

    with track("resnet50-train", unit="images", model="resnet50", phase="training",
               json="run.json") as run:
        for images, labels in loader:
            ...
            run.add_units(len(images))
    print(run.record["energy_joules"], run.record["emissions_grams"])

    @track("predict", unit="requests")
    def serve_batch(batch): ...

Mode "auto" uses the node's exporter when one runs here (daemon mode: its own samples,
split by the run's cgroup; the run shows in Prometheus as workload_job=<name>), else
samples in a thread of this process (embedded mode). An exception inside the block still
ends the run and keeps the record (status "failed"); the exception propagates.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Literal, TypeVar

from exporter.runs.record import PHASES, build_record, validate, write_record

log = logging.getLogger(__name__)

DEFAULT_DAEMON_URL = "http://127.0.0.1:9875"
MODES = ("auto", "embedded", "daemon")
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DEFAULT_DAEMON_URL", "PHASES", "Run", "track"]


def _config(settings: dict[str, Any] | None, config_file: str | None):
    """Settings as the daemon reads them: defaults < config file < CARBON_EXPORTER_* <
    `settings` ({"carbon.zone": "DE", "sample.interval": "500ms"})."""
    from exporter.config import resolve

    return resolve(dict(settings or {}), config_file)


class Run:
    """One tracked run. Use as `with track(...) as run:` or as a decorator."""

    def __init__(self, name: str | None = None, *, unit: str | None = None,
                 json: str | None = None, mlflow: bool = False, model: str | None = None,
                 phase: str | None = None, tags: dict[str, str] | None = None,
                 params: dict[str, Any] | None = None, mode: str = "auto",
                 daemon_url: str = DEFAULT_DAEMON_URL, daemon_socket: str | None = None,
                 settings: dict[str, Any] | None = None, config_file: str | None = None,
                 pid: int | None = None, include_root: bool = True,
                 command: list[str] | None = None) -> None:
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.name = name or "run"
        self.unit = unit
        self.json_path = json
        self.mlflow = mlflow
        self.model = model
        self.phase = phase
        self.tags: dict[str, str] = {str(k): str(v) for k, v in (tags or {}).items()}
        self.params: dict[str, Any] = dict(params or {})
        self.mode = mode
        self.daemon_url = daemon_url
        self.daemon_socket = daemon_socket
        self.settings = settings
        self.config_file = config_file
        self.pid = pid
        self.include_root = include_root
        self.command = command
        self.run_id = uuid.uuid4().hex
        self.record: dict[str, Any] | None = None
        self.exit_code: int | None = None
        self._units = 0.0
        self._lock = threading.Lock()
        self._tracker: Any = None
        self._start = 0.0
        self.mlflow_run_id: str | None = None  # where the record went (mlflow=True)

    # --- what the tracked code calls ----------------------------------------------------------

    def add_units(self, n: float = 1) -> None:
        """Count `n` functional units (images, tokens, requests); safe from any thread."""
        if n < 0:
            raise ValueError("add_units: n must not be negative")
        with self._lock:
            self._units += n

    @property
    def units(self) -> float:
        with self._lock:
            return self._units

    def set(self, **params: str | float | bool | None) -> None:
        """Record values computed for the run: run.set(preindex=0.42, epochs=7) -> params."""
        self.params.update(params)

    def tag(self, key: str, value: str) -> None:
        self.tags[str(key)] = str(value)

    def param(self, key: str, value: str | float | bool | None) -> None:
        self.params[str(key)] = value

    # --- life cycle --------------------------------------------------------------------------

    def _choose_tracker(self, config):
        from exporter.runs.client import DaemonTracker, DaemonUnavailable

        socket_path = self.daemon_socket or config.runs_socket
        if self.mode == "daemon" and not socket_path:
            raise RuntimeError("daemon mode: runs.socket is empty")
        if self.mode in ("auto", "daemon") and socket_path:
            try:
                return DaemonTracker(self.name, self.daemon_url, socket_path,
                                     interval=config.sample_interval)
            except DaemonUnavailable as exc:
                if self.mode == "daemon":
                    raise RuntimeError(f"daemon mode: {exc}") from None
                log.debug("no exporter daemon (%s): embedded mode", exc)
        from exporter.runs.embedded import EmbeddedTracker

        return EmbeddedTracker(config, self.pid or os.getpid(), self.include_root)

    def start(self) -> "Run":
        config = _config(self.settings, self.config_file)
        self._tracker = self._choose_tracker(config)
        self._tracker.start()
        self._start = time.time()
        return self

    def stop(self, status: str = "completed", error: str | None = None) -> dict[str, Any]:
        """End the run; builds (and writes, with json=) the record and returns it."""
        if self.record is not None:
            return self.record
        tracker = self._tracker
        account = tracker.stop()
        end = time.time()
        self.record = validate(build_record(
            name=self.name, mode=tracker.mode, account=account, start=self._start, end=end,
            status=status, run_id=self.run_id, error=error, command=self.command,
            exit_code=self.exit_code, unit=self.unit, units=self.units, model=self.model,
            phase=self.phase, tags=self.tags, params=self.params, method=tracker.method,
            interval=tracker.interval, workload_job=getattr(tracker, "workload_job", None),
            cgroup=getattr(tracker, "cgroup", None), collectors=tracker.statuses(),
            fallback_intensity=tracker.intensity_state()))
        if self.json_path:
            write_record(self.record, self.json_path)
        if self.mlflow:
            from exporter.runs.mlflow_log import log_record

            try:
                self.mlflow_run_id = log_record(self.record, self.mlflow_run_id)
            except Exception as exc:  # the record is kept (and written); say why MLflow failed
                raise RuntimeError(f"MLflow: {type(exc).__name__}: {exc}") from exc
        return self.record

    def __enter__(self) -> "Run":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is None:
            self.stop()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.stop("interrupted", f"{exc_type.__name__}")
        else:
            self.stop("failed", f"{exc_type.__name__}: {exc}")
        return False  # the exception, if any, goes on

    def _fresh(self) -> "Run":
        """A new run with the same settings (each decorated call is its own run)."""
        return Run(self.name, unit=self.unit, json=self.json_path, mlflow=self.mlflow,
                   model=self.model, phase=self.phase, tags=dict(self.tags),
                   params=dict(self.params), mode=self.mode, daemon_url=self.daemon_url,
                   daemon_socket=self.daemon_socket, settings=self.settings,
                   config_file=self.config_file, pid=self.pid, include_root=self.include_root)

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh() as run:
                wrapper.last_run = run  # type: ignore[attr-defined]
                return func(*args, **kwargs)
        return wrapper  # type: ignore[return-value]


def track(name: str | None = None, **options: Any) -> Run:
    """A run to use as `with track("name", unit="images") as run:` or `@track("name")`.
    Options: unit, json (path of the record), mlflow, model, phase, tags, params, mode
    (auto|embedded|daemon), daemon_url, daemon_socket, settings (exporter settings by key),
    config_file."""
    return Run(name, **options)
