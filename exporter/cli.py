"""Command line: flags, config file, logging, signals, start-up and shutdown."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Sequence

import exporter.aiohttp_lean  # noqa: F401  (first: aiohttp without the CA store, see there)
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from exporter import __version__
from exporter.carbon import static_intensity
from exporter.carbon.embodied import Embodied
from exporter.carbon.providers.chain import Chain, GridState
from exporter.carbon.secrets import RedactingFilter
from exporter.config import SETTINGS, Config, changed_keys, resolve, split_listen_address
from exporter.confutil import ConfigError
from exporter.connections import ConnectionGuard
from exporter.sampler import Sampler
from exporter.selfmetrics import SelfMetrics
from exporter.server import listen, make_app
from exporter.sources.registry import build_sources
from exporter.version import version_text
from exporter.webconfig import WebSecurity

log = logging.getLogger("exporter")

EXIT_USAGE = 2
EXIT_LISTEN = 3  # --web.listen-address cannot be bound (in use, not this host's, no permission)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class VersionAction(argparse.Action):
    """--version as node_exporter prints it, unwrapped (argparse's own action re-wraps it),
    and worked out only when asked (a source checkout asks git)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="carbon-exporter",
        description="Prometheus exporter for node power (RAPL, NVML, utilisation models), "
                    "energy and CO2e emissions. Every flag also reads from the environment "
                    "variable shown, and from the same key in --config.file; flags win. "
                    "`carbon-exporter report --help`: the footprint report from Prometheus "
                    "history. `carbon-exporter estimate-retraining --help`: the cost of "
                    "retraining for a shift, from its PreIndex and measured runs. "
                    "`carbon-exporter run|compare|lifecycle --help`: energy and gCO2e per ML "
                    "run, A/B comparisons, a model's life-cycle footprint.",
    )
    parser.add_argument("--version", action=VersionAction, nargs=0,
                        help="Print the version, revision and build date, and exit.")
    parser.add_argument("--config.file", dest="config_file", metavar="PATH",
                        help="YAML config file with the same settings (reloaded on SIGHUP). "
                             "[env CARBON_EXPORTER_CONFIG_FILE]")
    for setting in SETTINGS:
        # argparse expands %-formats in help: '0% utilisation' must be escaped
        text = f"{setting.help} [env {setting.env}]".replace("%", "%%")
        if setting.kind == "bool":
            parser.add_argument(setting.flag, dest=setting.key, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=f"{text} (default: {'enabled' if setting.default else 'disabled'})")
            continue
        kwargs: dict[str, Any] = {"dest": setting.key, "default": None, "metavar": "VALUE"}
        if setting.kind in ("float", "int", "budget"):
            kwargs["type"] = int if setting.kind == "int" else float
        if setting.kind == "choice":
            kwargs["choices"] = setting.choices
            kwargs.pop("metavar")
        default = "" if setting.default is None else f" (default: {setting.default})"
        parser.add_argument(setting.flag, help=text + default, **kwargs)
    return parser


# --- logging ---------------------------------------------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "error": logging.ERROR}


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        f".{int(record.msecs):03d}Z"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += " " + self.formatException(record.exc_info).replace("\n", " | ")
        quoted = message.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return (f'ts={_utc(record)} level={record.levelname.lower()} '
                f'logger={record.name} msg="{quoted}"')


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": _utc(record), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a client's malformed HTTP with a traceback at error level; a bad client
    must not flood the log, so those become one debug line. Handler bugs still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.debug("malformed request refused: %s", exc)
            return False
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RedactingFilter())  # no token reaches a log line, whoever logs it
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [MalformedRequestFilter()]


SWITCH_INTERVAL = 0.0005  # seconds (sys.setswitchinterval): see Daemon.serve


# --- wiring ----------------------------------------------------------------------------------

class Daemon:
    def __init__(self, config: Config, flags: dict[str, Any]) -> None:
        self.config = config
        self.flags = flags
        self.intensity = static_intensity(config)
        self.security = WebSecurity(config.web_config_file)
        self.sampler = Sampler(build_sources(config), config.sample_interval, self.intensity,
                               config.carbon_pue, peak_window=config.power_peak_window,
                               takeover=config.sample_model_takeover)
        self.sampler.power_budget = config.power_budget_watts
        self.sampler.embodied = Embodied(config)
        self.chain = Chain.from_config(config, self._publish_grid)
        self.live = SelfMetrics(not config.web_disable_exporter_metrics)
        self.chain.observe = self.live.fetch.observe
        self._swapping = asyncio.Lock()  # two quick SIGHUPs must not start chains out of order
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()

    def _publish_grid(self, state: GridState) -> None:
        # Plain assignments: the sampler picks them up at its next cycle, never waiting.
        self.sampler.intensity = state.intensity
        self.sampler.grid = state

    async def _swap_chain(self, old: Chain, new: Chain) -> None:
        async with self._swapping:
            await old.stop()
            if new is self.chain:  # a later reload may already have replaced it
                new.start()

    def reload(self) -> None:
        """SIGHUP: re-read the config files in the background (see _reload)."""
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)  # a reference, so the task is not collected midway
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        """Re-read the config file; keep the running config if the new one is bad. Files are
        read and parsed off the event loop, one reload at a time, so scrapes go on."""
        async with self._reloading:
            if self.security.config.path:
                await self.security.reload_async()  # on its own: a bad config must not block it
            try:
                new = await asyncio.get_running_loop().run_in_executor(
                    None, resolve, self.flags, self.config.config_file)
            except ConfigError as exc:
                log.error("config reload failed, keeping the previous config: %s", exc)
                return
            self._apply(new)

    def _apply(self, new: Config) -> None:
        try:
            intensity = static_intensity(new)
            chain = Chain.from_config(new, self._publish_grid, previous=self.chain)
            Embodied(new)  # validates embodied.server_model before anything is applied
        except ConfigError as exc:
            log.error("config reload failed, keeping the previous config: %s", exc)
            return
        changed = changed_keys(self.config, new)
        by_key = {s.key: s for s in SETTINGS}
        restart = [k for k in changed if not by_key[k].reloadable]
        if restart:
            log.warning("config reload: %s changed but only take effect after a restart",
                        ", ".join(restart))
        self.intensity = intensity
        old, self.chain = self.chain, chain
        asyncio.get_running_loop().create_task(self._swap_chain(old, chain))
        with self.sampler.lock:  # between two cycles' publishing, never in the middle of one
            if self.sampler.embodied is not None:
                self.sampler.embodied.configure(new)
            self.sampler.pue = new.carbon_pue
            self.sampler.power_budget = new.power_budget_watts
        self.sampler.configure(new)  # the sources take it at the next cycle, in their thread
        logging.getLogger().setLevel(_LEVELS[new.log_level])
        self.config = new
        log.info("config reloaded: %s", ", ".join(changed) if changed else "no changes")

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        # A scrape that arrives while the sampler thread runs Python code waits for the GIL:
        # up to the switch interval (5 ms by default), then the sampler is made to let go.
        # A cycle is about a millisecond of Python, so 0.5 ms bounds that wait; threads swap
        # only when both want to run, which is rare. The process is ours (not embedded).
        sys.setswitchinterval(SWITCH_INTERVAL)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        host, port = split_listen_address(self.config.web_listen_address)
        guard = ConnectionGuard(self.config.web_max_connections,
                                self.config.web_read_header_timeout)
        app = make_app(self.sampler, self.config.web_telemetry_path, self.security, self.live,
                       max_requests=self.config.web_max_requests, guard=guard)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=self.config.web_idle_timeout)
        await runner.setup()
        try:
            server = await listen(runner, guard, host, port, self.security.ssl_context)
        except OSError as exc:
            print(f"carbon-exporter: error: cannot listen on {self.config.web_listen_address}: "
                  f"{listen_problem(exc)}", file=sys.stderr)
            await runner.cleanup()
            self.sampler.close()
            self.security.close()
            return EXIT_LISTEN
        log.info("carbon-exporter %s listening on %s (%s), metrics at %s, sampling every %gs; "
                 "intensity %g gCO2e/kWh (zone %s, %s), PUE %g", __version__,
                 self.config.web_listen_address, "https" if self.security.ssl_context else "http",
                 self.config.web_telemetry_path,
                 self.sampler.interval, self.intensity.grams_per_kwh,
                 self.intensity.grid_zone or "-", self.intensity.provider, self.config.carbon_pue)
        if host not in ("127.0.0.1", "::1", "localhost") and not (
                self.security.config.tls or self.security.config.users):
            log.warning("listening on %s without TLS or basic auth: anyone who can reach the "
                        "port reads this node's power (see README, Security)",
                        self.config.web_listen_address)
        for status in self.chain.select().providers:
            log.info("intensity provider %s (%s): %s", status.name, status.type, status.description)
        self.chain.start()
        # What start-up built (modules, tables, the app) lives as long as the process: out of
        # the collector's way, so a full collection during a scrape walks only what came
        # after (about 0.1 ms instead of 15: scrape p99)
        gc.collect()
        gc.freeze()
        sampling = asyncio.create_task(self.sampler.run(self.stop))
        watching = None  # only a web config file can change under the running exporter
        if self.security.config.path:
            watching = asyncio.create_task(self.security.watch(self.stop))
        metadata = None
        if self.sampler.attribution is not None:
            metadata = asyncio.create_task(self.sampler.attribution.kube.run(self.stop))
        runs = None
        if self.config.runs_socket and self.sampler.attribution is not None:
            from exporter.runs.service import RunService  # daemon mode of `carbon-exporter run`
            runs = RunService(self.sampler, self.config.runs_socket,
                              os.path.join(self.config.path_sysfs, "fs", "cgroup"),
                              self.config.path_procfs)
            await runs.start()
        await self.stop.wait()
        log.info("shutting down")
        await sampling
        if watching is not None:
            await watching
        await self.chain.stop()
        if metadata is not None:
            await metadata
        if runs is not None:
            await runs.stop()
        server.close()
        await runner.cleanup()
        self.sampler.close()
        self.security.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        return 0


def listen_problem(exc: OSError) -> str:
    """What went wrong binding the listen address, in words a user can act on."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{why} (another process listens on that port; pick another with --web.listen-address)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{why} (not an address of this host; ':PORT' listens on every interface)"
    if exc.errno == errno.EACCES:
        return f"{why} (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    if isinstance(exc, socket.gaierror):
        return f"{why} (the host name does not resolve)"
    return why


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def one_malloc_arena() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), each
    holding on to what it freed: about 1 MB of resident memory for the sampler thread's. The
    daemon's threads seldom allocate at the same moment (one samples, the loop serves), so
    one arena is enough. A MALLOC_ARENA_MAX the user set wins; without glibc (musl), nothing."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        # The footprint report is a client of Prometheus, not part of the daemon.
        from exporter.report.cli import main as report_main
        return report_main(argv[1:])
    if argv[:1] in (["run"], ["compare"], ["lifecycle"]):
        # ML runs: a wrapper and record tools, not the daemon (exporter/runs/).
        from exporter.runs.cli import main as runs_main
        return runs_main(argv)
    if argv[:1] == ["estimate-retraining"]:
        # Reads run records and fits them: no daemon, no numpy.
        from exporter.retraining.cli import main as retraining_main
        return retraining_main(argv[1:])
    one_malloc_arena()  # before the daemon's threads start
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config_file", None) or os.environ.get("CARBON_EXPORTER_CONFIG_FILE")
    flags = {k: v for k, v in args.items() if v is not None}
    try:
        config = resolve(flags, config_file)
        setup_logging(config.log_level, config.log_format)
        daemon = Daemon(config, flags)
    except ConfigError as exc:
        print(f"carbon-exporter: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(daemon.serve())
