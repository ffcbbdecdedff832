"""The life of a vDisk version, as PVS has it: maintenance -> test -> production, and back.

Pure: the rules over a vDisk's versions as the farm has them; the store applies the change
(audited). A running target keeps the version its ticket names until it reboots, so a change
here reaches each device at its next boot.
"""

from __future__ import annotations

from pvsd.errors import BadInput
from pvsd.farm.records import VDisk, VDiskVersion, VersionState

__all__ = ["PROMOTIONS", "REVERSIONS", "check_promote", "revert_target"]

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
    if not version.sha256:
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
    imaged = [v for v in vdisk.versions if v.sha256]  # version 0 of `vdisk create` may be empty
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
