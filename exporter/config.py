"""Settings: one typed table drives the flags, the environment variables, the YAML schema and
the README.

Each field of Config declares its setting (key, kind, default, help, bounds, hooks) once;
SETTINGS is read off the dataclass, and the --collector.<name> switches come from the source
registry. Precedence: flags > environment (CARBON_EXPORTER_*) > config file > defaults.
Every error names the field and says what is wrong, in one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from exporter.confutil import MAX_GRAMS_PER_KWH, ConfigError, parse_duration, read_yaml, shown
from exporter.sources import registry

if TYPE_CHECKING:
    from exporter.carbon.providers.spec import ProviderSpec

__all__ = ["SETTINGS", "BY_KEY", "Config", "ConfigError", "Setting", "changed_keys",
           "parse_duration", "read_yaml", "resolve", "split_listen_address"]


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path in the YAML file, e.g. "carbon.pue"
    kind: str  # str, bool, int, float, duration, choice, providers (a structured list)
    default: Any
    help: str
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    maximum: float | None = None  # inclusive
    choices: tuple[str, ...] = ()
    reloadable: bool = False  # applied on SIGHUP without a restart
    flag_name: str | None = None  # where convention differs from the key (--web.config.file)
    # Hooks: check(value) raises ValueError with what is wrong; parse(value, where) turns the
    # validated raw value into the Config value (raising ConfigError naming `where`).
    check: Callable[[Any], None] | None = None
    parse: Callable[[Any, str], Any] | None = None
    collector: str | None = None  # a --collector.<name> switch: Config.collectors holds it

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "CARBON_EXPORTER_" + re.sub(r"[.\-]", "_", self.key).upper()

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")

    def value_of(self, config: Config) -> Any:
        if self.collector is not None:
            return self.collector in config.collectors
        return getattr(config, self.attr)

    def check_type(self, value: Any) -> str | None:
        """What the value must be, if it is not (one line's end), else None."""
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if value is None and self.kind in ("str", "int", "float", "providers"):
            return None
        if self.kind == "str":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}"
        if self.kind == "duration":
            ok = isinstance(value, (int, float, str)) and not isinstance(value, bool)
            return None if ok else "must be a number or a string"
        if self.kind == "providers":
            return None if isinstance(value, (list, str)) else "must be a list or a string"
        if self.kind == "budget":
            return None if _budget_ok(value) else (
                "must be watts above 0, or {node: W, gpu: W or {gpu-0: W, ...}}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                self.kind == "int" and not isinstance(value, int)):
            return "must be an integer" if self.kind == "int" else "must be a number"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g}"
        if self.above is not None and value <= self.above:
            return f"must be greater than {self.above:g}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g}"
        return None


def _watts(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _budget_ok(value: Any) -> bool:
    """power.budget_watts: a number (the node), or {node: W, gpu: W (each GPU) | {gpu-0: W, ...}}."""
    if value is None or _watts(value):
        return True
    if not isinstance(value, dict) or not set(value) <= {"node", "gpu"}:
        return False
    if "node" in value and not _watts(value["node"]):
        return False
    gpu = value.get("gpu")
    per_gpu = isinstance(gpu, dict) and all(isinstance(k, str) and _watts(w) for k, w in gpu.items())
    return "gpu" not in value or _watts(gpu) or per_gpu


def _s(key: str, kind: str, default: Any, help: str, **options: Any) -> Any:
    """A Config field that declares its setting (the field's default is the parsed default)."""
    setting = Setting(key, kind, default, help, **options)
    value = parse_duration(default) if kind == "duration" else default
    return dataclasses.field(default=value, metadata={"setting": setting})


# --- hooks -------------------------------------------------------------------------------------

def split_listen_address(address: str) -> tuple[str | None, int]:
    """':9875' -> (None, 9875); '127.0.0.1:9875'; '[::1]:9875'."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{shown(address)} is not [host]:port with a port in 1-65535")
    host = host.strip("[]")
    return (host or None), int(port)


def _check_listen_address(value: Any) -> None:
    split_listen_address(str(value))


def _check_url(value: Any) -> None:
    if value is not None and not str(value).startswith(("https://", "http://")):
        raise ValueError(f"{shown(value)} is not an http(s) URL")


def _check_path(value: Any) -> None:
    if not str(value).startswith("/"):
        raise ValueError(f"{shown(value)} must start with /")


def _parse_providers(value: Any, where: str) -> tuple[ProviderSpec, ...]:
    from exporter.carbon.providers.spec import parse_chain

    return parse_chain(value, where)


# --- the settings --------------------------------------------------------------------------------

# A PUE above this is no working facility (the worst surveyed are ~2.5): a typo, not a site.
MAX_PUE = 5.0


@dataclass(frozen=True)
class Config:
    """Resolved settings; attribute names are the dotted keys with '.' -> '_'."""

    web_listen_address: str = _s(
        "web.listen_address", "str", "127.0.0.1:9875",
        "Address to listen on for HTTP requests ([host]:port; ':9875' is every interface: "
        "use it with --web.config.file or a firewall).", check=_check_listen_address)
    web_telemetry_path: str = _s(
        "web.telemetry_path", "str", "/metrics", "Path under which metrics are exposed.",
        check=_check_path)
    web_config_file: str | None = _s(
        "web.config_file", "str", None,
        "Web config file (exporter-toolkit format): TLS, mutual TLS, basic auth, headers. "
        "Reloaded when it or its certificates change.", flag_name="--web.config.file")
    web_max_requests: int = _s(
        "web.max_requests", "int", 40,
        "Maximum number of requests in flight at once (scrapes), counted after "
        "authentication; more get 503. 0 means no limit.",
        minimum=0)
    web_max_connections: int = _s(
        "web.max_connections", "int", 1024,
        "Maximum number of open client connections (lowered to fit the open-files limit); "
        "at the limit a new connection closes the longest-idle one.", minimum=1)
    web_read_header_timeout: float = _s(
        "web.read_header_timeout", "duration", "10s",
        "Time a client has to send a request's headers, from its first byte or from "
        "connecting; slower connections are closed.")
    web_idle_timeout: float = _s(
        "web.idle_timeout", "duration", "60s",
        "Idle keep-alive connections are closed after this long.")
    web_disable_exporter_metrics: bool = _s(
        "web.disable_exporter_metrics", "bool", False,
        "Leave the exporter's own metrics out of /metrics: process_*, python_* and "
        "carbon_exporter_http_* (as node_exporter's flag of that name).")
    path_sysfs: str = _s(
        "path.sysfs", "str", "/sys",
        "sysfs mount point (RAPL under class/powercap, power meters under class/hwmon).")
    path_procfs: str = _s(
        "path.procfs", "str", "/proc", "procfs mount point (CPU times, memory size).")
    sample_interval: float = _s(
        "sample.interval", "duration", "1s",
        "How often sources are read: a Prometheus duration (500ms, 1s, 0.5s) or seconds (0.5); "
        "10ms to 1m (faster only burns CPU; slower lets a busy RAPL counter wrap unseen).",
        minimum=0.01, maximum=60)
    sample_model_takeover: float = _s(
        "sample.model_takeover", "duration", "30s",
        "How long a counter (RAPL) may be away before its model takes over: a shorter outage "
        "is bridged by the counter alone when it returns; after it the model counts from the "
        "counter's last reading, and the counter, when back, from its first new one.")
    # --collector.<name>, one per registered source, are listed here (COLLECTORS_AFTER)
    collectors: frozenset[str] = frozenset()
    rapl_min_interval: float = _s(
        "rapl.min_interval", "duration", "0s",
        "Read RAPL energy counters at most this often (e.g. 1s), whatever --sample.interval, "
        "to bound the energy resolution scrapers see (Platypus side channel). 0s: every "
        "sample.", minimum=0, reloadable=True)
    redfish_url: str | None = _s(
        "redfish.url", "str", None,
        "Base URL of this node's BMC for the redfish collector (https://10.0.0.5); unset: "
        "the collector reports absent.", check=_check_url)
    redfish_username_file: str | None = _s(
        "redfish.username_file", "str", None, "File holding the BMC user name.")
    redfish_username_env: str | None = _s(
        "redfish.username_env", "str", None,
        "Environment variable holding the BMC user name (default: "
        "CARBON_EXPORTER_REDFISH_USERNAME).")
    redfish_password_file: str | None = _s(
        "redfish.password_file", "str", None, "File holding the BMC password.")
    redfish_password_env: str | None = _s(
        "redfish.password_env", "str", None,
        "Environment variable holding the BMC password (default: "
        "CARBON_EXPORTER_REDFISH_PASSWORD).")
    redfish_ca_file: str | None = _s(
        "redfish.ca_file", "str", None,
        "CA bundle that signs the BMC's certificate (default: the system's).")
    redfish_insecure_skip_verify: bool = _s(
        "redfish.insecure_skip_verify", "bool", False,
        "Do not verify the BMC's TLS certificate (self-signed BMC certificates).")
    redfish_timeout: float = _s(
        "redfish.timeout", "duration", "10s", "Timeout of one Redfish request.")
    redfish_poll_interval: float = _s(
        "redfish.poll_interval", "duration", "15s",
        "How often the BMC is asked for chassis power (its own timer, doubled per failure "
        "up to 10m); the last value stands for the node between polls.")
    redfish_chassis: str | None = _s(
        "redfish.chassis", "str", None,
        "Chassis id whose power is the node's (default: the first chassis that reports "
        "power).")
    power_peak_window: float = _s(
        "power.peak_window", "duration", "1m",
        "carbon_power_peak_watts is the highest per-sample power over this window (at least "
        "--sample.interval; make it at least the scrape interval so no burst falls between "
        "scrapes).")
    power_budget_watts: float | dict[str, Any] | None = _s(
        "power.budget_watts", "budget", None,
        "Power budget exported as carbon_power_budget_watts for the CarbonPowerAboveBudget "
        "alert: watts for the node; in the config file also {node: W, gpu: W} (each GPU) or "
        "{node: W, gpu: {gpu-0: W, ...}}.", reloadable=True)
    carbon_zone: str | None = _s(
        "carbon.zone", "str", None,
        "Grid zone: an ISO 3166-1 alpha-2 country code (DE), a provider's zone id "
        "(US-MIDA-PJM) or a cloud region (aws:eu-west-1, gcp:europe-west4, azure:westeurope); "
        "default: the world average.", reloadable=True)
    carbon_intensity: float | None = _s(
        "carbon.intensity", "float", None,
        "Static grid intensity in gCO2e/kWh: replaces the dataset value for --carbon.zone "
        "(and is the fallback after any carbon.providers); at most 2000, the cap every "
        "provider's value is held to.",
        minimum=0, maximum=MAX_GRAMS_PER_KWH, reloadable=True)
    carbon_providers: tuple[ProviderSpec, ...] | None = _s(
        "carbon.providers", "providers", None,
        "Intensity providers in fallback order: a list in the config file (see Carbon "
        "providers), or comma-separated types for the simple case (ukgrid,dataset). "
        "The bundled dataset is always the last resort.", reloadable=True,
        parse=_parse_providers)
    carbon_pue: float = _s(
        "carbon.pue", "float", 1.0,
        "Power usage effectiveness of the facility (1 to 5), applied to operational emissions.",
        minimum=1, maximum=MAX_PUE, reloadable=True)
    cpu_model_idle_watts: float | None = _s(
        "cpu_model.idle_watts", "float", None,
        "CPU model: node CPU power at 0% utilisation in watts (default: the cloud's per-vCPU "
        "figures, else the bundled CPU table's TDP on the Teads curve, else per thread).",
        minimum=0, reloadable=True)
    cpu_model_max_watts: float | None = _s(
        "cpu_model.max_watts", "float", None,
        "CPU model: node CPU power at 100% utilisation in watts.", minimum=0, reloadable=True)
    cpu_model_idle_watts_per_thread: float = _s(
        "cpu_model.idle_watts_per_thread", "float", 0.74,
        "CPU model fallback: idle watts per hardware thread (Cloud Carbon Footprint).",
        minimum=0, reloadable=True)
    cpu_model_max_watts_per_thread: float = _s(
        "cpu_model.max_watts_per_thread", "float", 3.5,
        "CPU model fallback: full-load watts per hardware thread (Cloud Carbon Footprint).",
        minimum=0, reloadable=True)
    dram_model_watts_per_gib: float = _s(
        "dram_model.watts_per_gib", "float", 0.392,
        "DRAM model: watts per GiB of memory not covered by another figure (Cloud Carbon "
        "Footprint's 0.392 W per GB, whose sources count binary GB).",
        minimum=0, reloadable=True)
    attribution_cpu_idle_watts: float | None = _s(
        "attribution.cpu_idle_watts", "float", None,
        "CPU power with nothing running, reported as kind=\"idle\" (default: learned as the "
        "lowest per-sample CPU power over the last hour).", minimum=0, reloadable=True)
    attribution_gpu_idle_watts: float | None = _s(
        "attribution.gpu_idle_watts", "float", None,
        "Power of one GPU with nothing running, reported as kind=\"idle\" (default: the lowest "
        "power seen while it ran no process; none until it has been seen idle).", minimum=0,
        reloadable=True)
    attribution_dram_idle_watts: float | None = _s(
        "attribution.dram_idle_watts", "float", None,
        "DRAM power with nothing running (default: learned like the CPU's).",
        minimum=0, reloadable=True)
    attribution_max_workloads: int = _s(
        "attribution.max_workloads", "int", 500,
        "Workload series per component at most: the top N by recent energy; the rest is "
        "summed into kind=\"other\".", minimum=1, reloadable=True)
    attribution_processes: bool = _s(
        "attribution.processes", "bool", False,
        "Per-process series (kind=\"process\") for the top attribution.max-processes "
        "processes, carved out of their workload's series.")
    attribution_max_processes: int = _s(
        "attribution.max_processes", "int", 20,
        "Per-process series at most, when attribution.processes is on.",
        minimum=1, reloadable=True)
    attribution_grace_period: float = _s(
        "attribution.grace_period", "duration", "5m",
        "How long the series of a workload that ended (or left the top N) stays exported.",
        reloadable=True)
    attribution_rules_file: str | None = _s(
        "attribution.rules_file", "str", None,
        "YAML file of job-tagging rules that set the workload_job label (see README, "
        "Attribution).", reloadable=True)
    kubernetes_metadata: str = _s(
        "kubernetes.metadata", "choice", "auto",
        "Where pod names come from: kubelet (HTTPS :10250, service-account token), "
        "kubelet-readonly (HTTP :10255), apiserver (pods with spec.nodeName), none; auto = "
        "kubelet when a service-account token is mounted, else none.",
        choices=("auto", "kubelet", "kubelet-readonly", "apiserver", "none"))
    kubernetes_url: str | None = _s(
        "kubernetes.url", "str", None,
        "Base URL of the kubelet or API server (default: https://$NODE_IP:10250, "
        "http://$NODE_IP:10255 or https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
        "NODE_IP defaults to 127.0.0.1).")
    kubernetes_node_name: str | None = _s(
        "kubernetes.node_name", "str", None,
        "This node's name for the apiserver's spec.nodeName filter (default: $NODE_NAME).")
    kubernetes_token_file: str = _s(
        "kubernetes.token_file", "str", "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "Bearer token file (re-read at every refresh).")
    kubernetes_ca_file: str = _s(
        "kubernetes.ca_file", "str", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        "CA bundle that signs the kubelet's or API server's certificate.")
    kubernetes_insecure_skip_verify: bool = _s(
        "kubernetes.insecure_skip_verify", "bool", False,
        "Do not verify the TLS certificate (kubelets with self-signed serving certificates).")
    kubernetes_refresh_interval: float = _s(
        "kubernetes.refresh_interval", "duration", "30s",
        "How often pod metadata is refreshed (also at once for an unknown pod, at most "
        "every 5s).")
    kubernetes_timeout: float = _s(
        "kubernetes.timeout", "duration", "5s", "Timeout of one metadata request.")
    embodied_enabled: bool = _s(
        "embodied.enabled", "bool", True,
        "Amortise embodied (manufacturing) emissions of GPUs and the server into "
        "carbon_emissions_grams_total{scope=\"embodied\"}.", reloadable=True)
    embodied_gpu_kgco2e: float | None = _s(
        "embodied.gpu_kgco2e", "float", None,
        "Embodied kgCO2e per GPU (default: the bundled table by GPU name).",
        minimum=0, reloadable=True)
    embodied_server_kgco2e: float | None = _s(
        "embodied.server_kgco2e", "float", None,
        "Embodied kgCO2e of the server without its GPUs (default: none, or embodied.server_model).",
        minimum=0, reloadable=True)
    embodied_server_model: str | None = _s(
        "embodied.server_model", "str", None,
        "A server row of the bundled embodied table (exporter/data/embodied.csv), e.g. gpu-server.",
        reloadable=True)
    embodied_lifetime: float = _s(
        "embodied.lifetime", "duration", "4y",
        "Service life over which embodied emissions are spread evenly (Prometheus duration).",
        reloadable=True)
    runs_socket: str = _s(
        "runs.socket", "str", "/run/carbon-exporter/runs.sock",
        "Local Unix socket where `carbon-exporter run` and the Python API register a run "
        "with the daemon (it moves the caller into a cgroup named after the run); empty "
        "disables it. Nothing is exposed on the network.")
    log_level: str = _s(
        "log.level", "choice", "info", "Log level.",
        choices=("debug", "info", "warn", "error"), reloadable=True)
    log_format: str = _s(
        "log.format", "choice", "logfmt", "Log format.", choices=("logfmt", "json"))
    config_file: str | None = None  # --config.file, not a setting of its own

    def __post_init__(self) -> None:
        if self.power_peak_window < self.sample_interval:
            raise ConfigError(f"power.peak_window ({self.power_peak_window:g}s) must be at least "
                              f"sample.interval ({self.sample_interval:g}s)")
        if self.cpu_model_idle_watts is not None and self.cpu_model_max_watts is not None:
            if self.cpu_model_max_watts < self.cpu_model_idle_watts:
                raise ConfigError("cpu_model.max_watts must be at least cpu_model.idle_watts")

    def collector(self, name: str) -> bool:
        """Whether --collector.<name> is on."""
        return name in self.collectors


COLLECTORS_AFTER = "sample.interval"  # where the collector switches go in --help and README


def _collector_settings() -> list[Setting]:
    return [Setting(f"collector.{cls.name.replace('-', '_')}", "bool", cls.default_enabled,
                    f"Enable the {cls.name} collector (--no-collector.{cls.name} disables it).",
                    collector=cls.name)
            for cls in registry.registered()]


def _settings() -> tuple[Setting, ...]:
    out: list[Setting] = []
    for field in dataclasses.fields(Config):
        setting = field.metadata.get("setting")
        if setting is not None:
            out.append(setting)
            if setting.key == COLLECTORS_AFTER:
                out.extend(_collector_settings())
    return tuple(out)


SETTINGS: tuple[Setting, ...] = _settings()
BY_KEY = {s.key: s for s in SETTINGS}
COLLECTORS = tuple(s.collector for s in SETTINGS if s.collector is not None)


SECTIONS = frozenset(s.key.partition(".")[0] for s in SETTINGS)


def _field(path: str, origin: str) -> str:
    """Name the field the way the user wrote it: 'flag --carbon.pue', 'config file F: carbon.pue'."""
    if origin == "flag" and path in BY_KEY:
        return f"flag {BY_KEY[path].flag}"
    if origin == "environment" and path in BY_KEY:
        return f"environment {BY_KEY[path].env}"
    return f"{origin}: {path}" if path else origin


def validate_tree(tree: Any, origin: str) -> dict[str, Any]:
    """Validate a nested mapping of settings; return flat {dotted key: value}.

    Checked by hand, not with jsonschema: the daemon then never imports it unless a provider
    list or a rules file needs it. The words are confutil.describe_schema_error's."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{origin}: the file must hold a mapping, not {type(tree).__name__}")
    flat: dict[str, Any] = {}
    for section, values in tree.items():
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown key {section}")
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{_field(str(section), origin)} must be a mapping")
        for key, value in (values or {}).items():
            dotted = f"{section}.{key}"
            if dotted not in BY_KEY:
                raise ConfigError(f"{origin}: unknown key {dotted}")
            problem = BY_KEY[dotted].check_type(value)
            if problem is not None:
                raise ConfigError(f"{_field(dotted, origin)}: {shown(value)} {problem}")
            flat[dotted] = value
    for key, value in flat.items():
        _check_value(BY_KEY[key], value, _field(key, origin))
    return flat


def _check_value(setting: Setting, value: Any, where: str) -> None:
    if setting.kind == "float" and value is not None and not math.isfinite(value):
        raise ConfigError(f"{where}: {shown(value)} must be a finite number")
    if setting.kind == "duration":
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if setting.minimum is not None and seconds < setting.minimum:
            raise ConfigError(f"{where}: {shown(value)} must be at least {setting.minimum:g}s")
        if setting.minimum is None and seconds <= 0:
            raise ConfigError(f"{where}: {shown(value)} must be greater than 0")
        if setting.maximum is not None and seconds > setting.maximum:
            raise ConfigError(f"{where}: {shown(value)} must be at most {setting.maximum:g}s")
    if setting.check is not None and value is not None:
        try:
            setting.check(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if setting.parse is not None and value is not None:
        setting.parse(value, where)


def load_file(path: str) -> dict[str, Any]:
    """Read and validate a YAML config file; flat {dotted key: value}."""
    origin = f"config file {path}"
    return validate_tree(read_yaml(path, origin), origin)


def _coerce_env(setting: Setting, raw: str) -> Any:
    origin = f"environment {setting.env}"
    if setting.kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{origin}: {shown(raw)} is not a boolean (true/false)")
    if setting.kind in ("float", "budget"):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{origin}: {shown(raw)} is not a number") from None
    if setting.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{origin}: {shown(raw)} is not an integer") from None
    return raw


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    tree: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        tree.setdefault(section, {})[name] = value
    return tree


def from_environment(environ: dict[str, str]) -> dict[str, Any]:
    flat = {s.key: _coerce_env(s, environ[s.env]) for s in SETTINGS if s.env in environ}
    return validate_tree(_nest(flat), "environment")


def _from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    return validate_tree(_nest(flags), "flag")


def _finish(values: dict[str, Any]) -> Config:
    out: dict[str, Any] = {}
    collectors = set()
    for setting in SETTINGS:
        value = values.get(setting.key, setting.default)
        if setting.collector is not None:
            if value:
                collectors.add(setting.collector)
            continue
        if setting.kind == "duration":
            value = parse_duration(value)
        elif setting.kind == "float" and value is not None:
            value = float(value)
        if setting.parse is not None and value is not None:
            value = setting.parse(value, setting.key)
        out[setting.attr] = value
    return Config(**out, collectors=frozenset(collectors), config_file=values.get("config_file"))


def resolve(flags: dict[str, Any], config_file: str | None,
            environ: dict[str, str] | None = None) -> Config:
    """Merge defaults < config file < environment < flags into a Config, or raise ConfigError."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_file(config_file))
    values.update(from_environment(environ))
    values.update(_from_flags({k: v for k, v in flags.items() if v is not None}))
    values["config_file"] = config_file
    return _finish(values)


def defaults() -> Config:
    """The settings with nothing configured (tests, benchmarks, the Python API)."""
    return resolve({}, None, {})


def changed_keys(old: Config, new: Config) -> list[str]:
    return [s.key for s in SETTINGS if s.value_of(old) != s.value_of(new)]
