"""Settings: one table drives the flags, the environment variables, the YAML schema and the README.

Precedence: flags > environment (CARBON_EXPORTER_*) > config file > defaults.
Every error names the field and says what is wrong, in one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """A bad setting; the message is one line that names the field."""


_DURATION_RE = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def parse_duration(value: Any) -> float:
    """Seconds from a Prometheus duration ('500ms', '1m30s') or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            number = None
    if number is not None:
        if not math.isfinite(number):  # nan/inf parse as floats but are no interval
            raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 1s, 1m30s or 0.5)")
        return number
    text = str(value).strip()
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 1s, 1m30s or 0.5)")
    return sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS) if g)


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path in the YAML file, e.g. "carbon.pue"
    kind: str  # str, bool, int, float, duration, choice, providers (a structured list)
    default: Any
    help: str
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    reloadable: bool = False  # applied on SIGHUP without a restart
    flag_name: str | None = None  # where convention differs from the key (--web.config.file)

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return "CARBON_EXPORTER_" + re.sub(r"[.\-]", "_", self.key).upper()

    @property
    def attr(self) -> str:
        return self.key.replace(".", "_")

    def schema(self) -> dict[str, Any]:
        if self.kind == "bool":
            return {"type": "boolean"}
        if self.kind == "str":
            return {"type": ["string", "null"]}
        if self.kind == "choice":
            return {"enum": list(self.choices)}
        if self.kind == "duration":
            return {"type": ["number", "string"]}
        if self.kind == "providers":  # checked in depth by exporter.carbon.providers.spec
            return {"type": ["array", "string", "null"]}
        number: dict[str, Any] = {"type": ["integer" if self.kind == "int" else "number", "null"]}
        if self.minimum is not None:
            number["minimum"] = self.minimum
        if self.above is not None:
            number["exclusiveMinimum"] = self.above
        return number


COLLECTORS = ("rapl", "nvml", "hwmon", "redfish", "cpu-model", "dram-model", "attribution")

SETTINGS: tuple[Setting, ...] = (
    Setting("web.listen_address", "str", "127.0.0.1:9875",
            "Address to listen on for HTTP requests ([host]:port; ':9875' is every interface: "
            "use it with --web.config.file or a firewall)."),
    Setting("web.telemetry_path", "str", "/metrics", "Path under which metrics are exposed."),
    Setting("web.config_file", "str", None,
            "Web config file (exporter-toolkit format): TLS, mutual TLS, basic auth, headers. "
            "Reloaded when it or its certificates change.", flag_name="--web.config.file"),
    Setting("web.max_requests", "int", 40,
            "Maximum number of concurrent requests (scrapes); more get 503. 0 means no limit.",
            minimum=0),
    Setting("path.sysfs", "str", "/sys", "sysfs mount point (RAPL under class/powercap, power meters under class/hwmon)."),
    Setting("path.procfs", "str", "/proc", "procfs mount point (CPU times, memory size)."),
    Setting("sample.interval", "duration", "1s",
            "How often sources are read: a Prometheus duration (500ms, 1s) or seconds (0.5)."),
    *(Setting(f"collector.{name.replace('-', '_')}", "bool", True,
              f"Enable the {name} collector (--no-collector.{name} disables it).")
      for name in COLLECTORS),
    Setting("rapl.min_interval", "duration", "0s",
            "Read RAPL energy counters at most this often (e.g. 1s), whatever --sample.interval, "
            "to bound the energy resolution scrapers see (Platypus side channel). 0s: every "
            "sample.", minimum=0, reloadable=True),
    Setting("redfish.url", "str", None,
            "Base URL of this node's BMC for the redfish collector (https://10.0.0.5); unset: "
            "the collector reports absent."),
    Setting("redfish.username_file", "str", None, "File holding the BMC user name."),
    Setting("redfish.username_env", "str", None,
            "Environment variable holding the BMC user name (default: "
            "CARBON_EXPORTER_REDFISH_USERNAME)."),
    Setting("redfish.password_file", "str", None, "File holding the BMC password."),
    Setting("redfish.password_env", "str", None,
            "Environment variable holding the BMC password (default: "
            "CARBON_EXPORTER_REDFISH_PASSWORD)."),
    Setting("redfish.ca_file", "str", None,
            "CA bundle that signs the BMC's certificate (default: the system's)."),
    Setting("redfish.insecure_skip_verify", "bool", False,
            "Do not verify the BMC's TLS certificate (self-signed BMC certificates)."),
    Setting("redfish.timeout", "duration", "10s", "Timeout of one Redfish request."),
    Setting("redfish.poll_interval", "duration", "15s",
            "How often the BMC is asked for chassis power (its own timer, doubled per failure "
            "up to 10m); the last value stands for the node between polls."),
    Setting("redfish.chassis", "str", None,
            "Chassis id whose power is the node's (default: the first chassis that reports "
            "power)."),
    Setting("carbon.zone", "str", None,
            "Grid zone: an ISO 3166-1 alpha-2 country code (DE), a provider's zone id "
            "(US-MIDA-PJM) or a cloud region (aws:eu-west-1, gcp:europe-west4, azure:westeurope); "
            "default: the world average.", reloadable=True),
    Setting("carbon.intensity", "float", None,
            "Static grid intensity in gCO2e/kWh: replaces the dataset value for --carbon.zone "
            "(and is the fallback after any carbon.providers).",
            minimum=0, reloadable=True),
    Setting("carbon.providers", "providers", None,
            "Intensity providers in fallback order: a list in the config file (see Carbon "
            "providers), or comma-separated types for the simple case (ukgrid,dataset). "
            "The bundled dataset is always the last resort.", reloadable=True),
    Setting("carbon.pue", "float", 1.0,
            "Power usage effectiveness of the facility (>= 1), applied to operational emissions.",
            minimum=1, reloadable=True),
    Setting("cpu_model.idle_watts", "float", None,
            "CPU model: node CPU power at 0% utilisation in watts (default: the cloud's per-vCPU "
            "figures, else the bundled CPU table's TDP on the Teads curve, else per thread).", minimum=0, reloadable=True),
    Setting("cpu_model.max_watts", "float", None,
            "CPU model: node CPU power at 100% utilisation in watts.", minimum=0, reloadable=True),
    Setting("cpu_model.idle_watts_per_thread", "float", 0.74,
            "CPU model fallback: idle watts per hardware thread (Cloud Carbon Footprint).",
            minimum=0, reloadable=True),
    Setting("cpu_model.max_watts_per_thread", "float", 3.5,
            "CPU model fallback: full-load watts per hardware thread (Cloud Carbon Footprint).",
            minimum=0, reloadable=True),
    Setting("dram_model.watts_per_gib", "float", 0.392,
            "DRAM model: watts per GiB of memory not covered by another figure (Cloud Carbon "
            "Footprint's 0.392 W per GB, whose sources count binary GB).",
            minimum=0, reloadable=True),
    Setting("attribution.cpu_idle_watts", "float", None,
            "CPU power with nothing running, reported as kind=\"idle\" (default: learned as the "
            "lowest per-sample CPU power over the last hour).", minimum=0, reloadable=True),
    Setting("attribution.dram_idle_watts", "float", None,
            "DRAM power with nothing running (default: learned like the CPU's).",
            minimum=0, reloadable=True),
    Setting("attribution.max_workloads", "int", 500,
            "Workload series per component at most: the top N by recent energy; the rest is "
            "summed into kind=\"other\".", minimum=1, reloadable=True),
    Setting("attribution.processes", "bool", False,
            "Per-process series (kind=\"process\") for the top attribution.max-processes "
            "processes, carved out of their workload's series."),
    Setting("attribution.max_processes", "int", 20,
            "Per-process series at most, when attribution.processes is on.",
            minimum=1, reloadable=True),
    Setting("attribution.grace_period", "duration", "5m",
            "How long the series of a workload that ended (or left the top N) stays exported.",
            reloadable=True),
    Setting("attribution.rules_file", "str", None,
            "YAML file of job-tagging rules that set the workload_job label (see README, "
            "Attribution).", reloadable=True),
    Setting("kubernetes.metadata", "choice", "auto",
            "Where pod names come from: kubelet (HTTPS :10250, service-account token), "
            "kubelet-readonly (HTTP :10255), apiserver (pods with spec.nodeName), none; auto = "
            "kubelet when a service-account token is mounted, else none.",
            choices=("auto", "kubelet", "kubelet-readonly", "apiserver", "none")),
    Setting("kubernetes.url", "str", None,
            "Base URL of the kubelet or API server (default: https://$NODE_IP:10250, "
            "http://$NODE_IP:10255 or https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; "
            "NODE_IP defaults to 127.0.0.1)."),
    Setting("kubernetes.node_name", "str", None,
            "This node's name for the apiserver's spec.nodeName filter (default: $NODE_NAME)."),
    Setting("kubernetes.token_file", "str", "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "Bearer token file (re-read at every refresh)."),
    Setting("kubernetes.ca_file", "str", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "CA bundle that signs the kubelet's or API server's certificate."),
    Setting("kubernetes.insecure_skip_verify", "bool", False,
            "Do not verify the TLS certificate (kubelets with self-signed serving certificates)."),
    Setting("kubernetes.refresh_interval", "duration", "30s",
            "How often pod metadata is refreshed (also at once for an unknown pod, at most "
            "every 5s)."),
    Setting("kubernetes.timeout", "duration", "5s", "Timeout of one metadata request."),
    Setting("embodied.enabled", "bool", True,
            "Amortise embodied (manufacturing) emissions of GPUs and the server into "
            "carbon_emissions_grams_total{scope=\"embodied\"}.", reloadable=True),
    Setting("embodied.gpu_kgco2e", "float", None,
            "Embodied kgCO2e per GPU (default: the bundled table by GPU name).",
            minimum=0, reloadable=True),
    Setting("embodied.server_kgco2e", "float", None,
            "Embodied kgCO2e of the server without its GPUs (default: none, or embodied.server_model).",
            minimum=0, reloadable=True),
    Setting("embodied.server_model", "str", None,
            "A server row of the bundled embodied table (exporter/data/embodied.csv), e.g. gpu-server.",
            reloadable=True),
    Setting("embodied.lifetime", "duration", "4y",
            "Service life over which embodied emissions are spread evenly (Prometheus duration).",
            reloadable=True),
    Setting("runs.socket", "str", "/run/carbon-exporter/runs.sock",
            "Local Unix socket where `carbon-exporter run` and the Python API register a run "
            "with the daemon (it moves the caller into a cgroup named after the run); empty "
            "disables it. Nothing is exposed on the network."),
    Setting("log.level", "choice", "info", "Log level.",
            choices=("debug", "info", "warn", "error"), reloadable=True),
    Setting("log.format", "choice", "logfmt", "Log format.", choices=("logfmt", "json")),
)

BY_KEY = {s.key: s for s in SETTINGS}


def _nested_schema() -> dict[str, Any]:
    root: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}
    for setting in SETTINGS:
        section, _, name = setting.key.partition(".")
        group = root["properties"].setdefault(  # an empty section (`carbon:`) is allowed
            section, {"type": ["object", "null"], "additionalProperties": False, "properties": {}}
        )
        group["properties"][name] = setting.schema()
    return root


SCHEMA = _nested_schema()
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


_TYPE_WORDS = {"number": "a number", "integer": "an integer", "string": "a string",
               "boolean": "true or false",
               "object": "a mapping", "null": "empty"}


def _field(path: str, origin: str) -> str:
    """Name the field the way the user wrote it: 'flag --carbon.pue', 'config file F: carbon.pue'."""
    if origin == "flag" and path in BY_KEY:
        return f"flag {BY_KEY[path].flag}"
    if origin == "environment" and path in BY_KEY:
        return f"environment {BY_KEY[path].env}"
    return f"{origin}: {path}"


def _describe(error: jsonschema.ValidationError, origin: str) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    where = _field(path, origin)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return f"{origin}: unknown key {prefix}{extra[0]!s}"
    if error.validator == "type" and not path:
        return f"{origin}: the file must hold a mapping of sections, not {type(error.instance).__name__}"
    if error.validator == "type" and len(error.absolute_path) == 1:
        return f"{where} must be a mapping of settings"
    if error.validator == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted if t != "null")
        return f"{where}: {error.instance!r} must be {words}"
    if error.validator in ("minimum", "exclusiveMinimum"):
        bound = error.validator_value
        relation = "at least" if error.validator == "minimum" else "greater than"
        return f"{where}: {error.instance!r} must be {relation} {bound:g}"
    if error.validator == "enum":
        return f"{where}: {error.instance!r} must be one of {', '.join(map(str, error.validator_value))}"
    return f"{where}: {error.message}"


def validate_tree(tree: Any, origin: str) -> dict[str, Any]:
    """Validate a nested mapping against the schema; return flat {dotted key: value}."""
    if tree is None:
        tree = {}
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(tree))
    if error is not None:
        raise ConfigError(_describe(error, origin))
    flat: dict[str, Any] = {}
    for section, values in tree.items():
        for name, value in (values or {}).items():
            flat[f"{section}.{name}"] = value
    for key, value in flat.items():
        _check_value(BY_KEY[key], value, origin)
    return flat


def _check_value(setting: Setting, value: Any, origin: str) -> None:
    where = _field(setting.key, origin)
    if setting.kind == "float" and value is not None and not math.isfinite(value):
        raise ConfigError(f"{where}: {value!r} must be a finite number")
    if setting.kind == "duration":
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if setting.minimum is not None and seconds < setting.minimum:
            raise ConfigError(f"{where}: {value!r} must be at least {setting.minimum:g}s")
        if setting.minimum is None and seconds <= 0:
            raise ConfigError(f"{where}: {value!r} must be greater than 0")
    if setting.kind == "providers":
        from exporter.carbon.providers.spec import parse_chain  # late: carbon imports config
        parse_chain(value, where)
    if setting.key == "web.telemetry_path" and not str(value).startswith("/"):
        raise ConfigError(f"{where}: {value!r} must start with /")
    if setting.key == "web.listen_address":
        try:
            split_listen_address(str(value))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def split_listen_address(address: str) -> tuple[str | None, int]:
    """':9875' -> (None, 9875); '127.0.0.1:9875'; '[::1]:9875'."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not [host]:port with a port in 1-65535")
    host = host.strip("[]")
    return (host or None), int(port)


def read_yaml(path: str, origin: str) -> Any:
    """Parse a YAML file; ConfigError with `origin` and the line on any problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{origin}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{origin}{where}: {problem}") from None


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
        raise ConfigError(f"{origin}: {raw!r} is not a boolean (true/false)")
    if setting.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{origin}: {raw!r} is not a number") from None
    if setting.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{origin}: {raw!r} is not an integer") from None
    return raw


def from_environment(environ: dict[str, str]) -> dict[str, Any]:
    flat = {}
    for setting in SETTINGS:
        if setting.env in environ:
            flat[setting.key] = _coerce_env(setting, environ[setting.env])
    tree: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        tree.setdefault(section, {})[name] = value
    return validate_tree(tree, "environment")


def _from_flags(flags: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, dict[str, Any]] = {}
    for key, value in flags.items():
        section, _, name = key.partition(".")
        tree.setdefault(section, {})[name] = value
    return validate_tree(tree, "flag")


Config = dataclasses.make_dataclass(
    "Config",
    [(s.attr, Any, dataclasses.field(default=s.default)) for s in SETTINGS]
    + [("config_file", Any, dataclasses.field(default=None))],
    frozen=True,
)
Config.__doc__ = "Resolved settings; attribute names are the dotted keys with '.' -> '_'."


def _finish(values: dict[str, Any]) -> Any:
    out = {}
    for setting in SETTINGS:
        value = values.get(setting.key, setting.default)
        if setting.kind == "duration":
            value = parse_duration(value)
        elif setting.kind == "float" and value is not None:
            value = float(value)
        elif setting.kind == "providers" and value is not None:
            from exporter.carbon.providers.spec import parse_chain
            value = parse_chain(value, setting.key)
        out[setting.attr] = value
    config = Config(**out, config_file=values.get("config_file"))
    if config.cpu_model_idle_watts is not None and config.cpu_model_max_watts is not None:
        if config.cpu_model_max_watts < config.cpu_model_idle_watts:
            raise ConfigError("cpu_model.max_watts must be at least cpu_model.idle_watts")
    return config


def resolve(flags: dict[str, Any], config_file: str | None, environ: dict[str, str] | None = None) -> Any:
    """Merge defaults < config file < environment < flags into a Config, or raise ConfigError."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_file(config_file))
    values.update(from_environment(environ))
    values.update(_from_flags({k: v for k, v in flags.items() if v is not None}))
    values["config_file"] = config_file
    return _finish(values)


def changed_keys(old: Any, new: Any) -> list[str]:
    return [s.key for s in SETTINGS if getattr(old, s.attr) != getattr(new, s.attr)]
