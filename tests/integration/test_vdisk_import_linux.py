"""`pvsd vdisk import` of Linux images, run as an operator runs it (the real command in a
subprocess): the boot files found, extracted beside the version's image and shown by
`vdisk list --json`; --kernel/--initrd/--cmdline; each bad image refused with a clear message
and nothing left behind (no farm record, no file in the store)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support import guest
from tests.support.linux_disk import fake_kernel, linux_disk, root_tree
from tests.support.pvsd import pvsd, pvsd_env

VERSION = "6.1.0-57-amd64"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    env = pvsd_env(f"sqlite:///{tmp_path}/farm.db", server__store=str(tmp_path / "store"))
    result = pvsd(env, "farm", "init", "--name", "lab")
    assert result.returncode == 0, result.stderr
    return env


def _vdisks(env: dict[str, str]) -> list[dict[str, object]]:
    result = pvsd(env, "vdisk", "list", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_files(tmp_path: Path) -> list[str]:
    store = tmp_path / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")) if store.exists() else []


def test_a_gpt_linux_image_imports_with_its_boot_files(env: dict[str, str], tmp_path: Path) -> None:
    root = root_tree(tmp_path / "root", ("6.1.0-9-amd64", VERSION))
    image = tmp_path / "deb.img"
    linux_disk(image, root, "gpt")
    result = pvsd(env, "vdisk", "import", "deb", str(image), "--cmdline", "quiet loglevel=3")
    assert result.returncode == 0, result.stderr
    assert (
        f"kernel /boot/vmlinuz-{VERSION} ({VERSION}), initrd /boot/initrd.img-{VERSION}, modules ok, "
        "root on partition 1, other kernels: 6.1.0-9-amd64, cmdline 'quiet loglevel=3'"
    ) in result.stdout
    boot_dir = tmp_path / "store/deb/v1.boot"
    assert (boot_dir / "vmlinuz").read_bytes() == (root / f"boot/vmlinuz-{VERSION}").read_bytes()
    assert (boot_dir / "initrd.img").read_bytes() == (root / f"boot/initrd.img-{VERSION}").read_bytes()
    (vdisk,) = _vdisks(env)
    boot = vdisk["versions"][-1]["boot"]  # type: ignore[index]
    assert boot == {
        "kernel": f"/boot/vmlinuz-{VERSION}",
        "kernel_version": VERSION,
        "kernel_sha256": _sha(boot_dir / "vmlinuz"),
        "initrd": f"/boot/initrd.img-{VERSION}",
        "initrd_sha256": _sha(boot_dir / "initrd.img"),
        "cmdline": "quiet loglevel=3",
        "root_offset": 1 << 20,
        "kernel_size": (boot_dir / "vmlinuz").stat().st_size,
        "initrd_size": (boot_dir / "initrd.img").stat().st_size,
    }
    assert _store_files(tmp_path) == [
        "deb",
        "deb/v1.boot",
        "deb/v1.boot/initrd.img",
        "deb/v1.boot/vmlinuz",
        "deb/v1.img",
        "deb/v1.img.chunks",
        "deb/v1.img.sha256",
    ]


def test_missing_modules_are_a_warning(env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "deb.img"
    linux_disk(image, root_tree(tmp_path / "root", drop=("kernel/drivers/block/nbd.ko",)), "dos")
    result = pvsd(env, "vdisk", "import", "deb", str(image))
    assert result.returncode == 0, result.stderr
    assert "WARNING: its /lib/modules lacks nbd" in result.stdout


def test_a_plain_disk_imports_as_before(env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(2 << 20))
    result = pvsd(env, "vdisk", "import", "plain", str(image))
    assert result.returncode == 0, result.stderr
    assert "holds no Linux root file system: it boots through the host agent, not diskless" in result.stdout
    (vdisk,) = _vdisks(env)
    assert vdisk["versions"][-1]["boot"] is None  # type: ignore[index]
    assert _store_files(tmp_path) == ["plain", "plain/v1.img", "plain/v1.img.chunks", "plain/v1.img.sha256"]


def _no_kernel(tmp_path: Path, image: Path) -> None:
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    linux_disk(image, root, "dos")


def _corrupt(tmp_path: Path, image: Path) -> None:
    linux_disk(image, root_tree(tmp_path / "root"))
    with image.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 8192)


def _past_the_end(tmp_path: Path, image: Path) -> None:
    linux_disk(image, None, "gpt")
    with image.open("r+b") as f:
        f.truncate(4 << 20)


def _zeros(tmp_path: Path, image: Path) -> None:
    linux_disk(image, None, "dos")


def _vfat(tmp_path: Path, image: Path) -> None:
    offset = linux_disk(image, None, "dos")
    part = tmp_path / "part.img"
    subprocess.run(["mkfs.vfat", "-C", str(part), "8192"], check=True, capture_output=True, timeout=30)
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(part.read_bytes())


BAD = {
    "no kernel": (_no_kernel, "has no /boot/vmlinuz-VERSION or /vmlinuz"),
    "corrupt ext4": (_corrupt, "the ext4 file system on the whole disk is damaged"),
    "past the end": (
        _past_the_end,
        "GPT partition 1 ends at byte 17825792, past the end of the 4194304-byte disk",
    ),
    "zeros on 0x83": (_zeros, "partition 1 is a Linux partition but holds no ext4 file system"),
    "vfat on 0x83": (_vfat, "partition 1 is a Linux partition but holds no ext4 file system"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_linux_image_changes_nothing(env: dict[str, str], tmp_path: Path, case: str) -> None:
    make, message = BAD[case]
    image = tmp_path / "bad.img"
    make(tmp_path, image)
    result = pvsd(env, "vdisk", "import", "bad", str(image))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert _vdisks(env) == []
    assert _store_files(tmp_path) == []
    audit = pvsd(env, "farm", "audit", "--json")
    assert '"bad' not in audit.stdout
    # given a kernel, the same image imports as a bootable version (with the image's modules if any)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(fake_kernel("6.1.0-99-amd64"))
    result = pvsd(env, "vdisk", "import", "bad", str(image), "--kernel", str(kernel))
    assert result.returncode == 0, result.stderr
    assert "kernel vmlinuz (6.1.0-99-amd64), no initrd of its own" in result.stdout
    assert (tmp_path / "store/bad/v1.boot/vmlinuz").read_bytes() == kernel.read_bytes()


def test_overrides_replace_what_is_found(env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "deb.img"
    linux_disk(image, root_tree(tmp_path / "root"), "gpt4k", disk_size=64 << 20)
    initrd = tmp_path / "mine.cpio"
    initrd.write_bytes(b"070701" + bytes(200))
    result = pvsd(env, "vdisk", "import", "deb", str(image), "--sector-size", "4096", "--initrd", str(initrd))
    assert result.returncode == 0, result.stderr
    assert f"kernel /boot/vmlinuz-{VERSION} ({VERSION}), initrd mine.cpio, modules ok" in result.stdout
    assert (tmp_path / "store/deb/v1.boot/initrd.img").read_bytes() == initrd.read_bytes()


def test_the_guest_image_of_the_e2e_tests(env: dict[str, str], tmp_path: Path) -> None:
    """build_rootfs(linux=True): Debian's real kernel and a depmod-indexed module subset."""
    rootfs = guest.build_rootfs(tmp_path / "guest.img", size=192 << 20, payload_size=24 << 20, linux=True)
    version = guest.kernel().name.removeprefix("vmlinuz-")
    result = pvsd(env, "vdisk", "import", "guest", str(rootfs.path), timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"kernel /boot/vmlinuz-{version} ({version}), no initrd of its own, modules ok" in result.stdout
    assert (tmp_path / "store/guest/v1.boot/vmlinuz").read_bytes() == guest.kernel().read_bytes()
