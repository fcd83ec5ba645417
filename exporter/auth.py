"""Basic auth checks that a flood of wrong passwords cannot turn into a denial of service.

bcrypt is slow on purpose, so every uncached check is work an attacker can make us do:
- a password that passed is remembered (an HMAC of user, hash and password, never the
  password), so the legitimate scraper costs one check per process life, not one per scrape;
- a credential that failed is answered from memory for FAILURE_TTL seconds;
- concurrent requests with the same credential share one check;
- checks run one at a time in one thread (bcrypt releases the GIL, so the event loop keeps
  serving), and at most MAX_WAITING wait for it: more get 503, never a false 401;
- a client address that keeps failing is slowed: its failed requests wait before being
  checked and answered, so it cannot send the next one soon. The wait costs no CPU, and a
  request with a remembered good credential never waits, even from the same address.
An unknown user is checked against a decoy hash of the configured users' cost, so a wrong
user takes as long as a wrong password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

FAILURE_TTL = 10.0  # seconds a failed credential is answered without bcrypt
MAX_REMEMBERED = 4096  # entries in each cache (good credentials, failed ones, client addresses)
MAX_WAITING = 16  # bcrypt checks queued at most
FREE_FAILURES = 3  # failures per address before it is slowed
MAX_PENALTY = 2.0  # seconds a failing address waits per request at most
FORGET_AFTER = 60.0  # an address without failures for this long starts clean

# $2a$/$2b$ (the bcrypt package's names; $2y$ is rewritten to $2b$ when loaded), a two-digit
# cost, then 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
BCRYPT_RE = re.compile(rb"^\$2[ab]\$(\d\d)\$[./A-Za-z0-9]{53}$")
MIN_COST, MAX_COST = 4, 31


class Verdict(enum.Enum):
    OK = "ok"
    DENIED = "denied"  # 401
    BUSY = "busy"  # 503: too many checks waiting; says nothing about the password


def _bcrypt() -> ModuleType:
    """bcrypt, imported when basic auth is configured: the daemon without users never needs it."""
    import bcrypt

    return bcrypt


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost of a well-formed bcrypt hash, else None. The bcrypt package's own parse is
    run at cost 4 on the same salt and hash characters, so a hash it would reject at every
    login is caught at load time, in about a millisecond whatever the real cost."""
    match = BCRYPT_RE.match(hashed)
    if not match or not MIN_COST <= int(match.group(1)) <= MAX_COST:
        return None
    try:
        _bcrypt().checkpw(b"", hashed[:4] + b"04" + hashed[6:])
    except ValueError:
        return None
    return int(match.group(1))


@functools.cache
def decoy_hash(cost: int) -> bytes:
    """Checked when the user is unknown, at the cost the configured users have."""
    bcrypt = _bcrypt()
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return _bcrypt().checkpw(password, hashed)
    except ValueError:  # e.g. a password over bcrypt's 72 bytes
        return False


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MAX_REMEMBERED:
        cache.popitem(last=False)


class BasicAuthGate:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        self._key = secrets.token_bytes(32)  # HMAC key: cache entries reveal no password
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, float] = OrderedDict()  # token -> expiry
        self._clients: OrderedDict[str, tuple[int, float]] = OrderedDict()  # -> (failures, last)
        self._running: dict[bytes, asyncio.Future[bool]] = {}  # token -> check in progress
        self.waiting = 0
        self.checks = 0  # bcrypt checks run, for tests and benchmarks

    def _token(self, user: str, hashed: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, user.encode() + b"\0" + hashed + b"\0" + password,
                        hashlib.sha256).digest()

    def penalty(self, client: str, now: float) -> float:
        failures, last = self._clients.get(client, (0, 0.0))
        if now - last > FORGET_AFTER or failures <= FREE_FAILURES:
            return 0.0
        return min(MAX_PENALTY, 0.05 * 2 ** (failures - FREE_FAILURES))

    def _failed_from(self, client: str, now: float) -> None:
        failures, last = self._clients.get(client, (0, 0.0))
        _remember(self._clients, client, (1 if now - last > FORGET_AFTER else failures + 1, now))

    async def check(self, users: dict[str, bytes], decoy: bytes, header: str | None,
                    client: str) -> Verdict:
        """Whether the Authorization header names a configured user and their password."""
        credentials = basic_credentials(header)
        user, password = credentials if credentials else ("", "")
        hashed = users.get(user) if credentials else None
        secret = password.encode()
        token = self._token(user, hashed if hashed is not None else decoy, secret)
        if hashed is not None and token in self._verified:
            self._verified.move_to_end(token)
            return Verdict.OK
        now = time.monotonic()
        delay = self.penalty(client, now)
        if delay:
            await asyncio.sleep(delay)
            now = time.monotonic()
        if credentials is None:
            self._failed_from(client, now)
            return Verdict.DENIED
        expiry = self._failed.get(token)
        if expiry is not None and expiry > now:
            self._failed_from(client, now)
            return Verdict.DENIED
        running = self._running.get(token)
        if running is not None:  # the same credential is being checked: share that answer
            ok = await asyncio.shield(running)
        elif self.waiting >= MAX_WAITING:
            self._failed_from(client, now)  # unproven, like a failure: slow its retries
            return Verdict.BUSY
        else:
            self.waiting += 1
            self.checks += 1
            running = asyncio.get_running_loop().run_in_executor(
                self._executor, _checkpw, secret, hashed if hashed is not None else decoy)
            self._running[token] = running
            try:
                ok = await asyncio.shield(running)
            finally:
                self.waiting -= 1
                self._running.pop(token, None)
        if ok and hashed is not None and users.get(user) == hashed:
            _remember(self._verified, token, None)
            return Verdict.OK
        now = time.monotonic()
        _remember(self._failed, token, now + FAILURE_TTL)
        self._failed_from(client, now)
        return Verdict.DENIED

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
