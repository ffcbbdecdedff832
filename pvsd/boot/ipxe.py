"""iPXE scripts: `pvs.ipxe`, the bootstrap that lists the farm's live servers, and the per-device stage.

Pure: the caller passes the servers and devices it knows. The bootstrap embeds every live
server's address (this one first) instead of relying on `${proxydhcp/...}` or
`${pxebs/...}`, which depend on how the client reached us (DESIGN.md section 5). It tries
each server with `chain --timeout`, so a dead server costs seconds, not iPXE's 16 s.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pvsd.config import BootstrapConfig
from pvsd.farm.records import Device, Server, ServerHealth
from pvsd.target.cmdline import GuestSettings, guest_arguments

__all__ = [
    "AGENT_OVERLAY_NAME",
    "DEVICE_SCRIPT_PREFIX",
    "IPXE_BOOTSTRAP_NAME",
    "KERNEL_NAME",
    "DisklessBoot",
    "agent_overlay_path",
    "boot_file_path",
    "device_line",
    "device_script",
    "device_script_name",
    "diskless_script",
    "ipxe_bootstrap",
    "live_first",
    "refusal_script",
    "unknown_device_script",
]

IPXE_BOOTSTRAP_NAME = "pvs.ipxe"
DEVICE_SCRIPT_PREFIX = "pvsd/device/"

DEFAULT_DEVICE_TEMPLATE = """#!ipxe
echo pvsd device: {{name}} {{mac}} vdisk={{vdisk}} type={{type}} enabled={{enabled}}
exit
"""


def device_script_name(mac: str) -> str:
    """The TFTP name of a device's script; iPXE builds the same from `${mac:hexhyp}`."""
    return f"{DEVICE_SCRIPT_PREFIX}{mac.replace(':', '-')}.ipxe"


def ipxe_bootstrap(
    farm: str, this: Server, servers: Iterable[Server], dead_after: float, settings: BootstrapConfig
) -> str:
    ordered = live_first(this, servers, dead_after)
    lines = [
        "#!ipxe",
        f"# pvsd bootstrap of farm {farm}, made by {this.name}: each live server in turn, this one first",
        f"echo pvsd bootstrap: {this.name} ${{mac}}",
    ]
    if settings.shell_prompt_ms:
        lines.append(
            f"prompt --key 0x02 --timeout {settings.shell_prompt_ms} "
            "pvsd: press Ctrl-B for the iPXE shell... && shell ||"
        )
    for index, server in enumerate(ordered):
        target = f"tftp://{server.address}/{DEVICE_SCRIPT_PREFIX}${{mac:hexhyp}}.ipxe"
        lines += [
            f":server{index}",
            f"echo pvsd: asking {server.name} at {server.address}",
            f"chain --timeout {settings.chain_timeout_ms} {target} || goto server{index + 1}",
            "goto done",
        ]
    lines += [f":server{len(ordered)}", "echo pvsd: no server answered for ${mac}"]
    if settings.recovery == "reboot":
        lines += [
            f"prompt --timeout {settings.reboot_delay_s * 1000} pvsd: rebooting; press a key to retry now "
            "&& goto server0 || reboot",
        ]
    else:
        lines += ["prompt --timeout 5000 pvsd: retrying in 5 s; press a key to retry now ||", "goto server0"]
    lines += [":done", "exit", ""]
    return "\n".join(lines)


def device_script(device: Device, template: str | None = None) -> str:
    """A device's next stage, from `[boot] script` or the built-in default."""
    text = template if template is not None else DEFAULT_DEVICE_TEMPLATE
    values = {
        "name": device.name,
        "mac": device.mac,
        "vdisk": device.vdisk or "-",
        "type": str(device.type),
        "enabled": "yes" if device.enabled else "no",
        "site": device.site or "-",
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def unknown_device_script() -> str:
    """What a MAC the farm does not know gets: a clear line on its console, then pvs.ipxe's recovery."""
    return refusal_script(None, "this MAC is not registered: pvsd device add ${mac} --name NAME")


# Where the HTTP service (pvsd/api) serves a version's boot files and its agent overlay, below /boot/.
AGENT_OVERLAY_NAME = "pvsd-agent.cpio.gz"
IMAGE_INITRD_NAME = "initrd.img"
KERNEL_NAME = "vmlinuz"


def boot_file_path(vdisk: str, version: int, name: str) -> str:
    """`vdisk/NAME/VERSION/vmlinuz` or `.../initrd`: a version's kernel or initramfs."""
    return f"vdisk/{vdisk}/{version}/{name}"


def agent_overlay_path(vdisk: str, version: int) -> str:
    """The agent overlay for a version's kernel, built from that image's own modules."""
    return f"agent/{vdisk}/{version}/{AGENT_OVERLAY_NAME}"


@dataclass(frozen=True)
class DisklessBoot:
    """What a device's script loads: the version it will log in to, and that version's boot files."""

    vdisk: str
    version: int
    kernel_version: str
    has_initrd: bool
    cmdline: str  # [boot] cmdline, then the version's own (`vdisk import --cmdline`)


def live_first(this: Server, servers: Iterable[Server], dead_after: float) -> list[Server]:
    others = sorted(
        (s for s in servers if s.name != this.name and s.health(dead_after) is ServerHealth.ALIVE),
        key=lambda s: s.name,
    )
    return [this, *others]


def device_line(device: Device) -> str:
    return (
        f"echo pvsd device: {device.name} {device.mac} vdisk={device.vdisk or '-'} type={device.type} "
        f"enabled={'yes' if device.enabled else 'no'}"
    )


def refusal_script(device: Device | None, reason: str) -> str:
    """For a device that cannot boot (unknown, disabled, no vDisk, no boot files): say why on
    its console, then fail the chain, so that pvs.ipxe follows its recovery (the next server,
    then retry or reboot, per [bootstrap] recovery)."""
    head = device_line(device) if device is not None else "echo pvsd device: unknown ${mac}"
    return "\n".join(
        [
            "#!ipxe",
            head,
            f"echo pvsd: cannot boot: {reason}",
            "prompt --timeout 5000 pvsd: press a key to go on now ||",
            "exit 1",
            "",
        ]
    )


def diskless_script(
    device: Device,
    boot: DisklessBoot,
    this: Server,
    servers: Iterable[Server],
    dead_after: float,
    download_timeout_ms: int,
) -> str:
    """A device's next stage: its vDisk version's kernel, the image's initramfs and pvsd's agent
    overlay, from each live server in turn (this one first), then boot.

    The kernel command line carries the MAC, every live login server and the vDisk, which is
    all the agent inside the guest needs (pvsd/target/cmdline.py). On UEFI the kernel's EFI stub
    finds the initramfs files by the names given with `initrd=`; on BIOS iPXE hands them over
    itself, in the order loaded, and the kernel unpacks them one over the other.
    """
    ordered = live_first(this, servers, dead_after)
    guest = GuestSettings(
        mac=device.mac,
        servers=tuple((s.address, s.ports.get("login", 6910)) for s in ordered),
        vdisk=boot.vdisk,
    )
    initrds = ([IMAGE_INITRD_NAME] if boot.has_initrd else []) + [AGENT_OVERLAY_NAME]
    words = [*(f"initrd={name}" for name in initrds), boot.cmdline.strip(), guest_arguments(guest)]
    arguments = " ".join(word for word in words if word)
    timeout = download_timeout_ms
    lines = [
        "#!ipxe",
        f"# pvsd device script for {device.name}: each live server in turn, the one that sent it first",
        device_line(device),
        f"echo pvsd: {boot.vdisk} version {boot.version}, kernel {boot.kernel_version}",
    ]
    for index, server in enumerate(ordered):
        base = f"http://{server.address}:{server.ports.get('api', 54321)}/boot/"
        fail = f"|| goto server{index + 1}"
        lines += [
            f":server{index}",
            f"echo pvsd: loading the kernel from {server.name} at {server.address}",
            "imgfree",
            f"kernel --timeout {timeout} --name {KERNEL_NAME} "
            f"{base}{boot_file_path(boot.vdisk, boot.version, KERNEL_NAME)} {arguments} {fail}",
        ]
        if boot.has_initrd:
            lines.append(
                f"initrd --timeout {timeout} --name {IMAGE_INITRD_NAME} "
                f"{base}{boot_file_path(boot.vdisk, boot.version, 'initrd')} {fail}"
            )
        lines += [
            f"initrd --timeout {timeout} --name {AGENT_OVERLAY_NAME} "
            f"{base}{agent_overlay_path(boot.vdisk, boot.version)} {fail}",
            f"echo pvsd: booting {boot.vdisk} version {boot.version} from {server.name}",
            f"boot {fail}",
        ]
    lines += [
        f":server{len(ordered)}",
        "echo pvsd: no server could give this device its kernel",
        "exit 1",
        "",
    ]
    return "\n".join(lines)
