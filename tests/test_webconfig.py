"""--web.config.file against the real exporter process with real TLS: certificates are made
in the test with `cryptography`, clients are Python's ssl/http.client on loopback."""

from __future__ import annotations

import base64
import http.client
import signal
import ssl
import subprocess
import sys
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.config import ConfigError
from exporter.webconfig import load_web_config
from tests.certs import CertificateAuthority
from tests.harness import ROOT, ExporterProcess, http_get, wait_for

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def https_get(url: str, context: ssl.SSLContext, headers: dict | None = None, timeout: float = 5):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/", headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def client_context(ca: CertificateAuthority, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.files.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def start(tmp_path: Path, web_config: dict | None, *extra: str, https_ca=None, client=None):
    args = ["--path.sysfs", str(tmp_path / "no-sysfs"), "--no-collector.nvml",
            "--sample.interval", "0.2", *extra]
    if web_config is not None:
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(web_config))
        args.append(f"--web.config.file={path}")
    exporter = ExporterProcess(tmp_path, args)
    if https_ca is None:
        exporter.wait_ready()
    else:
        exporter.url = exporter.url.replace("http://", "https://")
        context = client_context(https_ca, client)

        def healthy():
            if exporter.proc.poll() is not None:
                raise RuntimeError(exporter.output())
            return https_get(exporter.url + "/healthz", context, timeout=1)[0] == 200
        wait_for(healthy, 20, "exporter /healthz over TLS")
    return exporter


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.issue("server", sans=("127.0.0.1", "localhost"))
    client = ca.issue("prometheus", server=False, sans=("prometheus.example",))
    rogue_ca = CertificateAuthority(tmp_path / "rogue", name="rogue CA")
    rogue = rogue_ca.issue("intruder", server=False, sans=("prometheus.example",))
    return ca, server, client, rogue


def test_tls_serves_metrics_and_plain_http_gets_no_metrics(tmp_path, pki):
    ca, server, _, _ = pki
    exporter = start(tmp_path, {"tls_server_config": {
        "cert_file": str(server.cert), "key_file": str(server.key)}}, https_ca=ca)
    try:
        status, _, body = https_get(exporter.url + "/metrics", client_context(ca))
        assert status == 200 and b"carbon_exporter_build_info" in body
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            status, _, body = http_get(exporter.url.replace("https", "http") + "/metrics", timeout=2)
            assert b"carbon_" not in body  # whatever came back, it is not the metrics
            raise ConnectionError(f"plain HTTP got {status}")
    finally:
        assert exporter.stop() == 0


def test_mutual_tls_refuses_missing_and_foreign_client_certificates(tmp_path, pki):
    ca, server, client, rogue = pki
    exporter = start(tmp_path, {"tls_server_config": {
        "cert_file": str(server.cert), "key_file": str(server.key),
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(ca.files.cert),
        "client_allowed_sans": ["prometheus.example"], "min_version": "TLS12",
    }}, https_ca=ca, client=client)
    try:
        status, _, body = https_get(exporter.url + "/metrics", client_context(ca, client))
        assert status == 200 and b"carbon_energy_joules_total" in body
        for who in (None, rogue):  # no certificate, or one the client CA did not sign
            with pytest.raises((ssl.SSLError, ConnectionError)):
                https_get(exporter.url + "/metrics", client_context(ca, who))
        stranger = ca.issue("grafana", server=False, sans=("grafana.example",))
        assert https_get(exporter.url + "/metrics", client_context(ca, stranger))[0] == 403
    finally:
        assert exporter.stop() == 0


def test_min_version_refuses_older_clients(tmp_path, pki):
    ca, server, _, _ = pki
    exporter = start(tmp_path, {"tls_server_config": {
        "cert_file": str(server.cert), "key_file": str(server.key), "min_version": "TLS13"}},
        https_ca=ca)
    try:
        old = client_context(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            https_get(exporter.url + "/metrics", old)
        assert https_get(exporter.url + "/metrics", client_context(ca))[0] == 200
    finally:
        assert exporter.stop() == 0


def test_basic_auth_headers_and_open_healthz(tmp_path):
    exporter = start(tmp_path, {
        "basic_auth_users": {"prometheus": HASH},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff",
                                           "X-Frame-Options": "deny"}},
    })
    try:
        status, headers, _ = http_get(exporter.url + "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        assert http_get(exporter.url + "/metrics", basic("prometheus", "wrong"))[0] == 401
        assert http_get(exporter.url + "/metrics", basic("nobody", PASSWORD))[0] == 401
        assert http_get(exporter.url + "/", {"Authorization": "Bearer x"})[0] == 401
        for _ in range(3):  # the second and third hit the verified-hash cache
            status, headers, body = http_get(exporter.url + "/metrics", basic("prometheus", PASSWORD))
            assert status == 200 and b"carbon_exporter_build_info" in body
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["X-Frame-Options"] == "deny"
        assert http_get(exporter.url + "/healthz")[0] == 200  # probes need no password
    finally:
        assert exporter.stop() == 0


def test_reload_on_change_keeps_previous_config_when_bad(tmp_path):
    exporter = start(tmp_path, {"basic_auth_users": {"prometheus": HASH}})
    path = tmp_path / "web.yml"
    try:
        new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
        path.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": new_hash}}))
        wait_for(lambda: http_get(exporter.url + "/metrics", basic("prometheus", "rotated"))[0] == 200,
                 10, "the changed file to be picked up")
        assert http_get(exporter.url + "/metrics", basic("prometheus", PASSWORD))[0] == 401

        path.write_text("basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n")
        wait_for(lambda: "web config reload failed" in exporter.output(), 10, "the reload error")
        assert "basic_auth_users.prometheus: is not a bcrypt hash" in exporter.output()
        assert http_get(exporter.url + "/metrics", basic("prometheus", "rotated"))[0] == 200
        exporter.signal(signal.SIGHUP)  # SIGHUP re-reads it too, and fails the same way
        wait_for(lambda: exporter.output().count("web config reload failed") >= 2, 10, "SIGHUP")
        assert http_get(exporter.url + "/metrics", basic("prometheus", "rotated"))[0] == 200
    finally:
        assert exporter.stop() == 0


def test_certificate_rotation_without_restart(tmp_path, pki):
    ca, server, _, _ = pki
    # Certificates live next to the web config and are named relatively, as users write them.
    (tmp_path / "server.crt").write_bytes(server.cert.read_bytes())
    (tmp_path / "server.key").write_bytes(server.key.read_bytes())
    exporter = start(tmp_path, {"tls_server_config": {"cert_file": "server.crt",
                                                       "key_file": "server.key"}}, https_ca=ca)
    try:
        new_ca = CertificateAuthority(tmp_path / "new-pki", name="new CA")
        new_server = new_ca.issue("server2", sans=("127.0.0.1",))
        (tmp_path / "server.key").write_bytes(new_server.key.read_bytes())
        (tmp_path / "server.crt").write_bytes(new_server.cert.read_bytes())

        def rotated():
            return https_get(exporter.url + "/healthz", client_context(new_ca), timeout=2)[0] == 200
        wait_for(rotated, 10, "the new certificate to be served")
        with pytest.raises(ssl.SSLError):
            https_get(exporter.url + "/healthz", client_context(ca))
    finally:
        assert exporter.stop() == 0


def test_bad_web_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /x.key\n")
    result = subprocess.run([sys.executable, "-m", "exporter", f"--web.config.file={path}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "tls_server_config.cert_file: /nonexistent.crt: No such file or directory" in result.stderr


@pytest.mark.parametrize("text, message", [
    ("basic_auth_users: [a]", "basic_auth_users: must be a mapping"),
    ("tls_server_config: {cert_file: c}", "cert_file and key_file are both required"),
    ("tls_server_config: {cert_file: c, key_file: k, min_version: TLS9}",
     "min_version: 'TLS9' must be one of TLS10, TLS11, TLS12, TLS13"),
    ("tls_server_config: {cert_file: c, key_file: k, client_auth_type: RequireAnyClientCert}",
     "accepts unverified client certificates"),
    ("tls_server_config: {cert_file: c, key_file: k, client_auth_type: RequireAndVerifyClientCert}",
     "needs client_ca_file"),
    ("tls_server_config: {cert_file: c, key_file: k, cipher_suites: [RC4]}", "'RC4' is not a supported"),
    ("tls_server_config: {cert_file: c, key_file: k, max_version: TLS12, min_version: TLS13}",
     "min_version is above max_version"),
    ("tls_server_config: {cert_file: c, key_file: c}", "cannot load cert_file/key_file"),
    ("tls_server_config: {cert_file: c, key_file: k, cert: inline}", "tls_server_config.cert: not supported"),
    ("http_server_config: {headers: {X-Evil: 1}}", "unknown key http_server_config.headers.X-Evil"),
    ("basic_auth: {}", "unknown key basic_auth"),
    ("rate_limit: {interval: 1s, burst: 2}", "rate_limit: not supported"),
    ("a: [", "line 1: expected the node content"),
])
def test_web_config_errors_name_the_field(tmp_path, pki, text, message):
    ca, server, _, _ = pki
    (tmp_path / "c").write_bytes(server.cert.read_bytes())
    (tmp_path / "k").write_bytes(server.key.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"web config file {path}")
    assert "\n" not in str(caught.value)


def test_htpasswd_2y_hashes_and_cipher_suites_load(tmp_path, pki):
    ca, server, _, _ = pki
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(server.cert), "key_file": str(server.key),
                              "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                                                "TLS_AES_128_GCM_SHA256"]},
        "basic_auth_users": {"u": "$2y$" + HASH[4:]},
    }))
    config = load_web_config(str(path))
    assert config.tls.ciphers == ("ECDHE-ECDSA-AES128-GCM-SHA256",)
    assert bcrypt.checkpw(PASSWORD.encode(), config.users["u"])
