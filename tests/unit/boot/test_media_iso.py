"""build_media, the glue the daemon calls too: a missing part names its Debian package, and a
failed build leaves the previous ISO as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import needs

from pvsd.boot import media_iso
from pvsd.boot.media import MediaNetwork
from pvsd.boot.media_iso import HYBRID_MBR, MEDIA_PARTS, MediaPart, build_media
from pvsd.config import BootstrapConfig
from pvsd.errors import BadInput, Failure
from pvsd.farm.records import Server, ServerState

LIVE = [Server("pvs1", "10.0.0.11", {"api": 54321}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, 1.0)]
DEAD = [Server("pvs1", "10.0.0.11", {"api": 54321}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, 99.0)]


def build(out: Path, servers: list[Server]) -> list[Server]:
    return build_media(out, servers, "pvs1", MediaNetwork(), BootstrapConfig(), 54321, 8.0, "lab")


def test_a_missing_part_names_its_debian_package_and_the_old_iso_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "pvsd.iso"
    out.write_bytes(b"the previous media")
    gone = MediaPart(tmp_path / "nothing" / "ipxe.lkrn", "ipxe.lkrn", "ipxe")
    monkeypatch.setattr(media_iso, "MEDIA_PARTS", (*MEDIA_PARTS[:2], gone))
    with pytest.raises(Failure, match=r"ipxe\.lkrn \(Debian package ipxe\)"):
        build(out, LIVE)
    assert out.read_bytes() == b"the previous media"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pvsd.iso"]


def test_dead_servers_only_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no live server"):
        build(tmp_path / "pvsd.iso", DEAD)


def test_a_build_replaces_the_iso_whole_and_returns_what_it_embedded(tmp_path: Path) -> None:
    needs.tools(("xorriso", "xorriso"))
    needs.files(*((str(part.source), part.package) for part in (*MEDIA_PARTS, HYBRID_MBR)))
    out = tmp_path / "pvsd.iso"
    out.write_bytes(b"the previous media")
    assert [s.name for s in build(out, LIVE)] == ["pvs1"]
    data = out.read_bytes()
    assert data[0x8001:0x8006] == b"CD001"  # the ISO 9660 volume descriptor
    assert data[510:512] == b"\x55\xaa"  # the isohybrid MBR: bootable from a USB stick too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pvsd.iso"]
