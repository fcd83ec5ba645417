"""The cgroup a daemon-mode run lives in, named after the run so that attribution can label
its series workload_job=<name> without any other state:

    /carbon.slice/carbon-run-<escaped name>-<8 hex>.scope

Attribution already treats a *.scope under a *.slice as a systemd-style unit workload; the
unit label keeps two runs of the same name apart, workload_job groups them. Bytes outside
[A-Za-z0-9_.:-] are escaped as \\xHH (as systemd-escape does), so any name round-trips.
"""

from __future__ import annotations

import re

SLICE = "carbon.slice"
_SCOPE = re.compile(r"^carbon-run-(.+)-([0-9a-f]{8})\.scope$")
_SAFE = re.compile(rb"[A-Za-z0-9_.:-]")
MAX_NAME = 100


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise ValueError(f"run name must be 1-{MAX_NAME} printable characters")
    return name


def escape(name: str) -> str:
    return "".join(chr(b) if _SAFE.match(bytes([b])) else f"\\x{b:02x}"
                   for b in name.encode("utf-8"))


def unescape(text: str) -> str:
    raw = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", "replace")


def scope_name(name: str, run_id: str) -> str:
    return f"carbon-run-{escape(check_name(name))}-{run_id[:8]}.scope"


def cgroup_path(name: str, run_id: str) -> str:
    return f"/{SLICE}/{scope_name(name, run_id)}"


def run_name(unit: str) -> str:
    """The run's name from its scope unit; '' for any other unit."""
    match = _SCOPE.match(unit)
    if not match:
        return ""
    try:
        return unescape(match.group(1))
    except (UnicodeEncodeError, ValueError):
        return ""
