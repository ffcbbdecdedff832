"""The rules of a version's life: promotions in order, reverts one step back, and nothing that
would leave production devices without a version."""

from __future__ import annotations

import pytest

from pvsd.errors import BadInput
from pvsd.farm.records import AccessMode, VDisk, VDiskVersion, VersionState
from pvsd.farm.versions import check_promote, revert_target

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
