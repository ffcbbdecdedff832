"""Publishing boot files: only what changed is pushed, and the changes are named for the log."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pvsd.boot.grub import grub_script_name
from pvsd.boot.ipxe import device_script_name
from pvsd.boot.publish import BootFiles, ScriptChanges
from pvsd.config import Config
from pvsd.farm.records import (
    AccessMode,
    Device,
    DeviceType,
    Server,
    ServerState,
    VDisk,
    VDiskVersion,
    VersionBoot,
    VersionState,
)

THIS = Server("pvs1", "10.0.0.1", {"login": 6910}, 1.0, None, ServerState.RUNNING, "i", 0.0, 0.0, 0.0)


class Recorder:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.pushes = 0

    def publish(self, name: str, data: bytes) -> None:
        self.files[name] = data
        self.pushes += 1

    def unpublish(self, name: str) -> None:
        del self.files[name]

    def publish_default(self, prefix: str, data: bytes) -> None:
        pass


def device(mac: str, name: str, vdisk: str | None = None) -> Device:
    return Device(mac, name, None, vdisk, True, DeviceType.PRODUCTION, 0.0)


def test_only_changed_device_scripts_are_pushed_and_each_change_is_named() -> None:
    recorder = Recorder()
    files = BootFiles([recorder], Config(), "lab", THIS, None)
    one, two = device("52:54:00:00:00:01", "one"), device("52:54:00:00:00:02", "two")

    assert files.devices_changed([one, two], {}) == ScriptChanges((one.mac, two.mac), ())
    assert set(recorder.files) == {
        *(device_script_name(d.mac) for d in (one, two)),
        *(grub_script_name(d.mac) for d in (one, two)),
    }
    pushes = recorder.pushes

    assert files.devices_changed([one, two], {}) == ScriptChanges((), ())
    assert recorder.pushes == pushes  # nothing changed, nothing pushed

    renamed = device(two.mac, "two-renamed")
    assert files.devices_changed([renamed], {}) == ScriptChanges((two.mac,), (one.mac,))
    assert set(recorder.files) == {device_script_name(two.mac), grub_script_name(two.mac)}
    assert b"two-renamed" in recorder.files[device_script_name(two.mac)]
    assert b"two-renamed" in recorder.files[grub_script_name(two.mac)]


def _vdisk(boot: VersionBoot | None) -> VDisk:
    version = VDiskVersion("linux", 1, VersionState.PRODUCTION, "ab" * 32, 0.0, boot)
    return VDisk("linux", 1 << 28, 512, AccessMode.STANDARD, 0.0, (version,))


BOOT = VersionBoot("/boot/vmlinuz-6.1.0-57-amd64", "6.1.0-57-amd64", "cd" * 32, cmdline="quiet")


def test_a_device_whose_version_has_boot_files_gets_the_diskless_script() -> None:
    files = BootFiles([Recorder()], Config(), "lab", THIS, None)
    script = files.script(device("52:54:00:00:00:01", "one", "linux"), {"linux": _vdisk(BOOT)})
    assert "kernel --timeout 10000 --name vmlinuz http://" in script
    assert "console=tty0 console=ttyS0,115200n8 quiet pvsd.mac=52:54:00:00:00:01" in script
    grub = files.grub_script(device("52:54:00:00:00:01", "one", "linux"), {"linux": _vdisk(BOOT)})
    assert "if linux (http,10.0.0.1:54321)/boot/vdisk/linux/1/vmlinuz console=tty0 " in grub
    assert "initrd=" not in grub  # GRUB hands the initramfs over itself


def test_an_ipxe_template_leaves_the_grub_script_refusing() -> None:
    files = BootFiles([Recorder()], Config(), "lab", THIS, "#!ipxe\necho {{name}}\n")
    one = device("52:54:00:00:00:01", "one", "linux")
    assert files.script(one, {"linux": _vdisk(BOOT)}) == "#!ipxe\necho one\n"
    assert "[boot] script is an iPXE template" in files.grub_script(one, {"linux": _vdisk(BOOT)})


@pytest.mark.parametrize(
    ("change", "vdisks", "reason"),
    [
        ({"enabled": False}, {}, "the device is disabled"),
        ({"vdisk": None}, {}, "no vDisk is assigned"),
        ({}, {}, "vDisk linux is not in the farm"),
        ({}, {"linux": _vdisk(None)}, "linux version 1 has no kernel to boot diskless"),
    ],
)
def test_a_device_that_cannot_boot_is_told_why(
    change: dict[str, Any], vdisks: dict[str, VDisk], reason: str
) -> None:
    files = BootFiles([Recorder()], Config(), "lab", THIS, None)
    one = dataclasses.replace(device("52:54:00:00:00:01", "one", "linux"), **change)
    script = files.script(one, vdisks)
    assert f"echo pvsd: cannot boot: {reason}" in script
    assert script.rstrip().endswith("exit 1")
    assert f"pvsd: cannot boot: {reason}" in files.grub_script(one, vdisks)
