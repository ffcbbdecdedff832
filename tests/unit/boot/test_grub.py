"""The GRUB scripts of the UEFI boot media: the media's grub.cfg and the device scripts.

What GRUB itself does with them is the e2e test's (tests/e2e/test_media.py, OVMF + GRUB);
here: the order of the servers, the fallback from one to the next, the quoting of the kernel
command line, and the recovery."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.boot.grub import (
    grub_device_script,
    grub_media_config,
    grub_refusal_script,
    grub_script_name,
    grub_unknown_device_script,
    grub_word,
)
from pvsd.boot.ipxe import DisklessBoot
from pvsd.boot.media import MediaNetwork
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput
from pvsd.farm.records import Device, DeviceType, Server, ServerState


def server(name: str, address: str, age: float = 0.0) -> Server:
    return Server(
        name, address, {"api": 54321, "login": 6910}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, age
    )


PVS1, PVS2, DEAD = server("pvs1", "10.0.0.11"), server("pvs2", "10.0.0.12"), server("pvs3", "10.0.0.13", 99.0)
DEVICE = Device("52:54:00:00:00:01", "one", None, "linux", True, DeviceType.PRODUCTION, 0.0)
BOOT = DisklessBoot("linux", 3, "6.1.0-57-amd64", True, "console=ttyS0,115200n8 quiet")


def test_the_script_name_is_the_mac_with_hyphens_as_the_media_builds_it() -> None:
    assert grub_script_name("52:54:00:AB:cd:01") == "pvsd/grub/52-54-00-AB-cd-01.cfg"


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("pvsd.servers=10.0.0.1:6910,10.0.0.2:6910", "pvsd.servers=10.0.0.1:6910,10.0.0.2:6910"),
        ("root=/dev/nbd0", "root=/dev/nbd0"),
        ("a;b", "'a;b'"),
        ("$HOME", "'$HOME'"),
        ("it's", "'it'\\''s'"),
        ("", "''"),
    ],
)
def test_words_are_quoted_only_when_grub_would_read_something_into_them(word: str, quoted: str) -> None:
    assert grub_word(word) == quoted


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"), max_size=40))
def test_a_quoted_word_reads_back_as_itself(word: str) -> None:
    """GRUB's rule: inside single quotes nothing is special; outside, a backslash escapes."""
    quoted = grub_word(word)
    out, index, inside = [], 0, False
    while index < len(quoted):
        char = quoted[index]
        if char == "'":
            inside = not inside
        elif char == "\\" and not inside:
            index += 1
            out.append(quoted[index])
        else:
            assert inside or char not in ' \t;|&$<>{}"#', quoted
            out.append(char)
        index += 1
    assert not inside and "".join(out) == word


def test_the_device_script_tries_each_live_server_this_one_first_and_boots() -> None:
    script = grub_device_script(DEVICE, BOOT, PVS2, [PVS1, PVS2, DEAD], 8.0)
    loads = [line for line in script.splitlines() if line.startswith("if linux ")]
    assert [line.split(")")[0] for line in loads] == [
        "if linux (http,10.0.0.12:54321",
        "if linux (http,10.0.0.11:54321",
    ]
    first = loads[0]
    assert first.startswith(
        "if linux (http,10.0.0.12:54321)/boot/vdisk/linux/3/vmlinuz console=ttyS0,115200n8 quiet "
    )
    assert "pvsd.mac=52:54:00:00:00:01 pvsd.servers=10.0.0.12:6910,10.0.0.11:6910 pvsd.vdisk=linux" in first
    assert "initrd=" not in script and "10.0.0.13" not in script
    assert (
        "  if initrd (http,10.0.0.12:54321)/boot/vdisk/linux/3/initrd "
        "(http,10.0.0.12:54321)/boot/agent/linux/3/pvsd-agent.cpio.gz; then"
    ) in script
    assert script.count("    boot\n") == 2
    assert script.rstrip().endswith("echo 'pvsd: no server could give this device its kernel'")


def test_an_image_without_its_own_initramfs_gets_only_the_agent_overlay() -> None:
    no_initrd = DisklessBoot("linux", 3, "6.1.0-57-amd64", False, "")
    script = grub_device_script(DEVICE, no_initrd, PVS1, [PVS1], 8.0)
    assert "  if initrd (http,10.0.0.11:54321)/boot/agent/linux/3/pvsd-agent.cpio.gz; then" in script
    assert "/vdisk/linux/3/initrd" not in script


def test_a_refusal_says_why_and_returns_to_the_media() -> None:
    script = grub_refusal_script(DEVICE, "the device is disabled")
    assert "echo 'pvsd: cannot boot: the device is disabled'" in script
    assert "boot" not in script.split("\n", 1)[1].replace("cannot boot", "")
    assert "exit" not in script  # in GRUB, `exit` would leave GRUB itself
    assert "not registered" in grub_unknown_device_script()


def test_the_media_config_asks_dhcp_then_each_server_in_order_and_keeps_trying() -> None:
    config = grub_media_config([PVS2, PVS1], MediaNetwork(), BootstrapConfig(), 54321, "lab")
    assert "net_bootp" in config
    assert config.index('source "(http,10.0.0.12:54321)/boot/pvsd/grub/${pvsd_name}.cfg"') < config.index(
        'source "(http,10.0.0.11:54321)/boot/pvsd/grub/${pvsd_name}.cfg"'
    )
    assert "while true; do" in config and "regexp --set=1:m1" in config
    assert 'set pvsd_mac="$net_efinet3_dhcp_mac"' in config


def test_a_static_media_config_sets_the_address_and_the_gateway_and_no_dhcp() -> None:
    network = MediaNetwork(
        IPv4Interface("192.168.5.20/24"), IPv4Address("192.168.5.1"), IPv4Address("192.168.5.2")
    )
    config = grub_media_config([PVS1], network, BootstrapConfig(recovery="reboot", reboot_delay_s=7), 54321)
    assert "net_bootp" not in config
    assert "net_add_addr pvsd efinet0 192.168.5.20" in config
    assert "net_add_route pvsd_local 192.168.5.0/24 pvsd" in config
    assert "net_add_route pvsd_default 0.0.0.0/0 gw 192.168.5.1" in config
    assert "net_add_dns 192.168.5.2" in config
    assert config.rstrip().endswith("sleep 7\nreboot")
    assert "while true" not in config


def test_a_server_without_a_recorded_api_port_gets_the_default() -> None:
    bare = Server("pvs9", "10.0.0.19", {}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, 0.0)
    assert "(http,10.0.0.19:8080)/boot/" in grub_media_config([bare], MediaNetwork(), BootstrapConfig(), 8080)
    with pytest.raises(BadInput):
        grub_media_config([], MediaNetwork(), BootstrapConfig(), 8080)
