"""What the daemon imports at start: heavy modules only where they are used (issue 17)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from exporter.config import resolve
from exporter.cli import Daemon
daemon = Daemon(resolve({}, None, environ={}), {})
daemon.sampler._step()
daemon.sampler.settle()  # a cycle is counted (statuses recorded) when settled
nvml = {w.source.name: w.status for w in daemon.sampler.workers}["nvml"]
print(json.dumps(sorted(sys.modules)))
print(json.dumps([nvml.reason, nvml.detail]))
"""


def test_daemon_start_leaves_heavy_modules_unimported():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    modules = set(json.loads(out.splitlines()[-2]))
    assert "exporter.sampler" in modules  # the probe did build the daemon
    # run records' schema checks, the report, unconfigured intensity providers, MLflow
    for heavy in ("jsonschema", "exporter.report", "exporter.report.compute", "mlflow",
                  "exporter.carbon.providers.electricitymaps", "exporter.carbon.providers.watttime",
                  "exporter.carbon.providers.ukgrid", "exporter.carbon.providers.http_json",
                  "exporter.runs.embedded", "exporter.runs.service", "exporter.retraining"):
        assert heavy not in modules, heavy
    assert "bcrypt" not in modules  # basic auth is not configured
    assert "zipfile" not in modules  # bundled data is read as files (importlib.resources would)


def nvml_library_installed() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_no_nvidia_driver_leaves_pynvml_unimported():
    """A node without the driver says so and never imports pynvml (2.3 MB); on a node with
    it (the GPU machine), pynvml is imported and the collector is not absent for that."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.splitlines()
    modules = set(json.loads(out[-2]))
    reason, detail = json.loads(out[-1])
    if nvml_library_installed():
        assert "pynvml" in modules and "libnvidia-ml.so.1 not found" not in detail
    else:
        assert "pynvml" not in modules
        assert reason == "absent" and "libnvidia-ml.so.1 not found" in detail, (reason, detail)


TLS_PROBE = """
import asyncio, http.server, ssl, sys, threading
import exporter.cli  # the daemon's entry: aiohttp imported without the CA store
import aiohttp
from exporter.carbon.providers.chain import client_session

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"https://127.0.0.1:{server.server_address[1]}/"

async def main():
    async with client_session() as session, session.get(url) as answer:
        print("providers' session:", answer.status)
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            print("aiohttp's default context:", answer.status)
    except aiohttp.ClientConnectorCertificateError:
        print("aiohttp's default context: verification failed")

asyncio.run(main())
"""


def test_providers_verify_tls_against_the_system_store_after_the_lean_import(tmp_path):
    """aiohttp is imported with no CA store (exporter.aiohttp_lean): the providers' session
    still verifies against the store SSL_CERT_FILE names, and a session left on aiohttp's
    own context fails closed."""
    authority = CertificateAuthority(tmp_path / "pki")
    server = authority.issue("127.0.0.1", sans=("127.0.0.1",))
    env = {**os.environ, "SSL_CERT_FILE": str(authority.files.cert)}
    done = subprocess.run([sys.executable, "-c", TLS_PROBE, str(server.cert), str(server.key)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "providers' session: 200" in done.stdout, done.stdout
    assert "aiohttp's default context: verification failed" in done.stdout, done.stdout
