"""Secrets (API tokens, passwords) from files or environment variables, never inline.

A Secret prints as <redacted>; its value is only read where a request is built. Every value
loaded is registered, and `redact` (used on error details, and by a logging filter on every
handler) replaces it wherever it appears, so a token echoed back in an error message or an
exception text never reaches a log line, the landing page or /metrics.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from exporter.confutil import ConfigError

REDACTED = "<redacted>"
# Configured secrets stay registered; short-lived ones (WattTime hands out a new token every
# 30 minutes) are kept in a bounded, insertion-ordered window: an expired token needs no hiding.
MAX_SHORT_LIVED = 64
_known: set[str] = set()
_short_lived: dict[str, None] = {}
_lock = threading.Lock()


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str, short_lived: bool = False) -> None:
        self._value = value
        if len(value) >= 4:  # shorter strings would redact ordinary words
            with _lock:
                if not short_lived:
                    _known.add(value)
                    return
                _short_lived[value] = None
                while len(_short_lived) > MAX_SHORT_LIVED:
                    _short_lived.pop(next(iter(_short_lived)))

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str) -> str:
    with _lock:
        known = sorted(_known | set(_short_lived), key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def load_secret(where: str, what: str, file_path: str | None, env_name: str | None,
                default_env: str | None, environ: dict[str, str] | None = None) -> Secret | None:
    """From `<what>_file` (a path), else `<what>_env` (a variable name), else `default_env`.

    A named file or variable that is missing or empty is an error naming the setting, never
    the value. Returns None when nothing is configured and the default variable is unset.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                value = handle.read().strip()
        except OSError as exc:
            raise ConfigError(f"{where}.{what}_file: cannot read {file_path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}.{what}_file: {file_path} is empty")
        return Secret(value)
    if env_name:
        value = env.get(env_name, "").strip()
        if not value:
            raise ConfigError(f"{where}.{what}_env: environment variable {env_name} is not set")
        return Secret(value)
    if default_env and env.get(default_env, "").strip():
        return Secret(env[default_env].strip())
    return None


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and exception text) with secrets replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            if redact(exc_text) != exc_text:
                cleaned += " | " + redact(exc_text).replace("\n", " | ")
                record.exc_info = None
                record.exc_text = None
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
