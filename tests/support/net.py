"""Ports and addresses for tests that stay on this machine."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (the usual small race is fine for tests)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
