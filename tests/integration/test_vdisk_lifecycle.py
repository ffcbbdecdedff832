"""The version lifecycle as an operator runs it with the CLI, against a real farm store (SQLite,
and PostgreSQL where it runs): `vdisk version new`, the maintenance write lock, promote (now and
`--at`), revert back to maintenance, merge, delete, placement and the pending rule. Each refusal
names its reason and changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from pvsd.farm.records import DeviceType, FarmView, ReplicaState, VersionState
from pvsd.farm.store import FarmStore, open_store
from pvsd.farm.versions import boot_version
from pvsd.stream.admission import decide_login
from pvsd.stream.wire import ErrorCode, StreamRefusal
from pvsd.vdisk.chunk_files import kept_index
from pvsd.vdisk.image import image_path
from tests.support.pvsd import pvsd, pvsd_env

MIB = 1 << 20
ACTIVE = 60.0


class Farm:
    def __init__(self, tmp_path: Path, url: str) -> None:
        self.store_dir = tmp_path / "store"
        self.env = pvsd_env(url, server__store=str(self.store_dir), server__name="pvs1")
        done = pvsd(self.env, "farm", "init", "--name", "lab")
        assert done.returncode == 0, done.stderr
        self.store: FarmStore = open_store(url, "test")
        self.register("pvs1")
        self.image = tmp_path / "disk.img"
        self.image.write_bytes(os.urandom(8 * MIB))
        self.ok("vdisk", "import", "lab", str(self.image), "--no-boot", "--quiet")

    def register(self, name: str) -> None:
        self.store.register_server(
            name,
            "127.0.0.1",
            {"login": 6910, "stream_first": 6911, "stream_last": 6911},
            1.0,
            f"{name}-instance",
            1e9,
        )

    def run(self, *argv: str, **keys: str) -> tuple[int, str, str]:
        env = self.env | {f"PVSD_{k.upper()}": v for k, v in keys.items()}
        done = pvsd(env, *argv)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout, done.stderr

    def ok(self, *argv: str, **keys: str) -> str:
        code, out, err = self.run(*argv, **keys)
        assert code == 0, err
        return out + err

    def refused(self, *argv: str) -> str:
        before = self.versions()
        code, _, err = self.run(*argv)
        assert code == 2, err
        assert self.versions() == before, "a refusal changed the farm"
        return err

    def versions(self) -> list[dict[str, object]]:
        return list(json.loads(self.ok("vdisk", "versions", "lab", "--json")))

    def version(self, number: int) -> dict[str, object]:
        return next(v for v in self.versions() if v["number"] == number)

    def path(self, number: int) -> Path:
        return image_path(self.store_dir, "lab", number)


@pytest.fixture
def farm(tmp_path: Path, farm_url: str) -> Farm:
    return Farm(tmp_path, farm_url)


def _maintenance_login(farm: Farm, mac: str) -> FarmView:
    """What a maintenance device's login reads and records, as the login service does it."""
    result = farm.store.fresh_login(
        mac, active_within=ACTIVE, auto_add=False, template="", choose=lambda view: ("pvs1", 6911)
    )
    assert result.session is not None
    return result.view


def test_a_maintenance_version_is_made_written_sealed_and_copied(farm: Farm) -> None:
    out = farm.ok("vdisk", "version", "new", "lab")
    assert "version 2: maintenance, made from version 1 on pvs1" in out
    v2 = farm.version(2)
    assert v2["parent"] == 1 and v2["state"] == "maintenance" and v2["sha256"] is None
    assert v2["home"] == "pvs1" and v2["servers"] == ["pvs1"]
    assert farm.path(2).read_bytes() == farm.image.read_bytes()
    assert "in maintenance already" in farm.refused("vdisk", "version", "new", "lab")
    assert "copied to the other servers once promoted" in farm.refused("vdisk", "sync", "lab")

    # The maintenance device's writes go into the version's image (the stream does this in
    # private mode); promoting it seals what it holds.
    with farm.path(2).open("r+b") as image:
        image.seek(3 * MIB)
        image.write(b"written in maintenance")
    want = hashlib.sha256(farm.path(2).read_bytes()).hexdigest()
    out = farm.ok("vdisk", "promote", "lab", "2", "test")
    assert f"sealed with sha256 {want}" in out
    v2 = farm.version(2)
    assert v2["sha256"] == want and v2["state"] == "test" and v2["home"] is None
    assert kept_index(farm.path(2), want) is not None  # what peers pull and the scrub checks
    assert v2["servers"] == ["pvs1"]


def test_one_maintenance_device_writes_and_the_lock_is_in_the_farm(farm: Farm) -> None:
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("device", "add", "52:54:00:00:00:01", "--name", "m1", "--vdisk", "lab", "--type", "maintenance")
    farm.ok("device", "add", "52:54:00:00:00:02", "--name", "m2", "--vdisk", "lab", "--type", "maintenance")
    first = _maintenance_login(farm, "52:54:00:00:00:01")
    grant = decide_login("52:54:00:00:00:01", first, target=None, dead_after=1e9)
    assert grant.version.number == 2 and grant.private  # read-write, into the version
    second = farm.store.fresh_login(
        "52:54:00:00:00:02", active_within=ACTIVE, auto_add=False, template="", choose=lambda view: None
    ).view
    assert second.writer is not None and second.writer.device == "m1"
    with pytest.raises(StreamRefusal) as refusal:
        decide_login("52:54:00:00:00:02", second, target=None, dead_after=1e9)
    assert refusal.value.code is ErrorCode.MAINTENANCE_IN_USE and "m1" in refusal.value.reason
    # While m1 writes: no seal, no merge.
    assert "being written by m1" in farm.refused("vdisk", "promote", "lab", "2", "test")
    assert "being written by m1" in farm.refused("vdisk", "merge", "lab")
    # m1 shuts down: its session ends, and the lock with it.
    assert farm.store.close_session(farm.store.list_sessions()[0].id)
    farm.ok("vdisk", "promote", "lab", "2", "test")


def test_promote_at_a_time_takes_effect_then(farm: Farm) -> None:
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("vdisk", "promote", "lab", "2", "test")
    at = time.time() + 3
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at + 1))
    out = farm.ok("vdisk", "promote", "lab", "2", "production", "--at", stamp)
    assert "test -> production at" in out
    v2 = farm.version(2)
    assert v2["state"] == "test" and v2["promote_to"] == "production"
    assert "maintenance" not in farm.ok("vdisk", "versions", "lab")
    deadline = time.monotonic() + 15
    while farm.version(2)["state"] != "production":
        assert time.monotonic() < deadline, "the scheduled promotion did not happen"
        time.sleep(0.5)
    assert farm.version(2)["promote_at"] is None
    assert "not a time" in farm.run("vdisk", "promote", "lab", "2", "production", "--at", "soon")[2]


def test_merge_makes_the_chains_content_as_an_update_or_a_new_base(farm: Farm) -> None:
    farm.ok("vdisk", "version", "new", "lab")
    with farm.path(2).open("r+b") as image:
        image.write(b"v2")
    farm.ok("vdisk", "promote", "lab", "2", "test")
    farm.ok("vdisk", "merge", "lab")
    v3 = farm.version(3)
    assert v3["parent"] == 1 and v3["state"] == "test"  # an update on the base it is on
    assert v3["sha256"] == farm.version(2)["sha256"]
    assert farm.path(3).read_bytes() == farm.path(2).read_bytes()  # byte for byte the chain
    farm.ok("vdisk", "merge", "lab", "--base", "--state", "production")
    v4 = farm.version(4)
    assert v4["parent"] is None and v4["state"] == "production" and v4["servers"] == ["pvs1"]
    assert farm.path(4).read_bytes() == farm.path(2).read_bytes()


def test_revert_to_maintenance_makes_the_version_writable_on_this_server(farm: Farm) -> None:
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("vdisk", "promote", "lab", "2", "test")
    assert "only production version" in farm.refused("vdisk", "revert", "lab", "1")
    out = farm.ok("vdisk", "revert", "lab", "2")
    assert "test -> maintenance on pvs1" in out
    v2 = farm.version(2)
    assert v2["state"] == "maintenance" and v2["sha256"] is None and v2["home"] == "pvs1"
    assert "already in maintenance" in farm.refused("vdisk", "revert", "lab", "2")
    assert "has no version 9" in farm.refused("vdisk", "promote", "lab", "9", "test")


def test_a_production_version_is_pending_until_every_server_holds_it(farm: Farm) -> None:
    farm.register("pvs2")
    farm.store.report_replica(
        "pvs2", "lab", 1, farm.store.get_vdisk("lab").versions[1].sha256, ReplicaState.VERIFIED
    )
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("vdisk", "promote", "lab", "2", "test")
    out = farm.ok("vdisk", "promote", "lab", "2", "production")
    assert "pending until every server holds it" in out
    vdisk = farm.store.get_vdisk("lab")
    assert vdisk.version(2) is not None and vdisk.version(2).pending  # type: ignore[union-attr]
    assert "production (pending)" in farm.ok("vdisk", "versions", "lab")
    chosen = boot_version(vdisk, DeviceType.PRODUCTION)
    assert chosen is not None and chosen.number == 1  # production devices stay on version 1
    assert boot_version(vdisk, DeviceType.TEST).number == 2  # type: ignore[union-attr]
    # pvs2 gets its copy: no longer pending, production devices move at their next boot.
    sha = farm.store.get_vdisk("lab").version(2).sha256  # type: ignore[union-attr]
    farm.store.report_replica("pvs2", "lab", 2, sha, ReplicaState.VERIFIED)
    vdisk = farm.store.get_vdisk("lab")
    assert not vdisk.version(2).pending  # type: ignore[union-attr]
    assert boot_version(vdisk, DeviceType.PRODUCTION).number == 2  # type: ignore[union-attr]
    # A placement list that leaves pvs2 out: what pvs2 holds no longer matters.
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("vdisk", "promote", "lab", "3", "production")
    assert farm.store.get_vdisk("lab").version(3).pending  # type: ignore[union-attr]
    assert "belong on pvs1" in farm.ok("vdisk", "placement", "lab", "pvs1")
    assert not farm.store.get_vdisk("lab").version(3).pending  # type: ignore[union-attr]
    assert "every server" in farm.ok("vdisk", "placement", "lab", "--all")
    assert "no server 'nosuch'" in farm.run("vdisk", "placement", "lab", "nosuch")[2]


def test_delete_only_what_no_device_boots_and_warn_past_max_versions(farm: Farm) -> None:
    farm.ok("device", "add", "52:54:00:00:00:03", "--name", "p1", "--vdisk", "lab")
    assert "what p1 boot" in farm.refused("vdisk", "version", "delete", "lab", "1")
    farm.ok("vdisk", "version", "new", "lab")
    farm.ok("vdisk", "promote", "lab", "2", "production")
    out = farm.ok("vdisk", "version", "delete", "lab", "1")
    assert "deleted" in out and not farm.path(1).exists()
    assert [v["number"] for v in farm.versions()] == [0, 2]
    assert farm.version(2)["parent"] is None  # its parent's place in the history is gone
    farm.image.write_bytes(os.urandom(8 * MIB))
    out = farm.ok("vdisk", "import", "lab", str(farm.image), "--no-boot", "--quiet", farm__max_versions="2")
    assert "more than [farm] max_versions (2)" in out
    assert farm.store.get_vdisk("lab").version(3).state is VersionState.PRODUCTION  # type: ignore[union-attr]


def test_logins_go_only_to_servers_that_hold_the_version_while_another_copies(farm: Farm) -> None:
    """pvs2 is copying version 1 (the replicator reports it so): every login lands on pvs1,
    through the login service's own decision in the store's login transaction."""
    farm.register("pvs2")
    farm.store.report_replica("pvs2", "lab", 1, None, ReplicaState.COPYING)
    farm.store.report_copy("pvs2", "lab", 1, 4 * MIB, 4 * MIB, 1e6)
    chosen = []
    for n in range(10):
        mac = f"52:54:00:00:01:{n:02x}"
        farm.ok("device", "add", mac, "--name", f"t{n}", "--vdisk", "lab")

        def choose(view: FarmView, mac: str = mac) -> tuple[str, int]:
            grant = decide_login(mac, view, target=None, dead_after=1e9)
            return grant.placement.server.name, grant.placement.io_port

        result = farm.store.fresh_login(mac, active_within=ACTIVE, auto_add=False, template="", choose=choose)
        assert result.session is not None
        chosen.append(result.session.server)
    assert set(chosen) == {"pvs1"}
    sha = farm.store.get_vdisk("lab").version(1).sha256  # type: ignore[union-attr]
    farm.store.report_replica("pvs2", "lab", 1, sha, ReplicaState.VERIFIED)  # the copy is done
    mac = "52:54:00:00:01:ff"
    farm.ok("device", "add", mac, "--name", "late", "--vdisk", "lab")
    view = farm.store.fresh_login(
        mac, active_within=ACTIVE, auto_add=False, template="", choose=lambda v: None
    ).view
    assert (
        decide_login(mac, view, target=None, dead_after=1e9).placement.server.name == "pvs2"
    )  # least loaded
