"""A version's boot files in the farm (migrations 5 and 6): recorded with the import in its one
transaction, loaded with every version, set and cleared with an audit entry, on both backends."""

from __future__ import annotations

import pytest

from pvsd.farm import FarmStore, NotFound, init_farm
from pvsd.farm.records import VDiskShape, VersionBoot

BOOT = VersionBoot(
    kernel="/boot/vmlinuz-6.1.0-57-amd64",
    kernel_version="6.1.0-57-amd64",
    kernel_sha256="ab" * 32,
    initrd="/boot/initrd.img-6.1.0-57-amd64",
    initrd_sha256="cd" * 32,
    cmdline="quiet",
    root_offset=1 << 20,
    kernel_size=8_123_456,
    initrd_size=51_234_567,
)


@pytest.fixture
def store(farm_url: str) -> FarmStore:
    store, _, created = init_farm(farm_url, "lab", "test")
    assert created
    return store


def test_boot_files_come_back_with_the_version(store: FarmStore) -> None:
    placed: list[int] = []
    version = store.import_version("deb", VDiskShape(1 << 20), "00" * 32, None, placed.append, boot=BOOT)
    assert placed == [1] and version.boot == BOOT
    plain = store.import_version("deb", VDiskShape(1 << 20), "11" * 32, None, placed.append)
    assert plain.boot is None
    boots = {v.number: v.boot for v in store.list_vdisks()[0].versions}
    assert (boots[1], boots[2]) == (BOOT, None)


def test_a_failed_place_records_no_boot_files(store: FarmStore) -> None:
    def fail(number: int) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.import_version("deb", VDiskShape(1 << 20), "00" * 32, None, fail, boot=BOOT)
    assert store.list_vdisks() == []


def test_set_and_clear_are_audited(store: FarmStore) -> None:
    store.import_version("deb", VDiskShape(1 << 20), "00" * 32, None, lambda n: None)
    without_initrd = VersionBoot("/vmlinuz", "6.1.0-57-amd64", "ab" * 32, kernel_size=10)
    assert store.set_version_boot("deb", 1, without_initrd).boot == without_initrd
    assert store.set_version_boot("deb", 1, BOOT).boot == BOOT
    assert store.set_version_boot("deb", 1, None).boot is None
    actions = [(e.action, e.subject) for e in store.list_audit()]
    assert ("vdisk.version.boot.clear", "deb.1") in actions
    assert actions.count(("vdisk.version.boot", "deb.1")) == 2
    with pytest.raises(NotFound, match="has no version 7"):
        store.set_version_boot("deb", 7, BOOT)


def test_removing_the_vdisk_removes_its_boot_records(store: FarmStore) -> None:
    store.import_version("deb", VDiskShape(1 << 20), "00" * 32, None, lambda n: None, boot=BOOT)
    store.remove_vdisk("deb", 60.0)
    version = store.import_version("deb", VDiskShape(1 << 20), "00" * 32, None, lambda n: None)
    assert version.boot is None
