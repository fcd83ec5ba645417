"""Chassis power from the node's BMC over Redfish (DMTF DSP0266), polled off the sampling clock.

BMCs answer in seconds and rate-limit, so a poller thread of its own fetches the reading every
redfish.poll_interval (backing off on failures) and read() only hands the sampler the last
value, stamped at the sample: the ledger integrates it as power samples between polls, and a
slow or dead BMC never holds up a sample. A value older than MAX_AGE_POLLS poll intervals is
no longer used (the node total falls back to the components).

Where the reading comes from, first found wins, per chassis (DSP0268 schemas):
  Chassis/<id>/EnvironmentMetrics   PowerWatts.Reading                  (2020.4 and later)
  Chassis/<id>/Power                PowerControl[*].PowerConsumedWatts  (deprecated, universal):
                                    the entries with PhysicalContext "Chassis" summed, else the
                                    first entry; sub-system entries (CPU, memory) never summed
  Chassis/<id>/PowerSubsystem       PowerSupplies[*]/Metrics InputPowerWatts.Reading, summed
Only one chassis is used (redfish.chassis, else the first that reports power): an enclosure
and the node inside it both report, and adding them would count the node twice.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.carbon.secrets import Secret, load_secret, redact
from exporter.confutil import ConfigError
from exporter.ledger import PLATFORM, Reading
from exporter.sources import (
    ABSENT,
    ERROR,
    OK,
    PERMISSION,
    Source,
    SourceResult,
    Status,
)
from exporter.sources import (
    PLATFORM as PLATFORM_READING,
)
from exporter.sources.hwmon import MAX_PLATFORM_WATTS

if TYPE_CHECKING:
    from exporter.config import Config

log = logging.getLogger(__name__)

USERNAME_ENV = "CARBON_EXPORTER_REDFISH_USERNAME"
PASSWORD_ENV = "CARBON_EXPORTER_REDFISH_PASSWORD"
MAX_AGE_POLLS = 3  # a value is used for this many poll intervals after it was fetched
MAX_BACKOFF = 600.0  # seconds between attempts at most while the BMC keeps failing
MAX_BODY = 4 << 20  # a Redfish resource is kilobytes; more is not a BMC answering


class RedfishError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Poll:
    watts: float
    fetched_at: float  # Source.clock (monotonic)
    where: str  # the resource the value came from, for the status detail


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _link(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if isinstance(value, dict) and isinstance(value.get("@odata.id"), str):
        return value["@odata.id"]
    return None


def power_control_watts(doc: dict[str, Any]) -> float | None:
    """The chassis total from a Power resource's PowerControl array (see module doc)."""
    entries = [e for e in doc.get("PowerControl") or [] if isinstance(e, dict)]
    chassis = [e for e in entries if e.get("PhysicalContext") == "Chassis"]
    if chassis:
        values = [_number(e.get("PowerConsumedWatts")) for e in chassis]
        present = [v for v in values if v is not None]
        return sum(present) if present else None
    for entry in entries:
        if entry.get("PhysicalContext") not in (None, "Chassis"):
            continue  # a sub-system (CPU, Memory, StorageDevice...): part of the total
        value = _number(entry.get("PowerConsumedWatts"))
        if value is not None:
            return value
    return None


class RedfishClient:
    """Blocking GETs of Redfish resources (the poller thread's only)."""

    def __init__(self, url: str, username: Secret | None, password: Secret | None,
                 ca_file: str | None, insecure: bool, timeout: float) -> None:
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Accept": "application/json", "OData-Version": "4.0"}
        self._auth: Secret | None = None
        if username is not None and password is not None:
            token = base64.b64encode(
                f"{username.reveal()}:{password.reveal()}".encode()).decode()
            self._auth = Secret(f"Basic {token}")
        self.context: ssl.SSLContext | None = None
        if self.base.startswith("https://"):
            context = ssl.create_default_context(cafile=ca_file)
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.context = context

    def get(self, path: str) -> dict[str, Any]:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = dict(self.headers)
        if self._auth is not None:
            headers["Authorization"] = self._auth.reveal()
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self.context) as response:
                body = response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                if self._auth is None:
                    raise RedfishError(PERMISSION, (
                        f"the BMC wants credentials (HTTP {exc.code} for {path}) and none are "
                        f"configured: set redfish.username_file/_env and redfish.password_file/"
                        f"_env, or {USERNAME_ENV} and {PASSWORD_ENV}")) from None
                raise RedfishError(PERMISSION, (
                    f"the BMC refused the credentials (HTTP {exc.code} for {path}): check "
                    "redfish.username_file/_env and redfish.password_file/_env (BMCs lock an "
                    "account after repeated failures: retries back off)")) from None
            raise RedfishError(ERROR, f"HTTP {exc.code} for {path}") from None
        except urllib.error.URLError as exc:
            why = exc.reason
            if isinstance(why, ssl.SSLCertVerificationError):
                raise RedfishError(ERROR, (
                    f"TLS certificate of {self.base} not trusted ({why.verify_message}): set "
                    "redfish.ca_file to the CA that signed it, or redfish.insecure_skip_verify "
                    "(BMCs ship self-signed certificates)")) from None
            if isinstance(why, TimeoutError):  # socket.timeout is TimeoutError
                raise RedfishError(ERROR, f"no answer within {self.timeout:g}s from {url}") \
                    from None
            raise RedfishError(ERROR, f"cannot reach {url}: {why}") from None
        except TimeoutError:
            raise RedfishError(ERROR, f"no answer within {self.timeout:g}s from {url}") from None
        except (OSError, ValueError) as exc:  # connection reset mid-body, bad URL
            raise RedfishError(ERROR, f"{url}: {exc}") from None
        if len(body) > MAX_BODY:
            raise RedfishError(ERROR, f"{path}: answer larger than {MAX_BODY >> 20} MiB")
        try:
            doc = json.loads(body)
        except ValueError:
            raise RedfishError(ERROR, f"{path}: answer is not JSON") from None
        if not isinstance(doc, dict):
            raise RedfishError(ERROR, f"{path}: answer is not a JSON object")
        return doc


class ChassisPower:
    """Finds where a chassis reports power once, then reads only that each poll."""

    def __init__(self, client: RedfishClient, chassis: str | None) -> None:
        self.client = client
        self.chassis = chassis
        self.reader: Callable[[], float | None] | None = None
        self.where = ""

    def _candidates(self) -> list[str]:
        if self.chassis:
            return [f"/redfish/v1/Chassis/{self.chassis}"]
        root = self.client.get("/redfish/v1/")
        collection = _link(root, "Chassis") or "/redfish/v1/Chassis"
        members = self.client.get(collection).get("Members") or []
        return [m["@odata.id"] for m in members
                if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)]

    def _reader_for(self, chassis_uri: str) -> tuple[Callable[[], float | None], str] | None:
        doc = self.client.get(chassis_uri)
        get = self.client.get
        metrics = _link(doc, "EnvironmentMetrics")
        if metrics is not None:
            def environment() -> float | None:
                reading = get(metrics).get("PowerWatts")
                return _number(reading.get("Reading")) if isinstance(reading, dict) else None
            if environment() is not None:
                return environment, f"{metrics} PowerWatts"
        power = _link(doc, "Power")
        if power is not None:
            def power_control() -> float | None:
                return power_control_watts(get(power))
            if power_control() is not None:
                return power_control, f"{power} PowerControl"
        subsystem = _link(doc, "PowerSubsystem")
        if subsystem is not None:
            supplies = _link(get(subsystem), "PowerSupplies")
            members = get(supplies).get("Members") or [] if supplies else []
            uris = [_link(get(m["@odata.id"]), "Metrics") for m in members
                    if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)]
            uris_found = [u for u in uris if u is not None]

            def supplies_input() -> float | None:
                values = []
                for uri in uris_found:
                    reading = get(uri).get("InputPowerWatts")
                    values.append(_number(reading.get("Reading"))
                                  if isinstance(reading, dict) else None)
                if not values or any(v is None for v in values):
                    return None  # a supply without a reading: the sum would be short
                return sum(v for v in values if v is not None)
            if uris_found and supplies_input() is not None:
                return supplies_input, f"{subsystem} power supplies' InputPowerWatts"
        return None

    def device(self) -> str:
        return "chassis-" + self.where.split("/redfish/v1/Chassis/", 1)[-1].split("/", 1)[0]

    def read(self) -> float:
        if self.reader is not None:
            try:
                value = self.reader()
            except RedfishError as exc:
                if exc.detail.startswith("HTTP 404"):
                    self.reader = None  # the BMC's layout changed (firmware update)
                raise
            if value is None:
                self.reader = None
                raise RedfishError(ERROR, f"{self.where}: no power reading in the answer")
            return value
        candidates = self._candidates()
        for uri in candidates:
            found = self._reader_for(uri)
            if found is not None:
                self.reader, self.where = found
                log.info("redfish: chassis power from %s", self.where)
                return self.read()
        named = ", ".join(candidates) or "no chassis"
        raise RedfishError(ABSENT, f"no power reading in {named} (EnvironmentMetrics, Power, "
                                   "PowerSubsystem)")


class RedfishSource(Source):
    name = "redfish"
    # read() only hands over the poller thread's last value; the network is never touched
    # in a sample
    components = ()  # the chassis reading is no component: the node total
    provides = frozenset({PLATFORM_READING})
    source_labels = ("redfish",)
    summary = (
        "the BMC's chassis power over Redfish as the platform reading (see Power at the "
        "wall), polled every `redfish.poll_interval` on a thread of its own; absent without "
        "`redfish.url`.")

    @classmethod
    def from_config(cls, config: Config) -> RedfishSource:
        source = cls(config)
        source.start()  # the first poll runs while the daemon starts, not at the first sample
        return source

    def __init__(self, config: Config) -> None:
        self.url = config.redfish_url
        self.poll_interval = float(config.redfish_poll_interval)
        self.max_age = MAX_AGE_POLLS * self.poll_interval
        self.power: ChassisPower | None = None
        if self.url:
            username = load_secret("redfish", "username", config.redfish_username_file,
                                   config.redfish_username_env, USERNAME_ENV)
            password = load_secret("redfish", "password", config.redfish_password_file,
                                   config.redfish_password_env, PASSWORD_ENV)
            if (username is None) != (password is None):
                raise ConfigError("redfish: set both a username and a password (username_file/"
                                  "_env, password_file/_env) or neither")
            client = RedfishClient(self.url, username, password, config.redfish_ca_file,
                                   config.redfish_insecure_skip_verify,
                                   float(config.redfish_timeout))
            self.power = ChassisPower(client, config.redfish_chassis)
        self._lock = threading.Lock()
        self._last: Poll | None = None
        self._status = Status(ERROR, "not polled yet")
        self._failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0

    # --- poller thread ------------------------------------------------------------------

    def poll_once(self) -> None:
        assert self.power is not None
        try:
            watts = self.power.read()
        except RedfishError as exc:
            self._failures += 1
            status = Status(exc.reason, redact(exc.detail))
        except Exception as exc:  # a parser bug must not end the poller
            log.exception("redfish poll failed")
            self._failures += 1
            status = Status(ERROR, redact(f"{type(exc).__name__}: {exc}"))
        else:
            self._failures = 0
            if watts > MAX_PLATFORM_WATTS:
                status = Status(ERROR, f"{self.power.where}: {watts:g} W is implausible")
            else:
                with self._lock:
                    self._last = Poll(watts, self.clock(), self.power.where)
                status = Status(OK, f"{self.power.where}, every {self.poll_interval:g}s")
        with self._lock:
            self._status = status
            self.polls += 1

    def next_delay(self) -> float:
        """Poll interval, doubled per consecutive failure; refused credentials go straight to
        the longest wait, so the exporter does not lock the BMC account."""
        if self._failures == 0:
            return self.poll_interval
        if self._status.reason == PERMISSION:
            return max(self.poll_interval, MAX_BACKOFF)
        return min(self.poll_interval * 2 ** self._failures, max(self.poll_interval, MAX_BACKOFF))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.next_delay())

    def start(self) -> None:
        if self.power is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="redfish-poller", daemon=True)
            self._thread.start()

    # --- sampler ------------------------------------------------------------------------

    def read(self, covered: frozenset[str] = frozenset()) -> SourceResult:
        if self.power is None:
            return SourceResult(Status(ABSENT, "no redfish.url configured"))
        self.start()
        now = self.clock()
        with self._lock:
            last, status = self._last, self._status
        if last is None:
            return SourceResult(status)
        age = now - last.fetched_at
        if age > self.max_age:
            return SourceResult(Status(
                status.reason if not status.up else ERROR,
                f"last reading {age:.0f}s old, not used (older than {self.max_age:g}s)"
                + (f"; {status.detail}" if not status.up else "")))
        reading = Reading(collector=self.name, device=self.power.device(), source="redfish",
                          value=last.watts, at=now, counter=False,
                          max_watts=MAX_PLATFORM_WATTS, component=None, domain=PLATFORM)
        if not status.up:
            status = Status(status.reason, f"{status.detail}; using the reading from "
                                           f"{age:.0f}s ago")
        return SourceResult(status, [reading])

    def close(self) -> None:
        self._stop.set()
