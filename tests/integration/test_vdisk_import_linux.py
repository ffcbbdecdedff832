"""`pvsd vdisk import` of Linux images: the kernel, initramfs and modules found inside them without
mounting (whole disk, MBR, GPT, /vmlinuz symlink, several kernels), the overrides, and each bad
image refused with its reason and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import needs
from support.disk_images import MIB, ext4, gpt, linux_tree, mbr, partitioned

VERSION = "6.1.0-57-amd64"
KERNEL = (
    b"\0" * 0x202 + b"HdrS" + b"\0" * 8 + (0x110).to_bytes(2, "little") + b"\0" * 0x100 + b"6.9.9-test (x)\0"
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    needs.tools(("debugfs", "e2fsprogs"), ("mke2fs", "e2fsprogs"))
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PVSD_")},
        "PVSD_FARM__DATABASE": f"sqlite:///{tmp_path}/farm.db",
        "PVSD_SERVER__STORE": str(tmp_path / "store"),
    }
    assert _pvsd(environment, "farm", "init").returncode == 0
    return environment


def _pvsd(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pvsd", *argv], env=env, capture_output=True, text=True, timeout=120
    )


def _versions(env: dict[str, str], name: str) -> list[dict[str, object]]:
    listed = json.loads(_pvsd(env, "vdisk", "list", "--json").stdout)
    return next((v["versions"] for v in listed if v["name"] == name), [])


def _tree(tmp_path: Path) -> Path:
    return linux_tree(tmp_path / "tree", VERSION, kernel=KERNEL)


def test_a_whole_disk_ext4_gives_its_kernel_initrd_and_modules(env: dict[str, str], tmp_path: Path) -> None:
    image = ext4(_tree(tmp_path), tmp_path / "linux.img", 32 * MIB)
    done = _pvsd(env, "vdisk", "import", "linux", str(image), "--quiet", "--cmdline", "quiet")
    assert done.returncode == 0, done.stderr
    assert f"kernel /boot/vmlinuz-{VERSION} ({VERSION}), initrd /boot/initrd.img-{VERSION}" in done.stdout
    assert "root on the whole disk, modules ok" in done.stdout
    boot = _versions(env, "linux")[-1]["boot"]
    assert isinstance(boot, dict) and boot["cmdline"] == "quiet" and boot["root_offset"] == 0
    folder = tmp_path / "store" / "linux" / "v1.boot"
    assert (folder / "vmlinuz").read_bytes() == KERNEL
    assert (folder / "initrd.img").is_file()


@pytest.mark.parametrize("table", ["mbr", "gpt", "gpt-4096"])
def test_the_linux_partition_of_a_partitioned_disk(env: dict[str, str], tmp_path: Path, table: str) -> None:
    fs = ext4(_tree(tmp_path), tmp_path / "fs.img", 32 * MIB)
    disk = 48 * MIB
    sector = 4096 if table == "gpt-4096" else 512
    if table == "mbr":
        head = mbr([(0x83, 2048, (32 * MIB) // 512)])
    else:
        head = gpt(disk, MIB // sector, (33 * MIB) // sector - 1, sector)
    image = partitioned(tmp_path / "disk.img", fs, head, MIB, disk)
    done = _pvsd(env, "vdisk", "import", "linux", str(image), "--quiet", "--sector-size", str(sector))
    assert done.returncode == 0, done.stderr
    assert "root on partition 1" in done.stdout
    assert _versions(env, "linux")[-1]["boot"]["root_offset"] == MIB  # type: ignore[index]


def test_missing_modules_are_reported_at_import(env: dict[str, str], tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "lib" / "modules" / VERSION / "modules.dep").write_text("kernel/fs/ext4/ext4.ko:\n")
    done = _pvsd(env, "vdisk", "import", "linux", str(ext4(tree, tmp_path / "l.img", 32 * MIB)), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "WARNING: its /lib/modules lacks" in done.stdout and "nbd" in done.stdout


def _refused(env: dict[str, str], tmp_path: Path, image: Path, reason: str) -> None:
    done = _pvsd(env, "vdisk", "import", "bad", str(image), "--quiet")
    assert done.returncode == 2, done.stdout + done.stderr
    assert reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert _versions(env, "bad") == []
    assert not (tmp_path / "store" / "bad").exists() or not any((tmp_path / "store" / "bad").iterdir())


def test_bad_images_are_refused_with_their_reason_and_change_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    (empty / "etc").mkdir(parents=True)
    _refused(env, tmp_path, ext4(empty, tmp_path / "nokernel.img", 16 * MIB), "has no /boot/vmlinuz-VERSION")

    corrupt = bytearray(ext4(_tree(tmp_path), tmp_path / "corrupt.img", 16 * MIB).read_bytes())
    corrupt[1024 + 4 : 1024 + 40] = bytes(36)  # the superblock's counts and layout, magic kept
    (tmp_path / "corrupt.img").write_bytes(corrupt)
    _refused(env, tmp_path, tmp_path / "corrupt.img", "holds no ext4 file system")

    past = partitioned(
        tmp_path / "past.img", tmp_path / "nokernel.img", mbr([(0x83, 2048, 1 << 20)]), MIB, 24 * MIB
    )
    _refused(env, tmp_path, past, "past the end of the")

    zeros = tmp_path / "zeros.img"
    with zeros.open("wb") as f:
        f.truncate(24 * MIB)
        f.write(mbr([(0x83, 2048, 8192)]))
    _refused(env, tmp_path, zeros, "holds no ext4 file system")


def test_overrides_and_plain_disks(env: dict[str, str], tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with blank.open("wb") as f:
        f.truncate(8 * MIB)
    done = _pvsd(env, "vdisk", "import", "plain", str(blank), "--quiet")
    assert done.returncode == 0 and "holds no Linux root file system" in done.stdout
    assert _versions(env, "plain")[-1]["boot"] is None

    kernel = tmp_path / "bzImage"
    kernel.write_bytes(KERNEL)
    done = _pvsd(env, "vdisk", "import", "given", str(blank), "--kernel", str(kernel), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "kernel bzImage (6.9.9-test)" in done.stdout

    empty = tmp_path / "e"
    empty.mkdir()
    nokernel = ext4(empty, tmp_path / "nk.img", 16 * MIB)
    assert _pvsd(env, "vdisk", "import", "nb", str(nokernel), "--no-boot", "--quiet").returncode == 0
