from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Interface

import pytest

from pvsd.boot.media import HTTP_BOOT_PATH, MEDIA_NICS, MediaNetwork, media_script, media_servers
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput
from pvsd.farm.records import Server, ServerState

DHCP = MediaNetwork()


def server(name: str, address: str, age: float = 1.0, state: ServerState = ServerState.RUNNING) -> Server:
    return Server(name, address, {"api": 54321}, 1.0, None, state, "i", 0.0, 0.0, age)


FARM = [
    server("pvs3", "10.77.0.13"),
    server("pvs1", "10.77.0.11"),
    server("pvs2", "10.77.0.12"),
    server("pvs4", "10.77.0.14", age=99.0),  # dead: its heartbeat is too old
    server("pvs5", "10.77.0.15", state=ServerState.STOPPED),
]


@pytest.mark.parametrize(
    ("this", "expected"),
    [
        ("pvs2", ["pvs2", "pvs1", "pvs3"]),
        ("pvs1", ["pvs1", "pvs2", "pvs3"]),
        ("pvs4", ["pvs1", "pvs2", "pvs3"]),  # a dead "this" is left out like any dead server
        ("nosuch", ["pvs1", "pvs2", "pvs3"]),
    ],
)
def test_the_live_servers_this_one_first_then_by_name(this: str, expected: list[str]) -> None:
    assert [s.name for s in media_servers(this, FARM, 8.0)] == expected


def test_each_server_is_asked_over_http_in_turn_with_the_chain_timeout() -> None:
    servers = media_servers("pvs2", FARM, 8.0)
    lines = media_script(servers, DHCP, BootstrapConfig(), 54321).splitlines()
    assert lines[0] == "#!ipxe"
    chains = [line for line in lines if line.startswith("chain ")]
    device = "/boot/pvsd/device/${${nic}/mac:hexhyp}.ipxe"
    assert chains == [
        f"chain --timeout 3000 http://10.77.0.12:54321{device} || goto server1",
        f"chain --timeout 3000 http://10.77.0.11:54321{device} || goto server2",
        f"chain --timeout 3000 http://10.77.0.13:54321{device} || goto server3",
    ]
    assert all(HTTP_BOOT_PATH in line for line in chains)
    assert "tftp://" not in "\n".join(lines) and "10.77.0.14" not in "\n".join(lines)
    assert lines[lines.index(":server3") + 1] == "echo pvsd media: no server answered for ${${nic}/mac}"
    assert lines[-1] == "exit"  # a chained script that just ends would count as success


def test_a_servers_recorded_api_port_wins_and_the_default_fills_in() -> None:
    odd = dataclasses.replace(server("pvs1", "10.0.0.1"), ports={"login": 6910})
    moved = dataclasses.replace(server("pvs2", "10.0.0.2"), ports={"api": 8080})
    script = media_script([odd, moved], DHCP, BootstrapConfig(), 54321)
    assert "http://10.0.0.1:54321/boot/" in script and "http://10.0.0.2:8080/boot/" in script


def test_dhcp_tries_each_nic_in_turn_with_ifconf() -> None:
    lines = media_script(FARM[:1], DHCP, BootstrapConfig(), 54321).splitlines()
    tries = [line for line in lines if line.startswith("ifconf")]
    assert len(tries) == MEDIA_NICS
    assert tries[0] == (
        "ifconf -c dhcp net0 && set nic net0 && goto up || echo pvsd media: no DHCP answer on net0"
    )
    assert tries[-1].startswith(f"ifconf -c dhcp net{MEDIA_NICS - 1} ")
    after = lines[lines.index(tries[-1]) + 1 :]
    assert after[:2] == ["echo pvsd media: no address by DHCP on any NIC", "goto recover"]
    assert "dhcp\n" not in "\n".join(lines)  # bare `dhcp` waits 17 s for IPv6


@pytest.mark.parametrize(
    ("network", "expected", "absent"),
    [
        (
            MediaNetwork(
                IPv4Interface("192.168.5.20/24"), IPv4Address("192.168.5.1"), IPv4Address("192.168.5.2")
            ),
            [
                "set nic net0",
                "set net0/ip 192.168.5.20",
                "set net0/netmask 255.255.255.0",
                "set net0/gateway 192.168.5.1",
                "set net0/dns 192.168.5.2",
                "ifopen net0 || goto recover",
            ],
            ["ifconf"],
        ),
        (
            MediaNetwork(IPv4Interface("10.1.2.3/16")),
            ["set net0/ip 10.1.2.3", "set net0/netmask 255.255.0.0", "ifopen net0 || goto recover"],
            ["ifconf", "gateway", "/dns"],
        ),
    ],
)
def test_a_static_address_is_set_on_net0_without_dhcp(
    network: MediaNetwork, expected: list[str], absent: list[str]
) -> None:
    script = media_script(FARM[:1], network, BootstrapConfig(), 54321)
    lines = script.splitlines()
    positions = [lines.index(line) for line in expected]
    assert positions == sorted(positions) and positions[-1] < lines.index(":up")
    assert not [word for word in absent if word in script]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (
            BootstrapConfig(),
            [
                "prompt --timeout 5000 pvsd media: retrying in 5 s; press a key to retry now ||",
                "goto network",
            ],
        ),
        (
            BootstrapConfig(recovery="reboot", reboot_delay_s=30),
            [
                "prompt --timeout 30000 pvsd media: rebooting; press a key to retry now "
                "&& goto network || reboot"
            ],
        ),
    ],
)
def test_when_no_server_answers_the_bootstraps_recovery_follows(
    settings: BootstrapConfig, expected: list[str]
) -> None:
    lines = media_script(FARM[:2], DHCP, settings, 54321).splitlines()
    start = lines.index(":recover")
    assert lines[start + 1 : start + 1 + len(expected)] == expected
    assert lines[start + 1 + len(expected)] == ":done"


def test_the_shell_prompt_comes_before_the_network_only_when_asked_for() -> None:
    assert "shell" not in media_script(FARM[:1], DHCP, BootstrapConfig(), 54321)
    script = media_script(FARM[:1], DHCP, dataclasses.replace(BootstrapConfig(), shell_prompt_ms=2000), 54321)
    assert script.index("--key 0x02 --timeout 2000") < script.index(":network")


def test_the_script_is_the_same_for_the_same_farm() -> None:
    first = media_script(media_servers("pvs1", FARM, 8.0), DHCP, BootstrapConfig(), 54321, "lab")
    shuffled = list(reversed(FARM))
    again = media_script(media_servers("pvs1", shuffled, 8.0), DHCP, BootstrapConfig(), 54321, "lab")
    assert first == again and "farm lab" in first


def test_media_need_a_server() -> None:
    with pytest.raises(BadInput, match="at least one server"):
        media_script([], DHCP, BootstrapConfig(), 54321)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gateway": IPv4Address("10.0.0.1")}, "needs a static address"),
        ({"dns": IPv4Address("10.0.0.1")}, "needs a static address"),
        (
            {"address": IPv4Interface("10.0.0.5/24"), "gateway": IPv4Address("10.0.1.1")},
            "outside 10.0.0.0/24",
        ),
        ({"address": IPv4Interface("10.0.0.5/24"), "gateway": IPv4Address("10.0.0.5")}, "own address"),
    ],
)
def test_inconsistent_static_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        MediaNetwork(**kwargs)  # type: ignore[arg-type]
