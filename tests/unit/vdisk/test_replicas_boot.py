"""The replica scan looks at each version's image only: the boot folder beside it (vN.boot, its
extracted kernel and initramfs) is neither a replica nor a reason to report one bad."""

from __future__ import annotations

from pathlib import Path

import structlog

from pvsd.farm import ReplicaState, init_farm
from pvsd.farm.records import VDiskShape, VersionBoot
from pvsd.vdisk.image import boot_folder, image_path, import_image, move_image
from pvsd.vdisk.replicas import scan_replicas


def test_boot_folders_are_not_replicas(tmp_path: Path) -> None:
    store, _, _ = init_farm(f"sqlite:///{tmp_path}/farm.db", "lab", "test")
    store.register_server("pvs1", "127.0.0.1", {"login": 6910}, 1.0, "i1", 8.0)
    source = tmp_path / "disk.raw"
    source.write_bytes(bytes(range(256)) * 4096)
    folder = tmp_path / "store"
    staged = folder / "deb" / ".import.img"
    staged.parent.mkdir(parents=True)
    result = import_image(source, staged)
    boot = VersionBoot("/vmlinuz", "6.1.0-57-amd64", "ab" * 32, kernel_size=4)

    def place(number: int) -> None:
        boot_dir = boot_folder(folder, "deb", number)
        boot_dir.mkdir()
        (boot_dir / "vmlinuz").write_bytes(b"kern")
        move_image(staged, image_path(folder, "deb", number))

    store.import_version("deb", VDiskShape(result.size), result.sha256, None, place, boot=boot)
    assert boot_folder(folder, "deb", 1) == folder / "deb" / "v1.boot"
    assert scan_replicas(store, "pvs1", folder, structlog.get_logger()) == 1
    assert [(r.vdisk, r.version, r.state) for r in store.list_replicas()] == [
        ("deb", 1, ReplicaState.VERIFIED)
    ]
