"""Kubernetes pod metadata (name, namespace, container names, labels, annotations) by pod UID.

Sources (kubernetes.metadata):
  kubelet           GET https://<node>:10250/pods with the service-account bearer token,
                    verified against the service-account CA (the ClusterRole needs
                    get on nodes/pods from Kubernetes 1.33, nodes/proxy before)
  kubelet-readonly  GET http://<node>:10255/pods, no authentication (only where the kubelet's
                    read-only port is enabled)
  apiserver         GET <apiserver>/api/v1/pods?fieldSelector=spec.nodeName=<node> with the
                    token (pods list)
  auto              kubelet when a service-account token is mounted, else none
Both answer a v1 PodList. The client runs on the event loop with aiohttp, on its own timer
(kubernetes.refresh_interval) and at once when the split meets a pod UID it does not know
(at most every MIN_REFRESH_SECONDS). A failed refresh keeps the last good answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from exporter.confutil import ConfigError
from exporter.sources import ABSENT, ERROR, OK, PERMISSION, Status

log = logging.getLogger(__name__)

MIN_REFRESH_SECONDS = 5.0
MAX_BODY_BYTES = 64 * 1024 * 1024  # a PodList of 110 pods is well under 1 MiB


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    containers: dict[str, str] = field(default_factory=dict)  # container id -> name


def _container_id(raw: str) -> str:
    """'containerd://<id>', 'cri-o://<id>', 'docker://<id>' -> '<id>'."""
    return raw.rpartition("://")[2]


def parse_pod_list(payload: Any) -> dict[str, PodInfo]:
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        raise ValueError("not a PodList: no items")
    pods = {}
    for item in payload["items"]:
        meta = item.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            continue
        status = item.get("status") or {}
        containers = {}
        for group in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for entry in status.get(group) or ():
                cid = _container_id(entry.get("containerID") or "")
                if cid and entry.get("name"):
                    containers[cid] = entry["name"]
        pods[uid] = PodInfo(uid, meta.get("name", ""), meta.get("namespace", ""),
                            dict(meta.get("labels") or {}), dict(meta.get("annotations") or {}),
                            containers)
    return pods


def _env_url(config) -> str:
    if config.kubernetes_url:
        return config.kubernetes_url.rstrip("/")
    mode = config.kubernetes_metadata
    if mode == "apiserver":
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return f"https://{host}:{port}"
    node = os.environ.get("NODE_IP") or "127.0.0.1"
    node = f"[{node}]" if ":" in node else node
    if mode == "kubelet-readonly":
        return f"http://{node}:10255"
    return f"https://{node}:10250"


class KubeMetadata:
    def __init__(self, config) -> None:
        self.pods: dict[str, PodInfo] = {}  # replaced whole, never mutated: safe to read anywhere
        self.status = Status(ABSENT, "kubernetes metadata disabled")
        self.refreshed_at: float | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the refreshes run on it
        self._context: tuple[tuple[bool, str | None, int | None], ssl.SSLContext] | None = None
        self._unknown: set[str] = set()
        self.last_attempt = 0.0
        self.min_refresh = MIN_REFRESH_SECONDS
        self.duration_sum = 0.0  # refresh wall time, for carbon_exporter_sample_duration_seconds
        self.duration_count = 0
        self.configure(config)

    def configure(self, config) -> None:
        mode = config.kubernetes_metadata
        if mode == "auto":
            mode = "kubelet" if os.path.exists(config.kubernetes_token_file) else "none"
        self.mode = mode
        self.config = config
        self.url = _env_url(config) if mode != "none" else ""
        self.node = config.kubernetes_node_name or os.environ.get("NODE_NAME", "")
        if mode == "apiserver" and not self.node:
            raise ConfigError("kubernetes.node_name: needed with kubernetes.metadata=apiserver "
                              "(or NODE_NAME from the downward API, spec.nodeName)")
        if mode == "none":
            self.status = Status(ABSENT, "no service-account token mounted and "
                                         "kubernetes.metadata not set")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def endpoint(self) -> str:
        if self.mode == "apiserver":
            return f"{self.url}/api/v1/pods?fieldSelector=spec.nodeName%3D{self.node}"
        return f"{self.url}/pods"

    def want(self, uid: str) -> None:
        """Called by the split (in the sampler thread) for a pod UID it cannot name: handed to
        the event loop, which owns the refreshes and the set of unknown UIDs."""
        if not self.enabled or uid in self._unknown:
            return
        if self._loop is None:
            self._want(uid)
            return
        try:
            self._loop.call_soon_threadsafe(self._want, uid)
        except RuntimeError:
            pass  # the loop has ended: no more refreshes

    def _want(self, uid: str) -> None:
        self._unknown.add(uid)
        if self._wake is not None:
            self._wake.set()

    def _ssl(self) -> ssl.SSLContext | bool:
        """The TLS context for the next refresh: built again only when its inputs change (a
        reload, the CA file rotated), since each build parses the CA file or the system store."""
        if not self.url.startswith("https://"):
            return False
        insecure = self.config.kubernetes_insecure_skip_verify
        ca = self.config.kubernetes_ca_file
        try:
            stamp = os.stat(ca).st_mtime_ns if ca else None
        except OSError:
            ca, stamp = None, None
        key = (insecure, ca, stamp)
        if self._context is None or self._context[0] != key:
            if insecure:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(cafile=ca)
            self._context = (key, context)
        return self._context[1]

    def _headers(self) -> dict[str, str]:
        if self.mode == "kubelet-readonly":
            return {}
        # re-read each time: bound service-account tokens are rotated by the kubelet
        with open(self.config.kubernetes_token_file, encoding="utf-8") as handle:
            return {"Authorization": f"Bearer {handle.read().strip()}"}

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        self.last_attempt = time.monotonic()
        try:
            await self._refresh(session)
        finally:
            self.duration_sum += time.monotonic() - self.last_attempt
            self.duration_count += 1

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        url = self.endpoint()
        try:
            headers = self._headers()
            timeout = aiohttp.ClientTimeout(total=self.config.kubernetes_timeout)
            async with session.get(url, headers=headers, ssl=self._ssl(), timeout=timeout) as resp:
                if resp.status in (401, 403):
                    raise PermissionError(f"HTTP {resp.status} from {url}")
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status} from {url}")
                body = await resp.content.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    raise RuntimeError(f"answer from {url} is over {MAX_BODY_BYTES} bytes")
            pods = parse_pod_list(_json(body))
        except PermissionError as exc:
            self._fail(Status(PERMISSION, f"{exc}: the service account needs get on nodes/pods "
                                          "(kubelet, Kubernetes 1.33+; nodes/proxy before) or "
                                          "list on pods (apiserver)"))
            return
        except asyncio.TimeoutError:
            self._fail(Status(ERROR, f"{url}: timed out after {self.config.kubernetes_timeout:g}s"))
            return
        except (OSError, aiohttp.ClientError, ValueError, RuntimeError, ssl.SSLError) as exc:
            self._fail(Status(ERROR, f"{url}: {exc}"))
            return
        self.pods = pods
        self._unknown = {u for u in self._unknown if u not in pods}
        self.refreshed_at = time.monotonic()
        if self.status.reason != OK:
            log.info("kubernetes metadata: %d pods from %s", len(pods), url)
        self.status = Status(OK, f"{len(pods)} pods from {self.mode}")

    def _fail(self, status: Status) -> None:
        if status != self.status:
            log.warning("kubernetes metadata: %s (keeping %d pods from the last good answer)",
                        status.detail, len(self.pods))
        self.status = status

    async def run(self, stop: asyncio.Event) -> None:
        if not self.enabled:
            return
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    await self.refresh(session)
                except Exception as exc:  # a bug here must not end the refreshes
                    log.exception("kubernetes metadata refresh failed")
                    self._fail(Status(ERROR, f"{type(exc).__name__}: {exc}"))
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waiters, timeout=self.config.kubernetes_refresh_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                # an unknown UID wakes us early, but never more often than MIN_REFRESH_SECONDS
                pause = self.last_attempt + self.min_refresh - time.monotonic()
                if pause > 0 and not stop.is_set():
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=pause)
                    except asyncio.TimeoutError:
                        pass


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"answer is not JSON: {exc}") from None
