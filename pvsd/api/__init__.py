"""The HTTP service on [api] port (54321): /boot/ for targets; later /api/v1, /metrics and the console."""

from pvsd.api.app import ApiService, make_app
from pvsd.api.boot import BOOT_PREFIX, BootHttp, Resolver

__all__ = ["BOOT_PREFIX", "ApiService", "BootHttp", "Resolver", "make_app"]
