"""End to end: a machine boots the media ISO (SeaBIOS + ISOLINUX + Debian's ipxe.lkrn) on a
network with no PXE: dnsmasq gives addresses only, and nothing answers proxy DHCP or TFTP.
The first server on the media is dead (nothing at its address), the second answers HTTP, so
reaching its device script proves the address step, the embedded server list and the failover.

Needs root and /dev/net/tun (skips on a developer's machine, never under CI); QEMU, dnsmasq,
xorriso and ISOLINUX are installed by `make test`, and a missing one fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.media_lab import MediaLab, host, http_stand_in

from pvsd.boot.media_iso import HYBRID_MBR, MEDIA_PARTS
from pvsd.farm.store import open_store

BOOT_TIMEOUT_S = 60.0
API_PORT = 54321
MAC = "52:54:00:4d:ed:1a"
MARKER = "pvsd-media-e2e: device script reached"
DEAD, LIVE = 1, 2


def _pvsd(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess: in this process, its logging setup would outlive the
    test's captured stderr and break every later test that logs."""
    return subprocess.run([sys.executable, "-m", "pvsd", *argv], timeout=120, capture_output=True, text=True)


@pytest.fixture
def media_lab(tmp_path: Path) -> Iterator[MediaLab]:
    needs.root("network namespaces and tap devices")
    if not Path("/dev/net/tun").exists():
        needs.unavailable("needs /dev/net/tun")
    needs.tools(("qemu-system-x86_64", "qemu-system-x86"), ("ip", "iproute2"), ("dnsmasq", "dnsmasq-base"))
    needs.tools(("xorriso", "xorriso"), ("ss", "iproute2"))
    needs.files(*((str(part.source), part.package) for part in (*MEDIA_PARTS, HYBRID_MBR)))
    lab = MediaLab(tmp_path / "lab")
    try:
        lab.up()
        script = f"#!ipxe\necho {MARKER} for ${{mac}} from ${{ip}}\nexit\n"
        lab.add_server(LIVE, API_PORT, {MAC: script}, http_stand_in)
        yield lab
    finally:
        print(lab.logs())
        lab.down()


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A farm where both servers are live by their heartbeats; only pvs2 has a process."""
    url = f"sqlite:///{tmp_path}/farm.db"
    monkeypatch.setenv("PVSD_FARM__DATABASE", url)
    monkeypatch.setenv("PVSD_SERVER__NAME", f"pvs{DEAD}")
    monkeypatch.delenv("PVSD_CONFIG", raising=False)
    assert _pvsd("farm", "init", "--name", "media").returncode == 0
    store = open_store(url, "test")
    for number in (DEAD, LIVE):
        store.register_server(f"pvs{number}", host(10 + number), {"api": API_PORT}, 1.0, "i", 3600.0)
    store.close()
    monkeypatch.setenv("PVSD_FARM__DEAD_AFTER", "3600")
    return url


def _boot(lab: MediaLab, iso: Path) -> str:
    argv = ["-nographic", "-accel", "tcg", "-m", "256", "-no-reboot", "-cdrom", str(iso), "-boot", "d"]
    # An empty romfile keeps the NIC's PXE ROM out: the media's own iPXE drives the NIC.
    argv += ["-device", f"e1000,netdev=n0,mac={MAC},romfile="]
    result = lab.boot(argv, re.escape(MARKER), BOOT_TIMEOUT_S)
    print(f"--- console ({result.reason} after {result.seconds:.1f} s) ---\n{result.console[-5000:]}")
    assert result.matched, f"no device script: {result.reason} after {result.seconds:.1f} s"
    return result.console


def test_bios_media_takes_dhcp_skips_the_dead_server_and_chains_the_live_ones_script(
    media_lab: MediaLab, farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    iso = tmp_path / "pvsd.iso"
    built = _pvsd("media", "build", "--out", str(iso))
    assert built.returncode == 0, built.stderr
    out = built.stdout
    assert out.index("pvs1") < out.index("pvs2"), out
    console = _boot(media_lab, iso)
    assert "asking DHCP" in console
    assert f"asking pvs1 at {host(10 + DEAD)}:{API_PORT}" in console
    assert f"asking pvs2 at {host(10 + LIVE)}:{API_PORT}" in console
    assert re.search(rf"{re.escape(MARKER)} for {MAC} from 10\.78\.0\.1\d\d", console), "no DHCP address"


def test_bios_media_with_a_static_address_needs_no_dhcp(
    media_lab: MediaLab, farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    iso = tmp_path / "pvsd-static.iso"
    address = host(77)
    assert (
        _pvsd("media", "build", "--out", str(iso), "--ip", f"{address}/24", "--gateway", host(1)).returncode
        == 0
    )
    capsys.readouterr()
    console = _boot(media_lab, iso)
    assert "asking DHCP" not in console
    assert f"{MARKER} for {MAC} from {address}" in console
