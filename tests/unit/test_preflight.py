"""What `pvsd config check` finds on this host: users, folders, addresses and ports."""

from __future__ import annotations

import socket
from pathlib import Path

from support.net import free_port

from pvsd.config import Config, load_config
from pvsd.preflight import host_problems


def config(tmp_path: Path, **environ: str) -> Config:
    udp = [str(free_port("127.0.0.1", socket.SOCK_DGRAM)) for _ in range(3)]
    base = {
        "PVSD_TFTP__PORT": udp[0],
        "PVSD_LOGIN__PORT": udp[1],
        "PVSD_STREAM__PORTS": f"{udp[2]}-{udp[2]}",
        "PVSD_SERVER__ADDRESS": "127.0.0.1",
        "PVSD_STREAM__CACHE_DIR": str(tmp_path / "cache"),
        "PVSD_DHCP__ENABLED": "false",
    }
    return load_config(None, environ={**base, **environ})


def keys(problems: list[object]) -> dict[str, str]:
    return {p.key: p.message for p in problems}  # type: ignore[attr-defined]


def test_a_port_in_use_an_unknown_user_and_an_address_not_here_are_named(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        found = keys(host_problems(config(tmp_path, PVSD_TFTP__PORT=str(port))))
    assert "in use" in found["tftp.port"] and f"127.0.0.1:{port}" in found["tftp.port"]
    assert "server.user" not in found
    assert (
        "no user"
        in keys(host_problems(config(tmp_path, PVSD_SERVER__USER="no-such-user-pvsd")))["server.user"]
    )
    elsewhere = keys(host_problems(config(tmp_path, PVSD_SERVER__ADDRESS="10.99.99.99")))
    assert "not an address of this host" in elsewhere["server.bind"]


def test_free_ports_and_folders_give_no_problem(tmp_path: Path) -> None:
    assert keys(host_problems(config(tmp_path))) == {}
