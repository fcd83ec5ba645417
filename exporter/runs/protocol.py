"""The local run socket's protocol: one JSON request line, one JSON answer line, per
connection. Requests: {"op": "hello"}, {"op": "start", "name": N}, {"op": "end", "run_id": I}.
Every answer has "ok"; a refusal has "error". Only a Unix socket: nothing on the network.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_LINE = 64 * 1024
DEFAULT_SOCKET = "/run/carbon-exporter/runs.sock"


class ProtocolError(Exception):
    pass


def request(path: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Blocking client call; ProtocolError on any failure (no daemon, refused, bad answer)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < MAX_LINE:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ProtocolError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ProtocolError(f"{path}: not a carbon-exporter run socket") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ProtocolError(f"{path}: {error or 'refused'}")
    return answer
