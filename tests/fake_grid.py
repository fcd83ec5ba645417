"""A fake of the grid intensity APIs on 127.0.0.1, answering in each API's documented shape,
and misbehaving on demand: set `mode[api]` to one of MODES.

APIs: "em" (Electricity Maps v3), "wt" (WattTime v3), "uk" (carbonintensity.org.uk),
"json" (a generic feed). Runs its own event loop in a thread, so both in-process async
tests and real exporter processes can use it.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from aiohttp import web

from tests.harness import free_port

MODES = ("ok", "401", "429", "500", "slow", "malformed", "missing", "negative", "absurd",
         "wrong_units", "string")


def iso(ts: float, minutes_only: bool = False) -> str:
    stamp = datetime.fromtimestamp(ts, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%MZ") if minutes_only else stamp.isoformat().replace("+00:00", "Z")


class FakeGrid:
    def __init__(self, token: str = "em-token-s3cr3t", username: str = "wt-user",
                 password: str = "wt-pass-s3cr3t", json_token: str = "json-token-s3cr3t") -> None:
        self.token, self.username, self.password, self.json_token = token, username, password, json_token
        self.wt_token = "wt-bearer-" + password[::-1]
        self.mode = {api: "ok" for api in ("em", "wt", "uk", "json")}
        self.value = {"em": 300.0, "wt": 1000.0, "uk": 200.0, "json": 400.0}  # wt in lbs/MWh
        self.data_time: float | None = None  # timestamp in answers; None: now
        # the API's "now" (unix time): a test gives it the wall clock it gives the chain
        self.wall: Callable[[], float] = time.time
        self.retry_after = "1"
        self.slow_seconds = 3.0
        self.requests: list[tuple[str, float, str]] = []  # (api, time, path)
        # WattTime's plans: "pro" reads /v3/forecast everywhere; "free" only in the preview
        # region CAISO_NORTH (403 elsewhere), /v3/signal-index everywhere
        self.wt_plan = "pro"
        self.em_queries: list[dict[str, str]] = []
        self.wt_logins = 0  # successful WattTime logins
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/em/v3/carbon-intensity/latest", self.em_latest)
        app.router.add_get("/em/v3/carbon-intensity/forecast", self.em_forecast)
        # a moved API: same host, new path (followed); another host (refused with the token)
        app.router.add_get("/em-moved/v3/carbon-intensity/latest", self.em_moved_here)
        app.router.add_get("/em-away/v3/carbon-intensity/latest", self.em_moved_away)
        app.router.add_get("/wt/login", self.wt_login)
        app.router.add_get("/wt/v3/forecast", self.wt_forecast)
        app.router.add_get("/wt/v3/signal-index", self.wt_index)
        app.router.add_get("/uk/intensity", self.uk_now)
        app.router.add_get("/uk/intensity/{start}/fw24h", self.uk_forecast)
        app.router.add_get("/uk/regional/regionid/{region}", self.uk_region)
        app.router.add_get("/uk/regional/intensity/{start}/fw24h/regionid/{region}", self.uk_region_forecast)
        app.router.add_get("/json", self.json_feed)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def count(self, api: str) -> int:
        return sum(1 for a, _, _ in self.requests if a == api)

    # --- misbehaviour shared by all APIs --------------------------------------------------

    async def _misbehave(self, api: str, request: web.Request):
        """A response for the error modes, or None to answer normally."""
        self.requests.append((api, time.monotonic(), request.path))
        mode = self.mode[api]
        if mode == "401":
            return web.json_response({"error": "unauthorized"}, status=401)
        if mode == "429":
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if mode == "500":
            return web.Response(status=500, text="upstream exploded")
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if mode == "malformed":
            return web.Response(text='{"carbonIntensity": 3', content_type="application/json")
        return None

    def _number(self, api: str):
        mode = self.mode[api]
        if mode == "negative":
            return -self.value[api]
        if mode == "absurd":
            return 1e9
        if mode == "string":
            return f"{self.value[api]} gCO2/kWh"
        return self.value[api]

    def _stamp(self) -> float:
        return self.wall() if self.data_time is None else self.data_time

    # --- Electricity Maps --------------------------------------------------------------------

    async def em_latest(self, request):
        if request.headers.get("auth-token") != self.token:
            self.requests.append(("em", time.monotonic(), request.path))
            return web.json_response({"error": "bad token"}, status=401)
        early = await self._misbehave("em", request)
        if early is not None:
            return early
        self.em_queries.append(dict(request.query))
        body = {"zone": request.query.get("zone"), "carbonIntensity": self._number("em"),
                "datetime": iso(self._stamp()), "updatedAt": iso(self.wall()),
                "emissionFactorType": request.query.get("emissionFactorType", "lifecycle"),
                "isEstimated": False}
        if self.mode["em"] == "missing":
            del body["carbonIntensity"]
        if self.mode["em"] == "wrong_units":
            body["unit"] = "MW"
        return web.json_response(body)

    async def em_moved_here(self, request):
        self.requests.append(("em", time.monotonic(), request.path))
        raise web.HTTPMovedPermanently(f"/em/v3/carbon-intensity/latest?{request.query_string}")

    async def em_moved_away(self, request):
        self.requests.append(("em", time.monotonic(), request.path))
        raise web.HTTPMovedPermanently(
            f"http://localhost:{self.port}/em/v3/carbon-intensity/latest?{request.query_string}")

    async def em_forecast(self, request):
        if request.headers.get("auth-token") != self.token:
            return web.json_response({"error": "bad token"}, status=401)
        now = self.wall() - self.wall() % 3600
        values = [self.value["em"] + 10 * abs(h - 5) for h in range(24)]  # lowest at +5 h
        return web.json_response({"zone": request.query.get("zone"), "updatedAt": iso(self.wall()),
                                  "forecast": [{"carbonIntensity": v, "datetime": iso(now + h * 3600)}
                                               for h, v in enumerate(values)]})

    # --- WattTime ----------------------------------------------------------------------------

    async def wt_login(self, request):
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "bad login"}, status=401)
        self.wt_logins += 1
        return web.json_response({"token": self.wt_token})

    def _wt_auth(self, request):
        return request.headers.get("Authorization") == f"Bearer {self.wt_token}"

    async def wt_forecast(self, request):
        if not self._wt_auth(request):
            return web.json_response({"error": "bad token"}, status=401)
        if self.wt_plan == "free" and request.query.get("region") != "CAISO_NORTH":
            self.requests.append(("wt", time.monotonic(), request.path))
            return web.json_response({"error": "Unauthorized access to data: upgrade your "
                                               "plan"}, status=403)
        early = await self._misbehave("wt", request)
        if early is not None:
            return early
        start = self._stamp() - self._stamp() % 300
        value = self._number("wt")
        data = [{"point_time": iso(start + n * 300), "value": value if n == 0 else self.value["wt"] - n}
                for n in range(288)]
        if self.mode["wt"] == "missing":
            for point in data:
                del point["value"]
        meta = {"region": request.query.get("region"), "signal_type": "co2_moer",
                "units": "MW" if self.mode["wt"] == "wrong_units" else "lbs_co2_per_mwh",
                "generated_at": iso(start), "data_point_period_seconds": 300}
        return web.json_response({"data": data, "meta": meta})

    async def wt_index(self, request):
        if not self._wt_auth(request):
            return web.json_response({"error": "bad token"}, status=401)
        return web.json_response({
            "data": [{"point_time": iso(self._stamp()), "value": 73.0}],
            "meta": {"region": request.query.get("region"), "signal_type": "co2_moer",
                     "units": "percentile", "data_point_period_seconds": 300}})

    # --- UK Carbon Intensity -----------------------------------------------------------------

    def _uk_period(self, start: float, regional: bool = False, value=None):
        value = self._number("uk") if value is None else value
        intensity = {"forecast": value, "index": "moderate"}
        if not regional:
            intensity["actual"] = value
        if self.mode["uk"] == "missing":
            intensity = {"index": "moderate"}
        return {"from": iso(start, True), "to": iso(start + 1800, True), "intensity": intensity}

    async def uk_now(self, request):
        early = await self._misbehave("uk", request)
        if early is not None:
            return early
        start = self._stamp() - self._stamp() % 1800
        return web.json_response({"data": [self._uk_period(start)]})

    async def uk_forecast(self, request):
        start = self.wall() - self.wall() % 1800
        return web.json_response({"data": [
            self._uk_period(start + n * 1800, value=self.value["uk"] + abs(n - 10)) for n in range(48)]})

    async def uk_region(self, request):
        early = await self._misbehave("uk", request)
        if early is not None:
            return early
        start = self._stamp() - self._stamp() % 1800
        region = int(request.match_info["region"])
        return web.json_response({"data": [{"regionid": region, "dnoregion": "UKPN London",
                                            "shortname": "London",
                                            "data": [self._uk_period(start, regional=True)]}]})

    async def uk_region_forecast(self, request):
        start = self.wall() - self.wall() % 1800
        region = int(request.match_info["region"])
        return web.json_response({"data": {"regionid": region, "shortname": "London", "data": [
            self._uk_period(start + n * 1800, True, self.value["uk"] + abs(n - 4)) for n in range(48)]}})

    # --- generic JSON ------------------------------------------------------------------------

    async def json_feed(self, request):
        if request.headers.get("Authorization") != f"Bearer {self.json_token}":
            self.requests.append(("json", time.monotonic(), request.path))
            return web.json_response({"error": "bad token"}, status=401)
        early = await self._misbehave("json", request)
        if early is not None:
            return early
        body = {"site": "plant-7", "reading": {"co2": self._number("json"),
                                               "unit": "MW" if self.mode["json"] == "wrong_units" else "g/kWh",
                                               "at": int(self._stamp())}}
        if self.mode["json"] == "missing":
            del body["reading"]["co2"]
        return web.json_response(body)
