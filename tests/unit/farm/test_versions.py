"""The rules of a version's life: promotions in order, reverts one step back, and nothing that
would leave production devices without a version."""

from __future__ import annotations

import dataclasses

import pytest

from pvsd.errors import BadInput
from pvsd.farm.records import (
    AccessMode,
    DeviceType,
    Replica,
    ReplicaState,
    Server,
    ServerState,
    VDisk,
    VDiskVersion,
    VersionState,
)
from pvsd.farm.versions import (
    boot_version,
    check_promote,
    merge_source,
    pending_versions,
    revert_target,
    should_hold,
    writes_version,
)

M, T, P = VersionState.MAINTENANCE, VersionState.TEST, VersionState.PRODUCTION


def disk(*states: VersionState) -> VDisk:
    versions = tuple(VDiskVersion("lab", n, s, "ab" * 32, 0.0) for n, s in enumerate(states, 1))
    return VDisk("lab", 1 << 20, 512, AccessMode.STANDARD, 0.0, versions)


@pytest.mark.parametrize(("start", "target"), [(M, T), (M, P), (T, P)])
def test_promotions_go_up(start: VersionState, target: VersionState) -> None:
    assert check_promote(disk(P, start), 2, target).number == 2


@pytest.mark.parametrize(
    ("start", "target", "message"),
    [(T, T, "already test"), (P, T, "use `vdisk revert`"), (T, M, "not to maintenance"), (P, P, "already")],
)
def test_out_of_order_promotions_are_refused(start: VersionState, target: VersionState, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        check_promote(disk(P, start), 2, target)


def test_an_unknown_version_is_named_with_the_known_ones() -> None:
    with pytest.raises(BadInput, match=r"has no version 9 \(it has: 1, 2\)"):
        check_promote(disk(P, M), 9, T)


def test_an_empty_version_0_does_not_count_as_a_production_version() -> None:
    empty = VDiskVersion("lab", 0, P, None, 0.0)
    base = disk(P, T)
    with_empty = VDisk("lab", 1 << 20, 512, AccessMode.STANDARD, 0.0, (empty, *base.versions))
    with pytest.raises(BadInput, match="only production version"):
        revert_target(with_empty, 1)


def test_reverts_go_one_step_back() -> None:
    assert revert_target(disk(P, P), 2) is T
    assert revert_target(disk(P, T), 2) is M


@pytest.mark.parametrize(
    ("states", "number", "message"),
    [
        ((P,), 1, "its only version"),
        ((T, P), 2, "only production version"),
        ((P, M), 2, "already in maintenance"),
    ],
)
def test_reverts_that_would_strand_devices_are_refused(
    states: tuple[VersionState, ...], number: int, message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        revert_target(disk(*states), number)


# -- which version a device boots, pending, placement -------------------------------------------


def _server(name: str, state: ServerState = ServerState.RUNNING) -> Server:
    return Server(name, "127.0.0.1", {}, 1.0, None, state, "i", 0.0, 0.0, 0.0)


def _held(server: str, number: int, sha: str | None = "ab" * 32) -> Replica:
    return Replica(server, "lab", number, sha, ReplicaState.VERIFIED, 0.0)


def test_production_devices_skip_a_pending_version_unless_every_one_is_pending() -> None:
    vdisk = disk(P, P)
    pending = dataclasses.replace(vdisk.versions[1], pending=True)
    held_back = dataclasses.replace(vdisk, versions=(vdisk.versions[0], pending))
    assert boot_version(held_back, DeviceType.PRODUCTION).number == 1  # type: ignore[union-attr]
    assert boot_version(held_back, DeviceType.TEST).number == 2  # type: ignore[union-attr]
    only = dataclasses.replace(vdisk, versions=(pending,))
    assert boot_version(only, DeviceType.PRODUCTION).number == 2  # type: ignore[union-attr]


def test_a_maintenance_version_is_written_only_by_a_maintenance_device() -> None:
    vdisk = disk(P, M)
    open_version = dataclasses.replace(vdisk.versions[1], sha256=None, home="pvs1")
    vdisk = dataclasses.replace(vdisk, versions=(vdisk.versions[0], open_version))
    assert writes_version(vdisk, DeviceType.MAINTENANCE) == open_version
    assert writes_version(vdisk, DeviceType.TEST) is None
    assert boot_version(vdisk, DeviceType.PRODUCTION).number == 1  # type: ignore[union-attr]
    sealed_only = disk(P, T)
    assert writes_version(sealed_only, DeviceType.MAINTENANCE) is None  # it boots test read-only


def test_pending_follows_the_servers_that_should_hold_it() -> None:
    vdisk = disk(P, P)
    servers = [_server("pvs1"), _server("pvs2"), _server("pvs3", ServerState.STOPPED)]
    replicas = [_held("pvs1", 1), _held("pvs2", 1), _held("pvs1", 2)]
    assert pending_versions(vdisk, servers, replicas) == {2}  # pvs2 lacks it; pvs3 is stopped
    assert pending_versions(vdisk, servers, [*replicas, _held("pvs2", 2)]) == set()
    assert pending_versions(vdisk, servers, [*replicas, _held("pvs2", 2, "cd" * 32)]) == {2}  # wrong image
    placed = dataclasses.replace(vdisk, placement=("pvs1",))
    assert pending_versions(placed, servers, replicas) == set()
    assert should_hold(("pvs1", "gone"), servers) == {"pvs1"}


def test_a_merge_copies_the_newest_sealed_version() -> None:
    vdisk = disk(P, T)
    assert merge_source(vdisk).number == 2
    with pytest.raises(BadInput, match="no sealed version"):
        merge_source(VDisk("lab", 1 << 20, 512, AccessMode.STANDARD, 0.0, ()))
