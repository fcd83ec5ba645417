"""A small client for the Prometheus HTTP API (/api/v1/query, /api/v1/query_range).

Raw samples are read with instant queries of range selectors (`metric[6h]`), one chunk at a
time, so long windows never hit the server's sample limits and totals come from the samples
themselves, not from extrapolating functions such as increase(). Every failure becomes a
PrometheusError whose message is one line a user can act on.
"""

from __future__ import annotations

import base64
import json
import math
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Iterable

LabelSet = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, __name__ included
Points = list[tuple[float, float]]  # (unix time, value) in time order

# Prometheus refuses range queries with more than 11,000 points per series.
MAX_RANGE_POINTS = 10_000


class PrometheusError(RuntimeError):
    """A query failed; str() is one line."""


@dataclass
class Auth:
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def labelset(metric: dict[str, str]) -> LabelSet:
    return tuple(sorted(metric.items()))


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream=None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = ""

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = min(width, int(width * self.done / self.total))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total} {label[:40]:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


class PromClient:
    def __init__(self, url: str, auth: Auth | None = None, timeout: float = 60.0,
                 chunk_seconds: float = 6 * 3600) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PrometheusError(f"--prometheus: {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.auth = auth or Auth()
        self.timeout = timeout
        self.chunk_seconds = chunk_seconds
        self.progress: Progress | None = None
        self._context = self._ssl_context() if parsed.scheme == "https" else None

    def _ssl_context(self) -> ssl.SSLContext:
        auth = self.auth
        try:
            context = ssl.create_default_context(cafile=auth.ca_file)
            if auth.cert_file:
                context.load_cert_chain(auth.cert_file, auth.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise PrometheusError(f"TLS files: {exc}") from None
        if auth.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "carbon-exporter-report",
                   **self.auth.headers}
        if self.auth.bearer_token:
            headers["Authorization"] = f"Bearer {self.auth.bearer_token}"
        elif self.auth.username is not None:
            pair = f"{self.auth.username}:{self.auth.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return headers

    def _call(self, path: str, params: dict[str, str]) -> dict:
        # POST keeps long selectors out of URL length limits; Prometheus accepts both.
        params = {**params, "timeout": f"{self.timeout:g}s"}
        body = urllib.parse.urlencode(params).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1/{path}", data=body, method="POST",
            headers={**self._headers(), "Content-Type": "application/x-www-form-urlencoded"})
        query = params.get("query", "")
        try:
            # The socket waits a little longer than the server-side timeout so that the
            # server's own "query timed out" answer, which names the cause, arrives first.
            with urllib.request.urlopen(request, timeout=self.timeout + min(self.timeout, 5),
                                        context=self._context) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            message = _api_error(payload) or exc.reason
            if exc.code in (401, 403):
                raise PrometheusError(f"Prometheus at {self.url} refused the request "
                                      f"(HTTP {exc.code}): check --prometheus.username/"
                                      f"password or bearer token") from None
            if "timeout" in str(message).lower() or exc.code == 503:
                raise PrometheusError(f"query timed out after {self.timeout:g}s: {query} "
                                      f"(raise --query-timeout or lower --chunk)") from None
            raise PrometheusError(f"Prometheus rejected {query}: HTTP {exc.code}: "
                                  f"{message}") from None
        except (socket.timeout, TimeoutError):
            raise PrometheusError(f"query timed out after {self.timeout:g}s: no answer from "
                                  f"{self.url} for {query} (raise --query-timeout)") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise PrometheusError(f"query timed out after {self.timeout:g}s: no answer "
                                      f"from {self.url} (raise --query-timeout)") from None
            text = getattr(reason, "strerror", None) or str(reason)
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {text}") from None
        except OSError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.url}: {exc}") from None
        try:
            decoded = json.loads(payload)
        except ValueError:
            raise PrometheusError(f"{self.url} did not answer with Prometheus API JSON "
                                  f"(is it a Prometheus server?)") from None
        if decoded.get("status") != "success":
            raise PrometheusError(f"Prometheus error for {query}: {_api_error(payload)}")
        if self.progress is not None:
            self.progress.step(query)
        return decoded["data"]

    def query(self, expr: str, at: float) -> list[dict]:
        """Instant query: [{metric, value: [t, "v"]}] (vector) or matrix results."""
        return self._call("query", {"query": expr, "time": _ts(at)})["result"]

    def query_range(self, expr: str, start: float, end: float,
                    step: float) -> dict[LabelSet, Points]:
        """Range query split so that no request exceeds Prometheus's points limit."""
        out: dict[LabelSet, Points] = {}
        span = step * MAX_RANGE_POINTS
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + span)
            data = self._call("query_range", {"query": expr, "start": _ts(chunk_start),
                                              "end": _ts(chunk_end), "step": f"{step:g}"})
            for series in data["result"]:
                points = out.setdefault(labelset(series["metric"]), [])
                for t, v in series["values"]:
                    if (not points or t > points[-1][0]) and math.isfinite(float(v)):
                        points.append((float(t), float(v)))
            chunk_start = chunk_end + step
        return out

    def chunks(self, start: float, end: float) -> list[tuple[float, float]]:
        count = max(1, math.ceil((end - start) / self.chunk_seconds))
        size = (end - start) / count
        return [(start + i * size, end if i == count - 1 else start + (i + 1) * size)
                for i in range(count)]

    def raw_samples(self, selector: str, start: float, end: float) -> dict[LabelSet, Points]:
        """Every stored sample of `selector` with start <= t <= end, in time order."""
        out: dict[LabelSet, Points] = {}
        for chunk_start, chunk_end in self.chunks(start, end):
            millis = max(1, round((chunk_end - chunk_start) * 1000))
            result = self._call("query", {"query": f"{selector}[{millis}ms]",
                                          "time": _ts(chunk_end)})["result"]
            for series in result:
                points = out.setdefault(labelset(series["metric"]), [])
                for t, v in series["values"]:
                    t, v = float(t), float(v)
                    # Chunks share their boundary instant: keep each sample once. NaN and
                    # infinities carry no quantity to add up (and JSON has no spelling for them).
                    if t >= start and (not points or t > points[-1][0]) and math.isfinite(v):
                        points.append((t, v))
        return {k: v for k, v in out.items() if v}

    def expected_calls(self, start: float, end: float, raw_selectors: int, others: int) -> int:
        return raw_selectors * len(self.chunks(start, end)) + others

    def start_progress(self, total: int) -> None:
        self.progress = Progress(total)

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None


def _api_error(payload: bytes) -> str | None:
    try:
        decoded = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    kind, error = decoded.get("errorType"), decoded.get("error")
    return f"{kind}: {error}" if kind else error


def _ts(t: float) -> str:
    return f"{t:.3f}"


def quote(value: str) -> str:
    """A PromQL string literal."""
    return json.dumps(value)


def regex_alternatives(values: Iterable[str]) -> str:
    """A PromQL regex matching exactly these values."""
    escaped = sorted({_re_escape(v) for v in values})
    return "|".join(escaped) if escaped else "^$"


def _re_escape(value: str) -> str:
    special = set(r".^$*+?()[]{}|\\")
    return "".join("\\" + ch if ch in special else ch for ch in value)

