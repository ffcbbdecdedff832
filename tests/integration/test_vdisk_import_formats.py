"""`pvsd vdisk import` of the images users bring from hypervisors: qcow2, VHD (dynamic and fixed),
VHDX and VMDK files made by qemu-img import to the same bytes as the raw image they came from;
a truncated qcow2 or VMDK, an image on a backing file and a format pvsd does not take are
refused with a clear message and leave nothing behind. The real command, in a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import needs
from tests.support.pvsd import pvsd, pvsd_env

SIZE = 16 << 20


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    needs.tools(("qemu-img", "qemu-utils"))
    env = pvsd_env(f"sqlite:///{tmp_path}/farm.db", server__store=str(tmp_path / "store"))
    result = pvsd(env, "farm", "init", "--name", "lab")
    assert result.returncode == 0, result.stderr
    return env


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A sparse 16 MiB disk with data at its start, in its middle and in its last sector."""
    image = tmp_path / "disk.raw"
    with image.open("wb") as stream:
        stream.write(os.urandom(1 << 20))
        stream.seek(SIZE // 2)
        stream.write(os.urandom(300 << 10))
        stream.seek(SIZE - 512)
        stream.write(os.urandom(512))
    return image


def _qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True, timeout=60)


def _store_files(tmp_path: Path) -> list[str]:
    store = tmp_path / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("qcow2", ["-O", "qcow2"]),
        ("vhd", ["-O", "vpc", "-o", "force_size=on"]),
        ("vhd-fixed", ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]),
        ("vhdx", ["-O", "vhdx"]),
        ("vmdk", ["-O", "vmdk"]),
    ],
)
def test_a_hypervisor_image_imports_to_the_bytes_of_its_raw_disk(
    env: dict[str, str], tmp_path: Path, raw: Path, name: str, options: list[str]
) -> None:
    image = tmp_path / f"disk.{name}"
    _qemu_img("convert", "-f", "raw", *options, str(raw), str(image))
    result = pvsd(env, "vdisk", "import", "lab", str(image), "--no-boot")
    assert result.returncode == 0, result.stderr
    assert "to a raw image" in result.stderr
    expected = hashlib.sha256(raw.read_bytes()).hexdigest()
    assert f"sha256 {expected}" in result.stdout
    (vdisk,) = json.loads(pvsd(env, "vdisk", "list", "--json").stdout)
    assert vdisk["size"] == SIZE
    assert (tmp_path / "store/lab/v1.img").read_bytes() == raw.read_bytes()
    assert _store_files(tmp_path) == [
        "lab",
        "lab/v1.img",
        "lab/v1.img.chunks",
        "lab/v1.img.sha256",
    ]  # no converted copy left


@pytest.mark.parametrize("name", ["qcow2", "vmdk"])
def test_a_truncated_image_is_refused_and_changes_nothing(
    env: dict[str, str], tmp_path: Path, raw: Path, name: str
) -> None:
    """qemu-img itself would convert these, reading what is missing as zeros."""
    whole = tmp_path / f"whole.{name}"
    _qemu_img("convert", "-f", "raw", "-O", name, str(raw), str(whole))
    cut = tmp_path / f"cut.{name}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    result = pvsd(env, "vdisk", "import", "lab", str(cut), "--no-boot")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "damaged or truncated" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(pvsd(env, "vdisk", "list", "--json").stdout) == []
    assert _store_files(tmp_path) == []


def test_an_image_on_a_backing_file_is_refused(env: dict[str, str], tmp_path: Path, raw: Path) -> None:
    """Following it would read another file of this host."""
    overlay = tmp_path / "overlay.qcow2"
    _qemu_img("create", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(overlay))
    result = pvsd(env, "vdisk", "import", "lab", str(overlay), "--no-boot")
    assert result.returncode == 2
    assert "backing file" in result.stderr and "flatten it first" in result.stderr
    assert _store_files(tmp_path) == []


def test_a_format_pvsd_does_not_take_is_named(env: dict[str, str], tmp_path: Path, raw: Path) -> None:
    qed = tmp_path / "disk.qed"
    _qemu_img("convert", "-f", "raw", "-O", "qed", str(raw), str(qed))
    result = pvsd(env, "vdisk", "import", "lab", str(qed), "--no-boot")
    assert result.returncode == 2
    assert "qed images are not supported" in result.stderr
    assert _store_files(tmp_path) == []


def test_a_text_file_is_no_image(env: dict[str, str], tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    result = pvsd(env, "vdisk", "import", "lab", str(text), "--no-boot")
    assert result.returncode == 2
    assert "is not a multiple of the 512-byte sector size" in result.stderr
    assert _store_files(tmp_path) == []
