"""pvsd.boot.ext4 and pvsd.boot.linux_image on images made with mke2fs -d (and sfdisk/fdisk for
the tables), read back with the real debugfs: the boot files found, the newest kernel, the
modules the guest needs, and a clear BadInput for each image that has a Linux root but cannot
boot."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvsd.boot.ext4 import Ext4Image
from pvsd.boot.linux_image import find_linux_boot, module_closure, module_order
from pvsd.errors import BadInput
from tests.support.linux_disk import MODULES_DEP, fake_kernel, linux_disk, mkext4, module_bytes, root_tree

VERSION = "6.1.0-57-amd64"
ALL_PRESENT = ()


def _disk(tmp_path: Path, table: str = "none", **tree: object) -> tuple[Path, int]:
    root = root_tree(tmp_path / "root", **tree)  # type: ignore[arg-type]
    image = tmp_path / "disk.img"
    return image, linux_disk(image, root, table)


@pytest.mark.parametrize(("table", "sector"), [("none", 512), ("dos", 512), ("gpt", 512), ("gpt4k", 4096)])
def test_the_boot_files_are_found_on_each_layout(tmp_path: Path, table: str, sector: int) -> None:
    image, offset = _disk(tmp_path, table)
    found = find_linux_boot(image, sector)
    assert found is not None
    assert (found.root_partition, found.root_offset) == (0 if table == "none" else 1, offset)
    assert (found.kernel, found.kernel_version) == (f"/boot/vmlinuz-{VERSION}", VERSION)
    assert found.initrd == f"/boot/initrd.img-{VERSION}"
    assert found.missing_modules == ALL_PRESENT
    assert found.other_versions == ()


def test_the_newest_of_several_kernels_is_picked(tmp_path: Path) -> None:
    image, _ = _disk(tmp_path, versions=("6.1.0-9-amd64", "6.1.0-57-amd64", "5.10.0-30-amd64"))
    found = find_linux_boot(image, 512)
    assert found is not None
    assert found.kernel_version == "6.1.0-57-amd64"  # 57 > 9 as numbers, not as text
    assert found.other_versions == ("5.10.0-30-amd64", "6.1.0-9-amd64")


def test_vmlinuz_symlinks_relative_and_absolute(tmp_path: Path) -> None:
    image, _ = _disk(tmp_path, "dos", links_only=True)
    found = find_linux_boot(image, 512)
    assert found is not None
    assert (found.kernel, found.kernel_version, found.initrd) == ("/vmlinuz", VERSION, "/initrd.img")
    fs = Ext4Image(image, found.root_offset)
    assert fs.readlink("/vmlinuz") == f"boot/../boot/kernel/vmlinuz-{VERSION}"
    assert fs.readlink("/initrd.img") == f"/boot/kernel/initrd.img-{VERSION}"
    assert fs.readlink("/sbin/init") is None and fs.readlink("/nothing") is None
    assert fs.resolve("/vmlinuz") == f"/boot/kernel/vmlinuz-{VERSION}"
    assert fs.resolve("/initrd.img") == f"/boot/kernel/initrd.img-{VERSION}"
    assert fs.read("/vmlinuz") == fake_kernel(VERSION)


@pytest.mark.parametrize("lib_link", [True, False])
def test_usr_merged_modules(tmp_path: Path, lib_link: bool) -> None:
    root = root_tree(tmp_path / "root", usr_merge=True)
    if not lib_link:
        (root / "lib").unlink()  # only /usr/lib/modules names them
    image = tmp_path / "disk.img"
    offset = linux_disk(image, root, "gpt")
    found = find_linux_boot(image, 512)
    assert found is not None and found.missing_modules == ALL_PRESENT
    fs = Ext4Image(image, offset)
    closure = module_closure(fs, VERSION, ["ext4"])
    assert closure[-1].name == "ext4" and closure[-1].path.endswith(
        f"lib/modules/{VERSION}/kernel/fs/ext4/ext4.ko"
    )
    assert fs.read(closure[-1].path) == module_bytes("kernel/fs/ext4/ext4.ko")


def test_missing_guest_modules_are_reported_not_refused(tmp_path: Path) -> None:
    image, _ = _disk(tmp_path, drop=("kernel/drivers/block/nbd.ko", "kernel/fs/jbd2/jbd2.ko"))
    found = find_linux_boot(image, 512)
    assert found is not None
    assert set(found.missing_modules) == {"nbd", "jbd2"}


def test_no_initrd(tmp_path: Path) -> None:
    image, _ = _disk(tmp_path, initrd=False)
    found = find_linux_boot(image, 512)
    assert found is not None and found.initrd is None


def test_module_closure_reads_in_load_order(tmp_path: Path) -> None:
    image, offset = _disk(tmp_path, "dos")
    fs = Ext4Image(image, offset)
    closure = module_closure(
        fs, VERSION, ["virtio_pci", "virtio_net", "e1000", "nbd", "crc32c_generic", "ext4"]
    )
    assert [m.name for m in closure] == [
        "failover",
        "net_failover",
        "virtio_net",
        "e1000",
        "nbd",
        "crc32c_generic",
        "crc16",
        "mbcache",
        "jbd2",
        "ext4",
    ]  # virtio_pci is built in
    files = fs.read_many([m.path for m in closure])
    assert [files[m.path] for m in closure] == [
        module_bytes(m.path.split(f"{VERSION}/", 1)[1]) for m in closure
    ]
    with pytest.raises(BadInput, match="has no module floppy"):
        module_closure(fs, VERSION, ["floppy"])
    with pytest.raises(BadInput, match=r"no /lib/modules/9\.9"):
        module_closure(fs, "9.9", ["nbd"])


def test_module_order_is_pure_and_bounded() -> None:
    dep = "".join(f"{p}: {' '.join(d)}\n" for p, d in MODULES_DEP.items())
    dep += "kernel/a.ko.xz: kernel/b.ko.xz\nkernel/b.ko.xz: kernel/a.ko.xz\n"  # a damaged, cyclic index
    order, missing = module_order(
        dep, "kernel/drivers/virtio/virtio_pci.ko\n", ["ext4", "virtio_pci", "ext4", "a", "x"]
    )
    assert order[:4] == [
        "kernel/lib/crc16.ko",
        "kernel/fs/mbcache.ko",
        "kernel/fs/jbd2/jbd2.ko",
        "kernel/fs/ext4/ext4.ko",
    ]
    assert order.count("kernel/fs/ext4/ext4.ko") == 1
    assert set(order[4:]) == {"kernel/a.ko.xz", "kernel/b.ko.xz"} and missing == ["x"]


def test_ext4_listdir_exists_dump(tmp_path: Path) -> None:
    image, offset = _disk(tmp_path, "gpt")
    fs = Ext4Image(image, offset)
    assert sorted(fs.listdir("/")) == ["boot", "etc", "lib", "lost+found", "sbin"]
    assert fs.listdir("/nothing") == []
    assert fs.exists("/sbin/init") and not fs.exists("/sbin/nothing")
    big = tmp_path / "root/boot/big"
    big.write_bytes(bytes(range(256)) * (12 << 12))  # 12 MiB, a kernel's size
    mkext4(image, tmp_path / "root", 32 << 20, offset)
    out = tmp_path / "out"
    fs.dump("/boot/big", out)
    assert out.read_bytes() == big.read_bytes()
    with pytest.raises(BadInput, match="no /boot/none"):
        fs.dump("/boot/none", out)


def test_symlink_loops_are_bounded(tmp_path: Path) -> None:
    root = root_tree(tmp_path / "root")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    image = tmp_path / "disk.img"
    mkext4(image, root)
    with pytest.raises(BadInput, match="loop of more than 16 symlinks"):
        Ext4Image(image).resolve("/a")


def test_no_linux_root_is_none(tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    assert find_linux_boot(blank, 512) is None
    sector = tmp_path / "boot-sector.img"
    sector.write_bytes(b"\xeb\x3c\x90" + bytes(507) + b"\x55\xaa" + bytes(1 << 20))
    assert find_linux_boot(sector, 512) is None


def test_a_root_without_kernel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    image = tmp_path / "disk.img"
    linux_disk(image, root, "dos")
    with pytest.raises(BadInput, match=r"partition 1 has no /boot/vmlinuz-VERSION or /vmlinuz"):
        find_linux_boot(image, 512)


def test_a_corrupt_ext4(tmp_path: Path) -> None:
    image, _ = _disk(tmp_path)
    with image.open("r+b") as f:
        f.seek(4096)  # the group descriptors after a 4 KiB block's superblock
        f.write(b"\xff" * 8192)
    with pytest.raises(BadInput, match=r"debugfs: .*Illegal block number"):
        find_linux_boot(image, 512)


@pytest.mark.parametrize("content", ["zeros", "vfat"])
def test_a_linux_partition_without_ext4(tmp_path: Path, content: str) -> None:
    image = tmp_path / "disk.img"
    offset = linux_disk(image, None, "dos")
    if content == "vfat":
        import subprocess

        part = tmp_path / "part.img"
        subprocess.run(["mkfs.vfat", "-C", str(part), "8192"], check=True, capture_output=True, timeout=30)
        with image.open("r+b") as f:
            f.seek(offset)
            f.write(part.read_bytes())
    with pytest.raises(BadInput, match="partition 1 is a Linux partition but holds no ext4 file system"):
        find_linux_boot(image, 512)


def test_a_partition_past_the_end(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    linux_disk(image, None, "gpt")
    with image.open("r+b") as f:
        f.truncate(4 << 20)
    with pytest.raises(BadInput, match=r"GPT partition 1 ends at byte .* past the end"):
        find_linux_boot(image, 512)


@settings(max_examples=200)
@given(st.text(alphabet="ab/.:- \nko", max_size=300), st.text(alphabet="ab/.ko\n", max_size=60))
def test_module_order_takes_any_index_text(dep: str, builtin: str) -> None:
    order, missing = module_order(dep, builtin, ["a", "b", "ab"])
    assert len(order) == len(set(order)) and len(missing) == len(set(missing))
