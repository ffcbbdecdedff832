"""Publishing boot files: only what changed is pushed, and the changes are named for the log."""

from __future__ import annotations

from pvsd.boot.ipxe import device_script_name
from pvsd.boot.publish import BootFiles, ScriptChanges
from pvsd.config import Config
from pvsd.farm.records import Device, DeviceType, Server, ServerState

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

    assert files.devices_changed([one, two]) == ScriptChanges((one.mac, two.mac), ())
    assert set(recorder.files) == {device_script_name(one.mac), device_script_name(two.mac)}
    pushes = recorder.pushes

    assert files.devices_changed([one, two]) == ScriptChanges((), ())
    assert recorder.pushes == pushes  # nothing changed, nothing pushed

    renamed = device(two.mac, "two-renamed")
    assert files.devices_changed([renamed]) == ScriptChanges((two.mac,), (one.mac,))
    assert set(recorder.files) == {device_script_name(two.mac)}
    assert b"two-renamed" in recorder.files[device_script_name(two.mac)]
