from __future__ import annotations

import dataclasses

from pvsd.boot.ipxe import (
    DisklessBoot,
    device_script,
    device_script_name,
    diskless_script,
    ipxe_bootstrap,
    refusal_script,
    unknown_device_script,
)
from pvsd.config import BootstrapConfig
from pvsd.farm.records import Device, DeviceType, Server, ServerState
from pvsd.target.cmdline import parse_cmdline


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


LINUX = DisklessBoot("linux", 3, "6.1.0-57-amd64", True, "console=ttyS0 quiet")


def test_a_diskless_script_loads_the_kernel_and_both_initramfs_files_from_each_live_server_in_turn() -> None:
    script = diskless_script(DEVICE, LINUX, FARM[0], FARM, 8.0, 4000)
    lines = script.splitlines()
    kernels = [line for line in lines if line.startswith("kernel ")]
    assert len(kernels) == 2  # pvs3 is dead
    assert kernels[0].startswith(
        "kernel --timeout 4000 --name vmlinuz http://10.77.0.12:54321/boot/vdisk/linux/3/vmlinuz "
    )
    assert kernels[0].endswith(" || goto server1")
    assert "initrd=initrd.img initrd=pvsd-agent.cpio.gz console=ttyS0 quiet" in kernels[0]
    settings = parse_cmdline(kernels[0].split(" || ")[0])
    assert settings.mac == DEVICE.mac and settings.vdisk == "linux"
    assert settings.servers == (("10.77.0.12", 6910), ("10.77.0.11", 6910))
    initrds = [line for line in lines if line.startswith("initrd ")]
    assert initrds[:2] == [
        "initrd --timeout 4000 --name initrd.img "
        "http://10.77.0.12:54321/boot/vdisk/linux/3/initrd || goto server1",
        "initrd --timeout 4000 --name pvsd-agent.cpio.gz "
        "http://10.77.0.12:54321/boot/agent/linux/3/pvsd-agent.cpio.gz || goto server1",
    ]
    assert lines.count("imgfree") == 2  # nothing half-loaded from one server is booted with the next's
    assert lines[-1] == "exit 1"  # no server: the chain fails and pvs.ipxe's recovery follows


def test_an_image_without_its_own_initramfs_gets_only_the_agent_overlay() -> None:
    script = diskless_script(DEVICE, dataclasses.replace(LINUX, has_initrd=False), FARM[1], FARM, 8.0, 4000)
    assert "initrd.img" not in script
    assert "initrd=pvsd-agent.cpio.gz console=ttyS0" in script


def test_a_refusal_says_why_and_fails_the_chain() -> None:
    script = refusal_script(DEVICE, "the device is disabled")
    assert "echo pvsd device: vm1 52:54:00:12:34:56 vdisk=win10 type=test enabled=yes" in script
    assert "echo pvsd: cannot boot: the device is disabled" in script
    assert script.rstrip().endswith("exit 1")
    assert "pvsd device: unknown ${mac}" in refusal_script(None, "unknown MAC")
