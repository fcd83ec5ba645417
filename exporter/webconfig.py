"""--web.config.file: TLS, mutual TLS, basic auth and response headers in the Prometheus
exporter-toolkit format (docs/web-configuration.md of prometheus/exporter-toolkit), plus the
limit on concurrent requests.

    tls_server_config:
      cert_file: server.crt          # PEM
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # mutual TLS; needs client_ca_file
      client_ca_file: clients-ca.crt
      client_allowed_sans: [prometheus.example]
      min_version: TLS12             # default TLS12
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS 1.2 and older only
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$10$...         # bcrypt hash

The file and the certificate files it names are checked for changes every second (cert
rotation by cert-manager changes the files, not the config) and on SIGHUP; a change that
does not load is logged and the previous configuration stays in force. Each new TLS
connection uses the context in force when it arrives. Turning TLS on or off needs a
restart, as in the exporter toolkit.

Where Python's ssl module cannot do what the toolkit does, the file is refused with a
clear error rather than silently weakened: client_auth_type RequestClientCert and
RequireAnyClientCert (they accept unverified certificates), inline cert/key, and
curve_preferences. http2 is accepted and ignored (aiohttp serves HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from exporter.auth import BasicAuthGate, Verdict, bcrypt_cost, decoy_hash
from exporter.confutil import ConfigError, read_yaml

log = logging.getLogger(__name__)

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go crypto/tls names (the secure list, tls.CipherSuites()) -> OpenSSL names. TLS 1.3
# suites are not configurable in Go either; they are accepted and always enabled.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")

HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")

TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "client_ca",
            "client_allowed_sans", "min_version", "max_version", "cipher_suites",
            "prefer_server_cipher_suites", "cert", "key", "curve_preferences"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}

# Paths that stay open without basic auth: liveness probes and HEALTHCHECK carry no secret,
# and /healthz reveals nothing but "ok". TLS still applies to them.
OPEN_PATHS = frozenset({"/healthz"})


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_auth: str = "NoClientCert"
    client_ca_file: str | None = None
    client_ca: str | None = None
    allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    ciphers: tuple[str, ...] = ()
    prefer_server_ciphers: bool = True


@dataclass(frozen=True)
class WebConfig:
    path: str | None = None
    tls: TlsConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    decoy: bytes = b""  # checked for unknown users, at the users' bcrypt cost

    @property
    def watched(self) -> tuple[str, ...]:
        """Files whose change means a reload."""
        files = [self.path] if self.path else []
        if self.tls:
            files += [self.tls.cert_file, self.tls.key_file]
            if self.tls.client_ca_file:
                files.append(self.tls.client_ca_file)
        return tuple(files)


def _fail(path: str, where: str, what: str) -> ConfigError:
    return ConfigError(f"web config file {path}: {where}: {what}" if where
                       else f"web config file {path}: {what}")


def _string(path: str, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, where, f"{value!r} must be a non-empty string")
    return value


def _mapping(path: str, where: str, value: Any, allowed: set[str] | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, "must be a mapping")
    if allowed is not None:
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise _fail(path, "", f"unknown key {where + '.' if where else ''}{unknown[0]}")
    return value


def _file(path: str, where: str, value: Any) -> str:
    name = _string(path, where, value)
    # Relative paths are relative to the web config file, as in the exporter toolkit.
    full = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    try:
        with open(full, "rb"):
            pass
    except OSError as exc:
        raise _fail(path, where, f"{full}: {exc.strerror}") from None
    return full


def _parse_tls(path: str, raw: dict) -> TlsConfig | None:
    if not raw:
        return None
    where = "tls_server_config"
    for unsupported, why in (("cert", "give the certificate as cert_file"),
                             ("key", "give the key as key_file"),
                             ("curve_preferences", "the OpenSSL defaults are used")):
        if unsupported in raw:
            raise _fail(path, f"{where}.{unsupported}", f"not supported by carbon-exporter ({why})")
    if "cert_file" not in raw or "key_file" not in raw:
        raise _fail(path, where, "cert_file and key_file are both required")
    client_auth = raw.get("client_auth_type", "NoClientCert")
    if client_auth in UNVERIFIED_CLIENT_AUTH:
        raise _fail(path, f"{where}.client_auth_type",
                    f"{client_auth} accepts unverified client certificates; use "
                    "RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file")
    if client_auth not in CLIENT_AUTH:
        raise _fail(path, f"{where}.client_auth_type",
                    f"{client_auth!r} must be one of {', '.join(CLIENT_AUTH)}")
    ca_file = _file(path, f"{where}.client_ca_file", raw["client_ca_file"]) \
        if raw.get("client_ca_file") else None
    ca_inline = _string(path, f"{where}.client_ca", raw["client_ca"]) if raw.get("client_ca") else None
    if ca_file and ca_inline:
        raise _fail(path, where, "give client_ca_file or client_ca, not both")
    if client_auth != "NoClientCert" and not (ca_file or ca_inline):
        raise _fail(path, f"{where}.client_auth_type",
                    f"{client_auth} needs client_ca_file to verify client certificates")
    sans = raw.get("client_allowed_sans") or []
    if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
        raise _fail(path, f"{where}.client_allowed_sans", "must be a list of strings")
    if sans and client_auth != "RequireAndVerifyClientCert":
        raise _fail(path, f"{where}.client_allowed_sans",
                    "needs client_auth_type RequireAndVerifyClientCert")
    versions = {}
    for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = raw.get(key, default)
        if value not in TLS_VERSIONS:
            raise _fail(path, f"{where}.{key}", f"{value!r} must be one of {', '.join(TLS_VERSIONS)}")
        versions[key] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise _fail(path, where, "min_version is above max_version")
    suites = raw.get("cipher_suites") or []
    if not isinstance(suites, list):
        raise _fail(path, f"{where}.cipher_suites", "must be a list of cipher suite names")
    ciphers = []
    for suite in suites:
        if suite in TLS13_SUITES:
            continue
        if suite not in CIPHER_SUITES:
            raise _fail(path, f"{where}.cipher_suites",
                        f"{suite!r} is not a supported suite (Go names, e.g. "
                        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)")
        ciphers.append(CIPHER_SUITES[suite])
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _fail(path, f"{where}.prefer_server_cipher_suites", f"{prefer!r} must be true or false")
    return TlsConfig(
        cert_file=_file(path, f"{where}.cert_file", raw["cert_file"]),
        key_file=_file(path, f"{where}.key_file", raw["key_file"]),
        client_auth=client_auth, client_ca_file=ca_file, client_ca=ca_inline,
        allowed_sans=tuple(sans), min_version=versions["min_version"],
        max_version=versions["max_version"], ciphers=tuple(ciphers), prefer_server_ciphers=prefer)


def _parse_users(path: str, raw: Any) -> dict[str, bytes]:
    users = {}
    for user, hashed in _mapping(path, "basic_auth_users", raw, None).items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise _fail(path, "basic_auth_users", f"{user!r} is not a valid user name")
        text = _string(path, where, hashed)
        # $2y$ (htpasswd -B) is the same algorithm as $2b$; the bcrypt package wants 2a/2b.
        if text.startswith("$2y$"):
            text = "$2b$" + text[4:]
        if bcrypt_cost(text.encode()) is None:
            # not echoed: it is a secret, and may be anything up to the file's size
            raise _fail(path, where, "is not a bcrypt hash (e.g. from htpasswd -nBC 10 \"\" | "
                                     "tr -d ':\\n')")
        users[user] = text.encode()
    return users


def _decoy(users: dict[str, bytes]) -> bytes:
    """A hash of the highest cost among the users (they normally share one), so that an
    unknown user costs what a known one does."""
    if not users:
        return b""
    return decoy_hash(max(bcrypt_cost(h) or 10 for h in users.values()))


def _parse_http(path: str, raw: Any) -> dict[str, str]:
    http = _mapping(path, "http_server_config", raw, {"http2", "headers"})
    if "http2" in http and not isinstance(http["http2"], bool):
        raise _fail(path, "http_server_config.http2", f"{http['http2']!r} must be true or false")
    headers = {}
    for name, value in _mapping(path, "http_server_config.headers", http.get("headers"),
                                set(HEADERS)).items():
        if value in (None, ""):
            continue  # blank means unset in the toolkit
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise _fail(path, f"http_server_config.headers.{name}", "must be a one-line string")
        headers[name] = value
    return headers


def load_web_config(path: str | None) -> WebConfig:
    """Read and validate the file; ConfigError with one line naming the field."""
    if not path:
        return WebConfig()
    tree = read_yaml(path, f"web config file {path}")
    tree = _mapping(path, "", tree, TOP_KEYS)
    if tree.get("rate_limit"):
        raise _fail(path, "rate_limit", "not supported by carbon-exporter (use --web.max-requests)")
    tls = _parse_tls(path, _mapping(path, "tls_server_config", tree.get("tls_server_config"),
                                    TLS_KEYS))
    users = _parse_users(path, tree.get("basic_auth_users"))
    config = WebConfig(path=path, tls=tls, users=users, decoy=_decoy(users),
                       headers=_parse_http(path, tree.get("http_server_config")))
    if tls:
        build_ssl_context(config)  # a key that does not match the cert fails here, not later
    return config


def build_ssl_context(config: WebConfig) -> ssl.SSLContext:
    tls = config.tls
    assert tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"web config file {config.path}: tls_server_config: cannot load "
                          f"cert_file/key_file: {exc.reason or exc}") from None
    if tls.ciphers:
        context.set_ciphers(":".join(tls.ciphers))
    if tls.prefer_server_ciphers:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.verify_mode = CLIENT_AUTH[tls.client_auth]
    if tls.client_ca_file or tls.client_ca:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file, cadata=tls.client_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"web config file {config.path}: tls_server_config: cannot load "
                              f"the client CA: {getattr(exc, 'reason', None) or exc}") from None
    return context


class ReloadableSSLContext(ssl.SSLContext):
    """The context given to the listening socket once; each new connection is set up by
    the context in force at that moment (asyncio creates every TLS connection through
    SSLContext.wrap_bio), so certificates and client CAs reload without a restart."""

    def __new__(cls, current: ssl.SSLContext) -> "ReloadableSSLContext":
        return super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)

    def __init__(self, current: ssl.SSLContext) -> None:
        self.current = current

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current.wrap_bio(*args, **kwargs)


def _mtimes(paths: tuple[str, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class WebSecurity:
    """Holds the web config in force and the aiohttp middleware that enforces it."""

    def __init__(self, path: str | None) -> None:
        self.config = load_web_config(path)
        self._stamps = _mtimes(self.config.watched)
        self.gate = BasicAuthGate()
        self.ssl_context = (ReloadableSSLContext(build_ssl_context(self.config))
                            if self.config.tls else None)
        if self.config.users and not self.config.tls:
            log.warning("web config: basic auth without TLS sends passwords in clear text")

    # --- reload --------------------------------------------------------------------------

    def _load(self) -> tuple[WebConfig, ssl.SSLContext | None]:
        """Read the file and build what it asks for; nothing is applied (runs in a thread)."""
        new = load_web_config(self.config.path)
        if (new.tls is None) != (self.config.tls is None):
            raise ConfigError(f"web config file {self.config.path}: turning TLS "
                              f"{'on' if new.tls else 'off'} needs a restart")
        return new, build_ssl_context(new) if new.tls else None

    def _refused(self, exc: ConfigError) -> bool:
        log.error("web config reload failed, keeping the previous config: %s", exc)
        self._stamps = _mtimes(self.config.watched)  # do not retry until it changes again
        return False

    def _apply(self, new: WebConfig, context: ssl.SSLContext | None) -> bool:
        self.config = new
        self._stamps = _mtimes(new.watched)
        if context is not None and self.ssl_context is not None:
            self.ssl_context.current = context
        log.info("web config reloaded from %s: TLS %s, %d basic auth users", new.path,
                 "on" if new.tls else "off", len(new.users))
        return True

    def reload(self) -> bool:
        """Re-read the file; on error keep the configuration in force. True if applied."""
        try:
            return self._apply(*self._load())
        except ConfigError as exc:
            return self._refused(exc)

    async def reload_async(self) -> bool:
        """reload(), with the file read and parsed off the event loop: scrapes go on."""
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(None, self._load)
        except ConfigError as exc:
            return self._refused(exc)
        return self._apply(*loaded)

    async def check_changed(self) -> bool:
        if not self.config.path:
            return False
        stamps = _mtimes(self.config.watched)
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return await self.reload_async()

    async def watch(self, stop: asyncio.Event, every: float = 1.0) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=every)
            except asyncio.TimeoutError:
                pass
            if not stop.is_set():
                await self.check_changed()

    # --- request handling ---------------------------------------------------------------

    async def _authorised(self, request: web.Request) -> Verdict:
        config = self.config
        if not config.users:
            return Verdict.OK
        return await self.gate.check(config.users, config.decoy,
                                     request.headers.get("Authorization"), request.remote or "")

    def _san_allowed(self, request: web.Request) -> bool:
        allowed = self.config.tls.allowed_sans if self.config.tls else ()
        if not allowed:
            return True
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        names = {value for _, value in (cert or {}).get("subjectAltName", ())}
        return bool(names & set(allowed))

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        """Authentication only: the limit on requests in flight comes after it (server.py),
        so clients without the password cannot use up what the scraper needs."""
        if request.path in OPEN_PATHS:
            return await handler(request)
        if not self._san_allowed(request):
            return web.Response(status=403, text="client certificate not allowed\n")
        verdict = await self._authorised(request)
        if verdict is Verdict.BUSY:
            return web.Response(status=503, text="too many password checks waiting\n",
                                headers={"Retry-After": "1"})
        if verdict is not Verdict.OK:
            return web.Response(status=401, text="Unauthorized\n", headers={
                "WWW-Authenticate": 'Basic realm="carbon-exporter", charset="UTF-8"'})
        return await handler(request)

    def close(self) -> None:
        self.gate.close()

    async def add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in self.config.headers.items():
            response.headers[name] = value
