"""End to end: real firmware (SeaBIOS + iPXE, OVMF + iPXE, OVMF's own PXE) boots from a pvsd farm.

Each test builds a lab of network namespaces (pvsd/lab) in its own folder: a bridge, dnsmasq
as the site DHCP server (addresses only, nothing about PXE), two pvsd servers sharing one
SQLite farm, and a QEMU target on a tap device. pvsd is the only source of boot information,
so reaching `pvsd device:` proves the whole chain: proxy offer, TFTP, pvs.ipxe, the device
script. The lab is always taken down, even when a test fails.

These need root and /dev/net/tun, which skip on a developer's machine (never under CI), and
QEMU, dnsmasq, radvd and the iPXE and OVMF firmware, which `make test` installs: a missing one
fails (support/needs.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import needs
from support.pvsd import wait_for

from pvsd.lab.lab import Lab
from pvsd.lab.qemu import BIOS_ROM, OVMF, UEFI_ROM, BootResult, Firmware

BOOT_TIMEOUT_S = 60.0
SERVERS = 2
# The address block the lab gives its servers: 10.77.0.11, .12, ...
SERVER_ADDRESS = r"10\.77\.0\.1[1-9]"


def _require_lab_parts() -> None:
    needs.lab_host()
    needs.files(
        (str(BIOS_ROM), "ipxe-qemu"),
        (str(UEFI_ROM), "ipxe-qemu"),
        (str(OVMF), "ovmf"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/snponly.efi", "ipxe"),
    )


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    _require_lab_parts()
    # The bootstrap pauses 2.5 s at its start (the shell prompt) so that a test can freeze a
    # server between the bootstrap's download and the device script's, without a race.
    lab = Lab(tmp_path / "lab", say=print, extra_env={"PVSD_BOOTSTRAP__SHELL_PROMPT_MS": "2500"})
    try:
        lab.up(servers=SERVERS)
        yield lab
    finally:
        # Keep the state folder (logs) under tmp_path for a post-mortem; all else goes.
        lab.down(keep_state=True)
        assert not [n for n in _namespaces() if n.startswith(f"{lab.prefix}-")]


def _namespaces() -> list[str]:
    output = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def _events(lab: Lab, mac: str, server: int | None = None) -> list[dict[str, Any]]:
    """Every pvsd log event about this MAC, from all servers (or one), in time order."""
    events = []
    for number in [server] if server is not None else range(1, SERVERS + 1):
        for line in lab.server_log(f"pvs{number}").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("mac") == mac:
                events.append(event)
    return sorted(events, key=lambda e: str(e.get("timestamp")))


def _boot(lab: Lab, firmware: Firmware, mac: str) -> BootResult:
    result = lab.boot(firmware, mac, until=r"pvsd device:", timeout=BOOT_TIMEOUT_S)
    print(f"--- {firmware} console ({result.reason} after {result.seconds:.1f} s) ---")
    print(result.console[-6000:])
    for number in range(1, SERVERS + 1):
        print(f"--- pvs{number} log ---")
        print(lab.server_log(f"pvs{number}")[-4000:])
    assert result.matched, f"no `pvsd device:` line: {result.reason} after {result.seconds:.1f} s"
    return result


def _assert_ipxe_chain(result: BootResult, mac: str) -> None:
    console = result.console
    # The site DHCP server gave the address; a pvsd server gave the boot information.
    assert re.search(r"net0: 10\.77\.0\.1\d\d/255\.255\.255\.0", console), "no address from dnsmasq"
    assert re.search(rf"Next server: {SERVER_ADDRESS}", console), "next server is not a pvsd"
    assert "Filename: pvs.ipxe" in console
    assert re.search(rf"tftp://{SERVER_ADDRESS}/pvs\.ipxe\.\.\. ok", console), "pvs.ipxe not fetched"
    assert re.search(rf"pvsd bootstrap: pvs\d {mac}", console), "the bootstrap script did not run"
    assert re.search(r"pvsd device: .*" + re.escape(mac), console), "the device script did not run"


def test_bios_ipxe_boots_to_the_device_script(lab: Lab) -> None:
    mac = "52:54:00:77:00:01"
    result = _boot(lab, Firmware.BIOS, mac)
    _assert_ipxe_chain(result, mac)
    offers = [e for e in _events(lab, mac) if e["event"] == "proxy offer"]
    # The ROM is iPXE already (user class iPXE), so every server offers it the script at once.
    assert offers and all(e["arch"] == "bios" and e["ipxe"] and e["bootfile"] == "pvs.ipxe" for e in offers)


def test_uefi_ipxe_boots_to_the_device_script(lab: Lab) -> None:
    mac = "52:54:00:77:00:02"
    result = _boot(lab, Firmware.UEFI, mac)
    _assert_ipxe_chain(result, mac)
    offers = [e for e in _events(lab, mac) if e["event"] == "proxy offer"]
    assert offers and all(e["arch"] == "uefi-x64" and e["ipxe"] for e in offers)


def test_ovmf_native_pxe_chains_snponly_then_the_script(lab: Lab) -> None:
    mac = "52:54:00:77:00:03"
    result = _boot(lab, Firmware.UEFI_NATIVE, mac)
    console = result.console
    # OVMF's own PXE client (no iPXE in the ROM) is given snponly.efi by a pvsd server ...
    assert "NBP filename is snponly.efi" in console
    assert re.search(rf"Server IP address is {SERVER_ADDRESS}", console)
    # ... which runs iPXE, which asks again as iPXE and gets the script: the loop is broken.
    assert console.index("NBP filename is snponly.efi") < console.index("iPXE initialising devices")
    _assert_ipxe_chain(result, mac)
    offers = [e for e in _events(lab, mac) if e["event"] == "proxy offer"]
    firmware_offers = [e for e in offers if not e["ipxe"]]
    ipxe_offers = [e for e in offers if e["ipxe"]]
    assert firmware_offers and all(e["bootfile"] == "snponly.efi" for e in firmware_offers)
    assert ipxe_offers and all(e["bootfile"] == "pvs.ipxe" for e in ipxe_offers)
    assert offers.index(firmware_offers[-1]) < offers.index(ipxe_offers[0])
    transfers = [
        e
        for number in range(1, SERVERS + 1)
        for e in map(_json_or_none, lab.server_log(f"pvs{number}").splitlines())
        if e is not None and e.get("event") == "TFTP transfer complete" and e.get("file") == "snponly.efi"
    ]
    assert transfers, "no complete TFTP transfer of snponly.efi"


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def test_killing_the_server_that_answered_leaves_the_next_boot_to_the_other(lab: Lab) -> None:
    mac = "52:54:00:77:00:04"
    first = _boot(lab, Firmware.BIOS, mac)
    _assert_ipxe_chain(first, mac)
    answered = re.search(rf"pvsd bootstrap: (pvs\d) {mac}", first.console)
    assert answered is not None
    dead = answered.group(1)
    other = "pvs2" if dead == "pvs1" else "pvs1"
    lab.kill(dead)  # SIGKILL: no chance to leave the farm, so it is still listed as alive for a while
    assert lab.status()["processes"][dead]["running"] is False
    again = _boot(lab, Firmware.BIOS, mac)
    _assert_ipxe_chain(again, mac)
    assert f"pvsd bootstrap: {other} {mac}" in again.console
    assert f"pvsd bootstrap: {dead}" not in again.console


def test_a_registered_device_gets_its_own_script(lab: Lab) -> None:
    mac = "52:54:00:77:00:05"
    env = {"PVSD_FARM__DATABASE": lab.database}
    added = subprocess.run(
        [sys.executable, "-m", "pvsd", "device", "add", mac, "--name", "lab-vm5"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert added.returncode == 0, added.stderr
    # the servers read the farm's devices every heartbeat (1 s in the lab)
    wait_for(
        lambda: all(
            any(e.get("event") == "device script published" for e in _events(lab, mac, server))
            for server in range(1, SERVERS + 1)
        ),
        timeout=30,
    )
    result = _boot(lab, Firmware.BIOS, mac)
    assert f"pvsd device: lab-vm5 {mac} vdisk=- type=production enabled=yes" in result.console


def test_a_stale_server_in_the_bootstrap_is_skipped_in_seconds(lab: Lab) -> None:
    """The server that sent pvs.ipxe freezes before the device script: it is still listed
    (alive for the farm until dead_after), so iPXE tries it, times out after 3 s, goes on."""
    mac = "52:54:00:77:00:06"
    outcome: dict[str, BootResult] = {}
    booting = threading.Thread(target=lambda: outcome.update(result=_boot(lab, Firmware.BIOS, mac)))
    booting.start()
    frozen: int | None = None
    try:

        def bootstrap_sent() -> str | None:
            # TFTP knows peers, not MACs; this lab boots one target, so any pvs.ipxe is ours.
            for event in _all_events(lab):
                if event.get("event") == "TFTP transfer complete" and event.get("file") == "pvs.ipxe":
                    return str(event["server"])
            return None

        wait_for(lambda: bootstrap_sent() is not None, timeout=60, interval=0.05)
        stale = bootstrap_sent()
        assert stale is not None
        frozen = int((lab.state / "pids" / f"{stale}.pid").read_text().split()[0])
        os.kill(frozen, signal.SIGSTOP)
        booting.join(BOOT_TIMEOUT_S + 30)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        booting.join(BOOT_TIMEOUT_S + 30)
    result = outcome["result"]
    other = "pvs2" if stale == "pvs1" else "pvs1"
    console = result.console
    assert f"pvsd bootstrap: {stale} {mac}" in console
    assert console.index(f"pvsd: asking {stale}") < console.index(f"pvsd: asking {other}")
    assert re.search(rf"pvsd device: unknown {mac}", console)
    device_fetches = [e for e in _all_events(lab) if str(e.get("file", "")).startswith("pvsd/device/")]
    assert device_fetches and {e["server"] for e in device_fetches} == {other}


def _all_events(lab: Lab) -> list[dict[str, Any]]:
    return [
        event
        for number in range(1, SERVERS + 1)
        for event in map(_json_or_none, lab.server_log(f"pvs{number}").splitlines())
        if event is not None
    ]


def test_ovmf_http_boot_loads_ipxe_efi_over_http_then_the_script(lab: Lab) -> None:
    mac = "52:54:00:77:00:04"
    result = _boot(lab, Firmware.UEFI_HTTP, mac)
    console = result.console
    assert re.search(rf"http://{SERVER_ADDRESS}:54321/boot/ipxe\.efi", console), "no HTTP boot URL"
    _assert_ipxe_chain(result, mac)
    offers = [e for e in _events(lab, mac) if e["event"] == "proxy offer"]
    http_offers = [e for e in offers if e["bootfile"].startswith("http://")]
    assert http_offers and all(e["bootfile"].endswith(":54321/boot/ipxe.efi") for e in http_offers)
    served = [
        e
        for number in range(1, SERVERS + 1)
        for e in map(_json_or_none, lab.server_log(f"pvs{number}").splitlines())
        if e is not None and e.get("event") == "boot file served" and e.get("name") == "ipxe.efi"
    ]
    assert served and served[-1]["bytes"] == Path("/usr/lib/ipxe/ipxe.efi").stat().st_size
