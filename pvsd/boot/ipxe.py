"""iPXE scripts: `pvs.ipxe`, the bootstrap that lists the farm's live servers, and the per-device stage.

Pure: the caller passes the servers and devices it knows. The bootstrap embeds every live
server's address (this one first) instead of relying on `${proxydhcp/...}` or
`${pxebs/...}`, which depend on how the client reached us (DESIGN.md section 5). It tries
each server with `chain --timeout`, so a dead server costs seconds, not iPXE's 16 s.
"""

from __future__ import annotations

from collections.abc import Iterable

from pvsd.config import BootstrapConfig
from pvsd.farm.records import Device, Server, ServerHealth

__all__ = [
    "DEVICE_SCRIPT_PREFIX",
    "IPXE_BOOTSTRAP_NAME",
    "device_script",
    "device_script_name",
    "ipxe_bootstrap",
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
    others = sorted(
        (s for s in servers if s.name != this.name and s.health(dead_after) is ServerHealth.ALIVE),
        key=lambda s: s.name,
    )
    ordered = [this, *others]
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
    """What a MAC the farm does not know gets: a clear line on its console, then exit."""
    return (
        "#!ipxe\n"
        "echo pvsd device: unknown ${mac}; register it with: pvsd device add ${mac} --name NAME\n"
        "exit\n"
    )
