"""The HTTP service on `[api] port`: one aiohttp application per server. Today it serves
/boot/ (pvsd/api/boot.py) and /replication/ (pvsd/api/replication.py); the management API,
metrics and console join it as routes."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiohttp import web

from pvsd.api.boot import BootHttp

__all__ = ["ApiService", "make_app"]

# Nothing a target or an operator sends is larger: anything bigger is refused before it is read.
MAX_REQUEST_BYTES = 64 << 10


def make_app(boot: BootHttp, routes: Sequence[web.RouteDef] = ()) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.add_routes(boot.routes())
    app.add_routes(routes)
    return app


class ApiService:
    """The app listening on one address and port, started and closed with the other services."""

    def __init__(
        self,
        boot: BootHttp,
        host: str,
        port: int,
        log: structlog.stdlib.BoundLogger,
        routes: Sequence[web.RouteDef] = (),
    ) -> None:
        self.boot = boot
        self.routes = tuple(routes)
        self.host = host
        self.port = port
        self.log = log
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(make_app(self.boot, self.routes), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=512)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.log.info(
            "HTTP listening", address=f"{self.host}:{self.port}", boot=f"http://{self.host}:{self.port}/boot/"
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
