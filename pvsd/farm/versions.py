"""The life of a vDisk version, as PVS has it: maintenance -> test -> production, and back.

Pure: the rules over a vDisk's versions as the farm has them; the store applies the change
(audited). A running target keeps the version its ticket names until it reboots, so a change
here reaches each device at its next boot.

Which version a device boots follows its type: production devices the newest production
version that is not pending, test devices the newest test or production one, maintenance
devices the newest of all. A version is *pending* while a server that should hold it (every
server of the farm that is not stopped, or the vDisk's placement list) lacks a verified copy;
while every production version is pending (the vDisk's first), production devices take the
newest. Only a maintenance device writes, and only to a maintenance version, whose image lives
on one server (its home) and has no sha256 until it is promoted.

Every version is a whole image on disk (pvsd/vdisk/image.py clone_image makes one from its
parent, reflinked where the file system can), so no version needs its parent's file: a version's
parent is its history, and `merge` makes a new version whose parent is the base it is on
(`--base`: none), so that the chain before it can be deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pvsd.errors import BadInput
from pvsd.farm.records import (
    DeviceType,
    Replica,
    ReplicaState,
    Server,
    ServerState,
    VDisk,
    VDiskVersion,
    VersionState,
)

__all__ = [
    "PROMOTIONS",
    "REVERSIONS",
    "boot_version",
    "check_promote",
    "merge_source",
    "pending_versions",
    "revert_target",
    "should_hold",
    "writes_version",
]

_ALLOWED: dict[DeviceType, tuple[VersionState, ...]] = {
    DeviceType.PRODUCTION: (VersionState.PRODUCTION,),
    DeviceType.TEST: (VersionState.TEST, VersionState.PRODUCTION),
    DeviceType.MAINTENANCE: (VersionState.MAINTENANCE, VersionState.TEST, VersionState.PRODUCTION),
}


def boot_version(vdisk: VDisk, device_type: DeviceType) -> VDiskVersion | None:
    """The version a device of this type boots now, or None (nothing it may boot has an image)."""
    allowed = _ALLOWED[device_type]
    usable = [v for v in vdisk.versions if v.state in allowed and v.imaged]
    if device_type is DeviceType.PRODUCTION:
        settled = [v for v in usable if not v.pending]
        usable = settled or usable
    return max(usable, key=lambda v: v.number, default=None)


def writes_version(vdisk: VDisk, device_type: DeviceType) -> VDiskVersion | None:
    """The maintenance version a device boots read-write, or None: it boots read-only."""
    version = boot_version(vdisk, device_type)
    if (
        device_type is DeviceType.MAINTENANCE
        and version is not None
        and version.state is VersionState.MAINTENANCE
    ):
        return version
    return None


def should_hold(placement: Sequence[str], servers: Iterable[Server]) -> set[str]:
    """The servers that should hold a vDisk's versions: its placement list, or every server;
    a stopped server is out until it starts again (and then pulls before it serves)."""
    running = {s.name for s in servers if s.state is not ServerState.STOPPED}
    return running & set(placement) if placement else running


def pending_versions(vdisk: VDisk, servers: Iterable[Server], replicas: Iterable[Replica]) -> set[int]:
    """The numbers of the vDisk's sealed versions that a server that should hold lacks verified."""
    wanted = should_hold(vdisk.placement, servers)
    held: dict[int, set[str]] = {}
    for replica in replicas:
        if replica.vdisk == vdisk.name and replica.state is ReplicaState.VERIFIED:
            version = vdisk.version(replica.version)
            if version is not None and version.sha256 and replica.sha256 == version.sha256:
                held.setdefault(replica.version, set()).add(replica.server)
    return {v.number for v in vdisk.versions if v.sha256 and not wanted <= held.get(v.number, set())}


def merge_source(vdisk: VDisk) -> VDiskVersion:
    """The version a merge copies: the newest with a sealed image."""
    sealed = [v for v in vdisk.versions if v.sha256]
    if not sealed:
        raise BadInput(f"vDisk {vdisk.name!r} has no sealed version to merge (import one first)")
    return max(sealed, key=lambda v: v.number)


# Where a version may go up to; anything else is out of order.
PROMOTIONS: dict[VersionState, tuple[VersionState, ...]] = {
    VersionState.MAINTENANCE: (VersionState.TEST, VersionState.PRODUCTION),
    VersionState.TEST: (VersionState.PRODUCTION,),
    VersionState.PRODUCTION: (),
}
# One step back.
REVERSIONS: dict[VersionState, VersionState | None] = {
    VersionState.PRODUCTION: VersionState.TEST,
    VersionState.TEST: VersionState.MAINTENANCE,
    VersionState.MAINTENANCE: None,
}


def _version(vdisk: VDisk, number: int) -> VDiskVersion:
    for version in vdisk.versions:
        if version.number == number:
            return version
    known = ", ".join(str(v.number) for v in vdisk.versions) or "none"
    raise BadInput(f"vDisk {vdisk.name!r} has no version {number} (it has: {known})")


def check_promote(vdisk: VDisk, number: int, target: VersionState) -> VDiskVersion:
    """The version to promote, or BadInput saying why it may not go to `target`."""
    version = _version(vdisk, number)
    if not version.imaged:
        raise BadInput(f"{vdisk.name} version {number} has no image yet: import or write it first")
    if target not in PROMOTIONS[version.state]:
        if version.state is target:
            raise BadInput(f"{vdisk.name} version {number} is already {target}")
        allowed = " or ".join(PROMOTIONS[version.state]) or "nothing further (it is production)"
        raise BadInput(
            f"{vdisk.name} version {number} is {version.state}: it can be promoted to {allowed}, "
            f"not to {target} (use `vdisk revert` to go back)"
        )
    return version


def revert_target(vdisk: VDisk, number: int) -> VersionState:
    """The state a revert takes the version to, or BadInput saying why not."""
    version = _version(vdisk, number)
    imaged = [v for v in vdisk.versions if v.imaged]  # version 0 of `vdisk create` may be empty
    if len(imaged) < 2:
        raise BadInput(
            f"{vdisk.name} version {number} is its only version: reverting it would leave "
            "production devices nothing to boot"
        )
    back = REVERSIONS[version.state]
    if back is None:
        raise BadInput(f"{vdisk.name} version {number} is already in maintenance: nothing to revert to")
    if version.state is VersionState.PRODUCTION:
        others = [v for v in imaged if v.number != number and v.state is VersionState.PRODUCTION]
        if not others:
            raise BadInput(
                f"{vdisk.name} version {number} is its only production version: promote another one "
                "first, or production devices would have nothing to boot"
            )
    return back
