"""The farm keeps booting while its database is down (loopback, a throwaway PostgreSQL).

With PostgreSQL stopped, a known device's `target copy` succeeds from the servers' snapshots,
an unknown MAC is refused DATABASE_UNAVAILABLE, `device add` fails naming the database and
nothing of it appears later, and a server restarted during the outage serves the known
device. When the database returns, the outage's sessions are in `farm audit`, written once.
A database that comes back empty, or restored from an older backup, is reported and not used.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.postgres import Cluster, postgres_cluster
from support.pvsd import pvsd, wait_for
from support.stream import StreamFarm, stream_farm

from pvsd.farm.snapshot import read_snapshot

MAC = "52:54:00:00:00:00"
KNOWN = "52:54:00:0f:00:01"
UNKNOWN = "52:54:00:0f:00:99"
NOT_TRUSTED = "farm database not trusted: serving from the farm snapshot and keeping the queued records"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A PostgreSQL of this test's own: it is stopped and started under the servers."""
    with postgres_cluster() as own:
        yield own


def copy(
    farm: StreamFarm, mac: str, out: Path, servers: str | None = None
) -> subprocess.CompletedProcess[str]:
    return pvsd(
        farm.env,
        "target",
        "copy",
        "--mac",
        mac,
        "--servers",
        servers or farm.servers_arg(),
        "--out",
        str(out),
        "--json",
        timeout=120,
    )


def snapshot_has(farm: StreamFarm, server: str, mac: str) -> bool:
    try:
        snapshot = read_snapshot(farm.folder / "offline" / server)
    except Exception:
        return False
    return snapshot.device(mac) is not None


def events(farm: StreamFarm, name: str) -> list[dict[str, Any]]:
    return [e for p in farm.processes.values() for e in p.log_events() if e["event"] == name]


def offline_audit(farm: StreamFarm) -> list[dict[str, Any]]:
    entries = json.loads(farm.run("farm", "audit", "--json", "--limit", "500"))
    return [e for e in entries if '"offline": true' in e["detail"]]


def test_known_devices_boot_while_the_database_is_down(tmp_path: Path, cluster: Cluster) -> None:
    url = cluster.create_database("farm")
    offline = str(tmp_path / "offline")
    with stream_farm(tmp_path, database=url, farm__offline_dir=offline, api__enabled="true") as farm:
        farm.run("device", "add", KNOWN, "--name", "known", "--vdisk", "disk")
        farm.start("pvs1")
        farm.start("pvs2")
        farm.wait_verified("disk")
        wait_for(lambda: all(snapshot_has(farm, s, KNOWN) for s in ("pvs1", "pvs2")), timeout=20)
        snapshot = farm.folder / "offline" / "pvs1" / "snapshot.json"
        assert snapshot.stat().st_mode & 0o777 == 0o600  # it holds the farm secret

        cluster.stop()
        result = copy(farm, MAC, tmp_path / "during.raw")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["sha256"] == farm.sha256
        assert events(farm, "login granted from the farm snapshot (database down)")

        # `server list` shows the database as each server sees it, from a snapshot meanwhile.
        listed = pvsd(farm.env, "server", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "snapshot" in listed.stderr
        wait_for(
            lambda: (
                {
                    s["name"]: (s["database"] or {}).get("database")
                    for s in json.loads(pvsd(farm.env, "server", "list", "--json").stdout)
                }
                == {"pvs1": "unreachable", "pvs2": "unreachable"}
            ),
            timeout=15,
        )

        refused = copy(farm, UNKNOWN, tmp_path / "unknown.raw")
        assert refused.returncode != 0
        assert "DATABASE_UNAVAILABLE" in refused.stderr + refused.stdout

        added = pvsd(farm.env, "device", "add", "52:54:00:0f:00:02", "--name", "late", "--vdisk", "disk")
        assert added.returncode != 0
        assert f"127.0.0.1:{cluster.port}/farm" in added.stderr, added.stderr

        # A server started while the database is down serves from its snapshot.
        farm.processes["pvs2"].signal(15)
        farm.processes["pvs2"].wait()
        restarted = farm.start("pvs2")
        assert any(
            e["event"].startswith("farm database unreachable at start") for e in restarted.log_events()
        )
        result = copy(farm, KNOWN, tmp_path / "restarted.raw", servers="127.0.0.12")
        assert result.returncode == 0, result.stderr + restarted.log_text()[-3000:]
        assert json.loads(result.stdout)["sha256"] == farm.sha256

        cluster.start()

        # Both outage sessions (and their ends) reach the audit log, each once.
        def written() -> bool:
            subjects = [e["subject"] for e in offline_audit(farm) if e["action"] == "session.open"]
            return subjects.count(MAC) == 1 and subjects.count(KNOWN) == 1

        wait_for(written, timeout=30)
        macs = {d["mac"] for d in json.loads(farm.run("device", "list", "--json"))}
        assert "52:54:00:0f:00:02" not in macs  # the refused change was not applied later
        # The restarted server registered once the database was back.
        wait_for(
            lambda: any(
                s["name"] == "pvs2"
                and s["state"] == "alive"
                and s["instance"] == restarted_instance(restarted)
                for s in json.loads(farm.run("server", "list", "--json"))
            ),
            timeout=20,
        )
        wait_for(
            lambda: (
                {
                    s["name"]: (s["database"] or {}).get("database")
                    for s in json.loads(farm.run("server", "list", "--json"))
                }
                == {"pvs1": "up", "pvs2": "up"}
            ),
            timeout=15,
        )
        events_text = "".join(p.log_text() for p in farm.processes.values())
        assert "Traceback" not in events_text


def restarted_instance(process: Any) -> str:
    joined = [e for e in process.log_events() if e["event"] == "joined the farm"]
    return str(joined[-1]["instance"]) if joined else ""


def test_a_database_restored_from_an_older_backup_is_not_trusted(tmp_path: Path, cluster: Cluster) -> None:
    url = cluster.create_database("farm")
    with stream_farm(tmp_path, database=url, farm__offline_dir=str(tmp_path / "offline")) as farm:
        farm.start("pvs1")
        farm.wait_verified("disk", servers=("pvs1",))
        backup = tmp_path / "farm.sql"
        subprocess.run(
            [
                str(cluster.bindir / "pg_dump"),
                "-h",
                "127.0.0.1",
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                "-f",
                str(backup),
                "farm",
            ],
            check=True,
            capture_output=True,
        )
        # Changes after the backup: the servers see them, the backup does not hold them.
        farm.run("device", "add", KNOWN, "--name", "known", "--vdisk", "disk")
        wait_for(lambda: snapshot_has(farm, "pvs1", KNOWN), timeout=20)

        with psycopg.connect(cluster.url(), autocommit=True) as connection:
            connection.execute("DROP DATABASE farm WITH (FORCE)")
            connection.execute("CREATE DATABASE farm")
        wait_for(
            lambda: events(
                farm,
                NOT_TRUSTED,
            ),
            timeout=20,
        )
        assert (
            "no farm"
            in events(
                farm,
                NOT_TRUSTED,
            )[0]["problem"]
        )

        subprocess.run(
            [
                str(cluster.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(cluster.port),
                "-U",
                "postgres",
                "-q",
                "-f",
                str(backup),
                "farm",
            ],
            check=True,
            capture_output=True,
        )

        def older_reported() -> bool:
            return any(
                "older backup" in e["problem"]
                for e in events(
                    farm,
                    NOT_TRUSTED,
                )
            )

        wait_for(older_reported, timeout=30)
        # The device the backup lacks still boots: logins are decided from the snapshot.
        result = copy(farm, KNOWN, tmp_path / "known.raw", servers="127.0.0.11")
        assert result.returncode == 0, result.stderr
        assert events(farm, "login granted from the farm snapshot (database down)")
