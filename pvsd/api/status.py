"""`GET /farm/status`: how this server sees the farm database now, for `pvsd server list` and
for operators, answered even while the database is down."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["STATUS_PATH", "status_routes"]

STATUS_PATH = "/farm/status"


def status_routes(status: Callable[[], dict[str, Any]]) -> list[web.RouteDef]:
    async def handle(_: web.Request) -> web.Response:
        return web.json_response(status())

    return [web.get(STATUS_PATH, handle)]
