"""`pvsd media build`: what it embeds, what it refuses, and that the ISO it writes is real
(read back with xorriso) and the same bytes for the same farm."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import needs

from pvsd.boot.media_efi import missing_efi_parts
from pvsd.boot.media_iso import HYBRID_MBR, MEDIA_PARTS
from pvsd.cli import main
from pvsd.farm.store import open_store


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/farm.db"
    monkeypatch.setenv("PVSD_FARM__DATABASE", url)
    monkeypatch.setenv("PVSD_SERVER__NAME", "pvs2")
    monkeypatch.delenv("PVSD_CONFIG", raising=False)
    assert main(["farm", "init", "--name", "lab"]) == 0
    return url


def add_servers(url: str, *named: tuple[str, str]) -> None:
    store = open_store(url, "test")
    for name, address in named:
        store.register_server(name, address, {"api": 54321}, 1.0, "i", 8.0)
    store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def require_iso_tools() -> None:
    needs.tools(("xorriso", "xorriso"))
    needs.files(*((str(part.source), part.package) for part in (*MEDIA_PARTS, HYBRID_MBR)))
    missing = missing_efi_parts()
    if missing:
        needs.unavailable("cannot build the EFI boot image: " + ", ".join(missing))


def iso_path(iso: Path, name: str) -> Path:
    copy = iso.with_name(f"{iso.name}-{Path(name).name}")
    subprocess.run(
        ["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", name, str(copy)],
        capture_output=True,
        timeout=30,
        check=True,
    )
    return copy


def iso_file(iso: Path, name: str) -> str:
    return iso_path(iso, name).read_text()


def test_no_live_server_is_refused_and_nothing_is_written(
    farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pvsd.iso"
    code, _, err = run(capsys, "media", "build", "--out", str(out))
    assert code == 2 and "no live server" in err and "pvsd serve" in err
    assert not out.exists() and not list(tmp_path.glob(".pvsd.iso*"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gateway", "10.0.0.1"], "needs a static address"),
        (["--ip", "10.0.0.5"], "needs a prefix length"),
        (["--ip", "10.0.0.300/24"], "is not ADDR/PREFIX"),
        (["--ip", "10.0.0.0/24"], "network or broadcast"),
        (["--ip", "10.0.0.5/24", "--gateway", "10.9.0.1"], "outside 10.0.0.0/24"),
        (["--ip", "10.0.0.5/24", "--dns", "nameserver"], "not an IPv4 address"),
        (["--server", "pvs9"], "no server named pvs9"),
        (["--server", "pvs3"], "pvs3 is not live"),
    ],
)
def test_bad_flags_are_refused_by_name(
    farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    add_servers(farm, ("pvs1", "10.0.0.11"), ("pvs3", "10.0.0.13"))
    store = open_store(farm, "test")
    store.stop_server("pvs3", "i")
    store.close()
    out = tmp_path / "pvsd.iso"
    code, _, err = run(capsys, "media", "build", "--out", str(out), *flags)
    assert code == 2 and message in err, err
    assert not out.exists()


def test_the_out_path_must_be_a_file_in_an_existing_folder(
    farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_servers(farm, ("pvs1", "10.0.0.11"))
    code, _, err = run(capsys, "media", "build", "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    code, _, err = run(capsys, "media", "build", "--out", str(tmp_path / "none" / "pvsd.iso"))
    assert code == 2 and "does not exist" in err


def test_the_iso_embeds_the_live_servers_this_one_first_and_is_reproducible(
    farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_iso_tools()
    add_servers(farm, ("pvs1", "10.0.0.11"), ("pvs2", "10.0.0.12"), ("pvs3", "10.0.0.13"))
    store = open_store(farm, "test")
    store.stop_server("pvs3", "i")
    store.close()
    first, second = tmp_path / "a.iso", tmp_path / "b.iso"
    code, out, _ = run(capsys, "media", "build", "--out", str(first))
    assert code == 0
    assert out.splitlines()[1:] == [
        "  1. pvs2  http://10.0.0.12:54321/boot/",
        "  2. pvs1  http://10.0.0.11:54321/boot/",
    ]
    script = iso_file(first, "/isolinux/servers.ipxe")
    assert script.index("http://10.0.0.12:54321/") < script.index("http://10.0.0.11:54321/")
    assert "10.0.0.13" not in script
    assert "INITRD servers.ipxe" in iso_file(first, "/isolinux/isolinux.cfg")
    grub = iso_file(first, "/boot/grub.cfg")
    assert grub.index("(http,10.0.0.12:54321)/boot/pvsd/grub/") < grub.index("(http,10.0.0.11:54321)/")
    efi = iso_path(first, "/boot/efiboot.img")
    listing = subprocess.run(
        ["mdir", "-i", str(efi), "::/EFI/BOOT"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "BOOTX64  EFI" in listing.stdout
    # The grub.cfg that GRUB runs is the one inside its EFI image (its memdisk).
    assert grub.encode() in efi.read_bytes()
    assert run(capsys, "media", "build", "--out", str(second))[0] == 0
    assert first.read_bytes() == second.read_bytes()


def test_server_flags_choose_which_servers_go_on_the_media(
    farm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_iso_tools()
    add_servers(farm, ("pvs1", "10.0.0.11"), ("pvs2", "10.0.0.12"), ("pvs3", "10.0.0.13"))
    iso = tmp_path / "pvsd.iso"
    code, out, _ = run(capsys, "media", "build", "--out", str(iso), "--server", "pvs3", "--server", "pvs1")
    assert code == 0 and "pvs2" not in out.split("\n", 1)[1]
    script = iso_file(iso, "/isolinux/servers.ipxe")
    assert "10.0.0.12" not in script
    assert script.index("10.0.0.11") < script.index("10.0.0.13")
