"""End to end: a machine with no disk boots the media ISO of `pvsd media build` on a network
with no PXE: the lab's pvsd servers run with proxy DHCP and TFTP off, and dnsmasq gives
addresses only. The first server on the media is dead (SIGKILLed after the build: its address
answers with a reset), the second serves everything over HTTP, so the OS running to its last
line proves the address step, the embedded server list, the failover, and the whole diskless
boot behind it.

- BIOS: SeaBIOS -> ISOLINUX -> Debian's ipxe.lkrn with the media's iPXE script -> the device's
  iPXE script -> kernel, agent overlay -> login, stream, switch_root;
- UEFI: OVMF -> the El Torito EFI image -> GRUB with the media's grub.cfg -> the device's GRUB
  script -> the same kernel, overlay and agent.

Needs root and /dev/net/tun (skips on a developer's machine, never under CI); QEMU, dnsmasq,
xorriso, ISOLINUX, GRUB EFI, dosfstools and mtools are installed by `make test`, and a missing
one fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import guest, needs
from support.diskless import DisklessFarm, boot_chain, lab_farm

from pvsd.boot.media_efi import missing_efi_parts
from pvsd.boot.media_iso import HYBRID_MBR, MEDIA_PARTS
from pvsd.lab.qemu import Firmware

pytestmark = pytest.mark.timeout(420)

MAC = "52:54:00:4d:ed:1a"
BOOT_TIMEOUT_S = 240.0
STATIC = "10.77.0.77"  # outside the site DHCP's pool (.100-.199)
# No proxy DHCP and no TFTP: whatever the machine gets, it gets from the media and over HTTP.
NO_PXE = {"PVSD_DHCP__ENABLED": "false", "PVSD_TFTP__ENABLED": "false"}


def _require() -> None:
    needs.lab_host()
    needs.tools(("depmod", "kmod"), ("xorriso", "xorriso"))
    needs.files(*((str(part.source), part.package) for part in (*MEDIA_PARTS, HYBRID_MBR)))
    missing = missing_efi_parts()
    if missing:
        needs.unavailable("cannot build the EFI boot image: " + ", ".join(missing))
    guest.require_guest_tools()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> guest.RootImage:
    _require()
    return guest.build_rootfs(tmp_path_factory.mktemp("image") / "linux.img", linux=True)


@pytest.fixture
def farm(tmp_path: Path, image: guest.RootImage) -> Iterator[DisklessFarm]:
    _require()
    with lab_farm(tmp_path / "lab", image, MAC, "standard", NO_PXE) as farm:
        yield farm


def _media(farm: DisklessFarm, out: Path, *options: str) -> str:
    """`pvsd media build` as pvs1 (so pvs1 is first on the media), then pvs1 is killed."""
    built = farm.pvsd("media", "build", "--out", str(out), *options, env={"PVSD_SERVER__NAME": "pvs1"})
    assert out.stat().st_size > 0
    assert built.stdout.index("pvs1") < built.stdout.index("pvs2"), built.stdout
    farm.lab.kill("pvs1")
    return built.stdout


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.UEFI])
def test_the_media_boot_the_os_with_no_proxy_dhcp_no_tftp_and_the_first_server_dead(
    farm: DisklessFarm, image: guest.RootImage, tmp_path: Path, firmware: Firmware
) -> None:
    out = _media(farm, tmp_path / "pvsd.iso")
    assert "BIOS and UEFI" in out, out
    run = boot_chain(farm.lab, MAC, firmware, BOOT_TIMEOUT_S, media=tmp_path / "pvsd.iso")
    print(f"media {firmware}: done after {run.seconds:.1f} s")
    console = run.console
    assert run.problems(image) == [], console[-4000:]
    assert "pvsd media: asking DHCP" in console
    assert re.search(r"pvsd media: \S+ is 10\.77\.0\.1\d\d", console), "no address from the site DHCP"
    assert console.index("asking pvs1 at 10.77.0.11:54321") < console.index("asking pvs2 at 10.77.0.12:54321")
    assert "pvsd: booting linux version 1 from pvs2" in console


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.UEFI])
def test_media_with_a_static_address_need_no_dhcp(
    farm: DisklessFarm, tmp_path: Path, firmware: Firmware
) -> None:
    iso = tmp_path / "pvsd-static.iso"
    _media(farm, iso, "--ip", f"{STATIC}/24", "--gateway", "10.77.0.1")
    until = r"pvsd: loading the kernel from pvs2"
    result = farm.lab.boot(firmware, MAC, until=until, timeout=BOOT_TIMEOUT_S, memory_mb=768, media=iso)
    print(f"--- console ({result.reason} after {result.seconds:.1f} s) ---\n{result.console[-4000:]}")
    assert result.matched, f"no device script: {result.reason} after {result.seconds:.1f} s"
    assert "asking DHCP" not in result.console
    assert f"is {STATIC}" in result.console
    assert f"pvsd device: diskless-{MAC[-2:]} {MAC}" in result.console
