"""Servers with their own stores: a version imported on one server is pulled by the others from
its /replication/ and verified, and a new version that changes 1 MiB moves one chunk, not the
disk. Three real `pvsd serve` processes on loopback addresses, one SQLite farm, three stores."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

from support.net import free_port
from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, server_states, wait_for

HOSTS = {"pvs1": "127.0.0.51", "pvs2": "127.0.0.52", "pvs3": "127.0.0.53"}
SIZE = 32 << 20  # 8 chunks of 4 MiB
CHUNK = 4 << 20


def _env(tmp_path: Path, name: str, database: str = "") -> dict[str, str]:
    return pvsd_env(
        database or f"sqlite:///{tmp_path}/farm.db",
        server__name=name,
        server__store=str(tmp_path / f"store-{name}"),
        api__enabled="true",
        api__port=str(free_port(HOSTS[name], socket.SOCK_STREAM)),
        tftp__enabled="false",
        replication__enabled="true",
        replication__interval_s="0.5",
        farm__heartbeat_interval="0.5",
        farm__dead_after="5",
    )


def _replicas(env: dict[str, str], version: int) -> dict[str, dict[str, Any]]:
    done = pvsd(env, "vdisk", "replicas", "lab", "--json")
    assert done.returncode == 0, done.stderr
    return {r["server"]: r for r in json.loads(done.stdout) if r["version"] == version}


def _verified_on(env: dict[str, str], version: int) -> set[str]:
    return {name for name, r in _replicas(env, version).items() if r["state"] == "verified"}


def _pulled(server: ServeProcess, version: int) -> dict[str, Any]:
    events = [
        e for e in server.log_events() if e.get("event") == "version pulled" and e["version"] == version
    ]
    assert len(events) == 1, events
    return events[0]


def test_every_server_pulls_each_version_and_a_new_one_moves_its_changed_chunk(
    tmp_path: Path, farm_url: str
) -> None:
    """On SQLite and on PostgreSQL (farm_url runs it on both)."""
    envs = {name: _env(tmp_path, name, farm_url) for name in HOSTS}
    assert pvsd(envs["pvs1"], "farm", "init", "--name", "lab").returncode == 0
    image = tmp_path / "disk.img"
    data = bytearray(os.urandom(SIZE))
    image.write_bytes(data)
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(serve(envs[name], name, HOSTS[name], tmp_path)) for name in HOSTS
        }

        wait_for(
            lambda: [s["state"] for s in server_states(envs["pvs1"]).values()] == ["alive"] * 3, timeout=30
        )
        imported = pvsd(envs["pvs1"], "vdisk", "import", "lab", str(image), "--no-boot", "--quiet")
        assert imported.returncode == 0, imported.stderr
        assert "replica on pvs1 verified" in imported.stdout

        # One reading of the farm per check: two could see pvs2's replica appear in between.
        wait_for(lambda: _verified_on(envs["pvs1"], 1) == set(HOSTS), timeout=60)
        for name in ("pvs2", "pvs3"):
            assert (tmp_path / f"store-{name}/lab/v1.img").read_bytes() == data
            pulled = _pulled(servers[name], 1)
            assert pulled["fetched_bytes"] == SIZE and pulled["reused_bytes"] == 0
        assert not list((tmp_path / "store-pvs2/lab").glob(".*"))  # no partial or progress file left
        fetched = {name: r["fetched_bytes"] for name, r in _replicas(envs["pvs1"], 1).items()}
        assert fetched == {"pvs1": 0, "pvs2": SIZE, "pvs3": SIZE}
        synced = pvsd(envs["pvs1"], "vdisk", "sync", "lab", "--wait", "--timeout", "30")
        assert synced.returncode == 0 and "verified on every live server (pvs1, pvs2, pvs3)" in synced.stdout

        data[12 << 20 : 13 << 20] = os.urandom(1 << 20)  # inside chunk 3
        image.write_bytes(data)
        again = pvsd(envs["pvs1"], "vdisk", "import", "lab", str(image), "--no-boot", "--quiet")
        assert again.returncode == 0, again.stderr
        wait_for(
            lambda: _verified_on(envs["pvs1"], 2) == set(HOSTS),
            timeout=60,
        )
        for name in ("pvs2", "pvs3"):
            assert (tmp_path / f"store-{name}/lab/v2.img").read_bytes() == data
            pulled = _pulled(servers[name], 2)
            assert pulled["fetched_bytes"] == CHUNK, pulled  # the changed chunk, and nothing else
            assert pulled["reused_bytes"] == SIZE - CHUNK
        assert {r["fetched_bytes"] for n, r in _replicas(envs["pvs1"], 2).items() if n != "pvs1"} == {CHUNK}
        for server in servers.values():
            assert "Traceback" not in server.log_text()


def test_a_pull_resumes_after_its_own_crash_and_finishes_from_another_peer_when_its_source_dies(
    tmp_path: Path,
) -> None:
    """pvs3 pulls at 32 Mbit/s (one chunk a second): SIGKILLed mid-copy, it resumes from what it
    held; then pvs1 is SIGKILLed, and pvs3 finishes from pvs2 with the right bytes."""
    envs = {name: _env(tmp_path, name) for name in HOSTS}
    envs["pvs3"]["PVSD_REPLICATION__MAX_RATE_MBIT"] = "32"
    assert pvsd(envs["pvs1"], "farm", "init", "--name", "lab").returncode == 0
    image = tmp_path / "disk.img"
    data = os.urandom(SIZE)
    image.write_bytes(data)
    folder = tmp_path / "store-pvs3/lab"
    with contextlib.ExitStack() as stack:
        pvs1 = stack.enter_context(serve(envs["pvs1"], "pvs1", HOSTS["pvs1"], tmp_path))
        stack.enter_context(serve(envs["pvs2"], "pvs2", HOSTS["pvs2"], tmp_path))
        wait_for(lambda: len(server_states(envs["pvs1"])) == 2, timeout=30)
        assert (
            pvsd(envs["pvs1"], "vdisk", "import", "lab", str(image), "--no-boot", "--quiet").returncode == 0
        )
        wait_for(lambda: _replicas(envs["pvs1"], 1).get("pvs2", {}).get("state") == "verified", timeout=60)

        first = stack.enter_context(serve(envs["pvs3"], "pvs3", HOSTS["pvs3"], tmp_path))
        wait_for(lambda: any(folder.glob(".v1.img.*.progress")), timeout=30)
        assert _replicas(envs["pvs1"], 1)["pvs3"]["state"] == "copying"  # logins go elsewhere meanwhile
        wait_for(lambda: "copying " in pvsd(envs["pvs1"], "vdisk", "replicas", "lab").stdout, timeout=10)
        assert pvsd(envs["pvs1"], "vdisk", "sync", "lab").returncode == 1  # not everywhere yet
        first.signal(signal.SIGKILL)
        first.wait()
        assert not (folder / "v1.img").exists()  # nothing half-written is ever the image

        second = stack.enter_context(serve(envs["pvs3"], "pvs3", HOSTS["pvs3"], tmp_path))
        wait_for(lambda: any(e.get("event") == "pulling a version" for e in second.log_events()), timeout=30)
        pvs1.signal(signal.SIGKILL)
        wait_for(lambda: _replicas(envs["pvs2"], 1).get("pvs3", {}).get("state") == "verified", timeout=90)
        assert (folder / "v1.img").read_bytes() == data
        pulled = _pulled(second, 1)
        assert pulled["resumed_chunks"] >= 1, pulled
        assert pulled["fetched_bytes"] <= SIZE - CHUNK * pulled["resumed_chunks"]
        failed = [
            e for e in second.log_events() if e.get("event") == "replication peer failed; trying the others"
        ]
        assert failed and {e["peer"] for e in failed} == {"pvs1"}, failed
        assert "Traceback" not in second.log_text()


def test_the_scrub_finds_one_flipped_byte_and_fetches_only_its_chunk(tmp_path: Path) -> None:
    """Bit rot does not change the file's size or mtime, so the replica scan's sidecar still
    trusts it: only hashing the chunks finds it."""
    envs = {name: _env(tmp_path, name) for name in ("pvs1", "pvs2")}
    envs["pvs2"]["PVSD_REPLICATION__VERIFY_INTERVAL_S"] = "1"
    assert pvsd(envs["pvs1"], "farm", "init", "--name", "lab").returncode == 0
    image = tmp_path / "disk.img"
    data = os.urandom(SIZE)
    image.write_bytes(data)
    copy = tmp_path / "store-pvs2/lab/v1.img"
    with contextlib.ExitStack() as stack:
        stack.enter_context(serve(envs["pvs1"], "pvs1", HOSTS["pvs1"], tmp_path))
        pvs2 = stack.enter_context(serve(envs["pvs2"], "pvs2", HOSTS["pvs2"], tmp_path))
        wait_for(lambda: len(server_states(envs["pvs1"])) == 2, timeout=30)
        assert (
            pvsd(envs["pvs1"], "vdisk", "import", "lab", str(image), "--no-boot", "--quiet").returncode == 0
        )
        wait_for(lambda: _replicas(envs["pvs1"], 1).get("pvs2", {}).get("state") == "verified", timeout=60)

        before = copy.stat()
        with copy.open("r+b") as stream:
            stream.seek(5 * CHUNK + 1234)
            byte = stream.read(1)
            stream.seek(5 * CHUNK + 1234)
            stream.write(bytes([byte[0] ^ 0x01]))
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))

        def repaired() -> list[dict[str, Any]]:
            return [e for e in pvs2.log_events() if e.get("event") == "replica repaired"]

        wait_for(lambda: bool(repaired()), timeout=30)
        found = [e for e in pvs2.log_events() if e.get("event") == "scrub found bad chunks"]
        assert found[0]["chunks"] == [5]
        assert repaired()[0]["chunks"] == [5] and repaired()[0]["fetched_bytes"] == CHUNK
        assert copy.read_bytes() == data
        assert _replicas(envs["pvs1"], 1)["pvs2"]["state"] == "verified"
        assert "Traceback" not in pvs2.log_text()
