"""A fixture node that draws a chosen power: a thread integrates `watts` into a RAPL zone's
energy_uj every 10 ms, so any reader (the exporter at 1 s) sees power that follows `watts`
within 1 %, as a real package's counter does."""

from __future__ import annotations

import threading
import time

from tests.fixtures import PowercapTree


class PowerLoad:
    def __init__(self, tree: PowercapTree, dirname: str, watts: float, step: float = 0.01) -> None:
        self.tree = tree
        self.dirname = dirname
        self.watts = watts
        self.step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="power-load", daemon=True)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.step):
            now = time.monotonic()
            self.tree.advance(self.dirname, self.watts * (now - last))
            last = now

    def burst(self, watts: float, seconds: float) -> None:
        """Draw `watts` for `seconds`, then go back to the previous power."""
        before, self.watts = self.watts, watts
        time.sleep(seconds)
        self.watts = before

    def __enter__(self) -> "PowerLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
