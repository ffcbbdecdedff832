"""pvs.bootstrap over TFTP lists the farm's live servers, the serving one first, and drops the dead."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import tftpy
from support.net import free_port
from support.pvsd import pvsd, pvsd_env, serve, wait_for
from support.tftp import fetch, wait_until_serving

DEAD_AFTER = 3.0


def bootstrap(address: str, port: int) -> dict[str, object]:
    content, _ = fetch((address, port), "pvs.bootstrap")
    document: dict[str, object] = json.loads(content)
    return document


def names(document: dict[str, object]) -> list[str]:
    return [server["name"] for server in document["servers"]]  # type: ignore[attr-defined, index]


def test_bootstrap_lists_live_servers_this_one_first_and_drops_the_dead(
    farm_url: str, tmp_path: Path
) -> None:
    common = {
        "farm__heartbeat_interval": "0.5",
        "farm__dead_after": str(DEAD_AFTER),
        "tftp__root": str(tmp_path),
    }
    base = pvsd_env(farm_url, **common)
    assert pvsd(base, "farm", "init", "--name", "lab").returncode == 0
    port1, port2 = free_port("127.0.0.11", socket.SOCK_DGRAM), free_port("127.0.0.12", socket.SOCK_DGRAM)
    env1 = pvsd_env(farm_url, tftp__port=str(port1), login__port="7001", **common)
    env2 = pvsd_env(farm_url, tftp__port=str(port2), login__port="7002", **common)
    with (
        serve(env1, "pvs1", "127.0.0.11", tmp_path) as pvs1,
        serve(env2, "pvs2", "127.0.0.12", tmp_path) as pvs2,
    ):
        wait_until_serving(("127.0.0.11", port1))
        wait_until_serving(("127.0.0.12", port2))
        wait_for(lambda: names(bootstrap("127.0.0.11", port1)) == ["pvs1", "pvs2"], timeout=10)
        document = bootstrap("127.0.0.11", port1)
        assert document["farm"] == "lab" and document["served_by"] == "pvs1"
        assert document["servers"] == [
            {"name": "pvs1", "address": "127.0.0.11", "login_port": 7001},
            {"name": "pvs2", "address": "127.0.0.12", "login_port": 7002},
        ]
        assert document["login_polling_timeout_ms"] == 5000 and document["login_general_timeout_ms"] == 5000
        assert document["recovery"] == {"method": "restore"}
        # each server publishes on its own heartbeat: pvs2 may see pvs1 a heartbeat later
        wait_for(lambda: names(bootstrap("127.0.0.12", port2)) == ["pvs2", "pvs1"], timeout=10)

        # tftpy, a real client, gets the same document
        out = tmp_path / "pvs.bootstrap"
        tftpy.TftpClient("127.0.0.12", port2).download("pvs.bootstrap", str(out))
        assert names(json.loads(out.read_text())) == ["pvs2", "pvs1"]

        # `pvsd bootstrap show` prints what a target would get from a given server
        shown = pvsd(env1, "bootstrap", "show", "--server", "pvs2")
        assert shown.returncode == 0 and names(json.loads(shown.stdout)) == ["pvs2", "pvs1"]

        pvs2.signal(signal.SIGKILL)
        took = wait_for(lambda: names(bootstrap("127.0.0.11", port1)) == ["pvs1"], timeout=DEAD_AFTER + 4)
        assert took <= DEAD_AFTER + 4
        assert pvs1.process.poll() is None


def test_ipxe_scripts_over_tftp_follow_the_farm(tmp_path: Path) -> None:
    env = pvsd_env(
        f"sqlite:///{tmp_path}/farm.db",
        farm__heartbeat_interval="0.5",
        farm__dead_after="3",
        tftp__root=str(tmp_path),
        tftp__port=str(free_port("127.0.0.11", socket.SOCK_DGRAM)),
    )
    port = int(env["PVSD_TFTP__PORT"])
    assert pvsd(env, "farm", "init").returncode == 0
    assert pvsd(env, "device", "add", "52:54:00:12:34:56", "--name", "vm1").returncode == 0
    address = ("127.0.0.11", port)
    device = "pvsd/device/52-54-00-12-34-56.ipxe"
    with serve(env, "pvs1", "127.0.0.11", tmp_path):
        wait_until_serving(address)
        script = fetch(address, "pvs.ipxe")[0].decode()
        assert script.startswith("#!ipxe\n") and "echo pvsd bootstrap: pvs1 ${mac}" in script
        assert "tftp://127.0.0.11/pvsd/device/${mac:hexhyp}.ipxe" in script
        assert "pvsd device: vm1 52:54:00:12:34:56 vdisk=- " in fetch(address, device)[0].decode()
        assert "unknown" in fetch(address, "pvsd/device/52-54-00-00-00-99.ipxe")[0].decode()
        assert pvsd(env, "vdisk", "create", "win10", "--size", "1G").returncode == 0
        assert pvsd(env, "device", "set", "52:54:00:12:34:56", "--vdisk", "win10").returncode == 0
        wait_for(lambda: "vdisk=win10" in fetch(address, device)[0].decode(), timeout=5)
        assert pvsd(env, "device", "remove", "52:54:00:12:34:56").returncode == 0
        wait_for(lambda: "unknown" in fetch(address, device)[0].decode(), timeout=5)
