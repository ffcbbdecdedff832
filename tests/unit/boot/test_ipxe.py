from __future__ import annotations

import dataclasses

from pvsd.boot.ipxe import device_script, device_script_name, ipxe_bootstrap, unknown_device_script
from pvsd.config import BootstrapConfig
from pvsd.farm.records import Device, DeviceType, Server, ServerState


def server(name: str, address: str, age: float = 1.0) -> Server:
    return Server(name, address, {"login": 6910}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, age)


FARM = [server("pvs2", "10.77.0.12"), server("pvs1", "10.77.0.11"), server("pvs3", "10.77.0.13", age=99.0)]
DEVICE = Device("52:54:00:12:34:56", "vm1", None, "win10", True, DeviceType.TEST, 0.0)


def test_bootstrap_tries_this_server_first_then_the_live_ones_and_embeds_their_addresses() -> None:
    script = ipxe_bootstrap("lab", FARM[0], FARM, 8.0, BootstrapConfig())
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    assert "echo pvsd bootstrap: pvs2 ${mac}" in lines
    chains = [line for line in lines if line.startswith("chain ")]
    assert chains == [
        "chain --timeout 3000 tftp://10.77.0.12/pvsd/device/${mac:hexhyp}.ipxe || goto server1",
        "chain --timeout 3000 tftp://10.77.0.11/pvsd/device/${mac:hexhyp}.ipxe || goto server2",
    ]
    assert "proxydhcp" not in script and "pxebs" not in script and "next-server" not in script
    assert lines[-1] == "exit"  # a chained script that just ends would count as success


def test_the_shell_prompt_is_offered_only_when_asked_for() -> None:
    assert "shell" not in ipxe_bootstrap("lab", FARM[0], FARM, 8.0, BootstrapConfig())
    settings = dataclasses.replace(BootstrapConfig(), shell_prompt_ms=2000)
    script = ipxe_bootstrap("lab", FARM[0], FARM, 8.0, settings)
    assert "prompt --key 0x02 --timeout 2000 pvsd: press Ctrl-B for the iPXE shell... && shell ||" in script
    assert script.index("shell ||") < script.index("chain ")


def test_reboot_recovery_reboots_after_its_delay() -> None:
    settings = dataclasses.replace(
        BootstrapConfig(), recovery="reboot", reboot_delay_s=20, chain_timeout_ms=1500
    )
    script = ipxe_bootstrap("lab", FARM[1], FARM, 8.0, settings)
    assert "--timeout 1500 " in script
    assert "prompt --timeout 20000" in script and "|| reboot" in script


def test_device_scripts() -> None:
    assert device_script_name("52:54:00:12:34:56") == "pvsd/device/52-54-00-12-34-56.ipxe"
    assert "echo pvsd device: vm1 52:54:00:12:34:56 vdisk=win10 type=test enabled=yes" in device_script(
        DEVICE
    )
    template = "#!ipxe\necho {{name}} on {{site}} ({{vdisk}})\nchain http://x/${mac}\n"
    assert device_script(DEVICE, template) == "#!ipxe\necho vm1 on - (win10)\nchain http://x/${mac}\n"
    assert "unknown ${mac}" in unknown_device_script()
