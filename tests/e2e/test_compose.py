"""The compose farm for real: docker-compose.yml brought up on this machine's Docker engine.

`make images` (the base built with debootstrap where no registry answers), `up -d`, then:
three servers alive and the demo vDisk pvs1 imported verified on all three; the target VM
boots it through the whole chain (iPXE ROM, proxy DHCP, TFTP, HTTP, login, streaming); the
serving server is `docker kill`ed and the VM goes on; with db stopped the VM goes on, a known
device boots (`target copy`) and an admin command fails naming the database; with db started
again the outage's session is in `farm audit`; `down -v` leaves nothing. The project is taken
down whatever happens. It runs last (conftest.py): Docker changes the host's firewall.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import needs
from support.compose import ComposeError, ComposeFarm, build_images, compose_farm, docker_engine, wait_for

pytestmark = [pytest.mark.compose, pytest.mark.timeout(2400)]

PROJECT = "pvsd-e2e"
SERVERS = ("pvs1", "pvs2", "pvs3")
TARGET_MAC = "52:54:00:c0:ff:01"
KNOWN_MAC = "52:54:00:c0:ff:02"  # registered on the demo vDisk too; booted by `target copy`
SERVER_LIST = "10.88.0.11,10.88.0.12,10.88.0.13"
PASS_RE = re.compile(r"PVSD-DEMO: pass (\d+) read ([0-9a-f]{64}) write (\w+)")
IO_ERROR_RE = re.compile(r"I/O error|blk_update_request|EXT4-fs error")
ATTACHED_RE = re.compile(r'pvsd-init: vDisk attached: .*"server": "(pvs\d)"')


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeFarm]:
    needs.root("docker")
    if not Path("/dev/net/tun").exists():
        needs.unavailable("the target VM needs /dev/net/tun")
    logs = tmp_path_factory.mktemp("compose")
    with docker_engine(logs / "dockerd.log"):
        started = time.monotonic()
        build_images(logs / "images.log")
        print(f"compose: images built in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        with compose_farm(PROJECT) as farm:
            print(f"compose: up -d in {time.monotonic() - started:.0f} s")
            yield farm


def passes(farm: ComposeFarm) -> list[tuple[int, str, str]]:
    return [(int(n), read, written) for n, read, written in PASS_RE.findall(farm.logs("target"))]


def wait_for_passes(farm: ComposeFarm, what: str, more: int, timeout: float = 240) -> None:
    """`more` passes of the demo OS beyond those seen so far, each read and write right."""
    seen = len(passes(farm))
    wait_for(what, lambda: len(passes(farm)) >= seen + more, timeout)


def check_console(farm: ComposeFarm, payload: str) -> None:
    console = farm.logs("target")
    wrong = [p for p in passes(farm) if p[1] != payload or p[2] != "ok"]
    assert wrong == [], console[-4000:]
    assert not IO_ERROR_RE.search(console), console[-4000:]


def serving(farm: ComposeFarm) -> str:
    """The server the VM's agent streams from now: its last attach or failover."""
    console = farm.logs("target")
    found = [m.group(1) for m in ATTACHED_RE.finditer(console)]
    found += re.findall(r"failed over .*to_server=(pvs\d)", console)
    if not found:
        raise ComposeError("the agent never attached the vDisk:\n" + console[-3000:])
    return found[-1]


def test_the_compose_farm_boots_fails_over_and_rides_out_a_database_outage(farm: ComposeFarm) -> None:
    # Three servers alive; the demo vDisk pvs1 imported is verified on all three (replication).
    def alive() -> bool:
        rows = farm.pvsd_json("pvs1", "server", "list")
        return sorted(str(r["name"]) for r in rows if r["state"] == "alive") == list(SERVERS)

    wait_for("three live servers", alive, timeout=120)

    def verified() -> bool:
        rows = farm.pvsd_json("pvs1", "vdisk", "replicas", "demo")
        return sorted(str(r["server"]) for r in rows if r["state"] == "verified") == list(SERVERS)

    seconds = wait_for("demo verified on all three servers", verified, timeout=300)
    print(f"compose: demo verified on all three after {seconds:.0f} s more")
    payload = json.loads(farm.read("pvs1", "/var/lib/pvsd/demo.img.expected.json"))["payload"]

    # The target VM boots the demo vDisk through the whole chain.
    started = time.monotonic()
    wait_for("the target VM's first pass", lambda: len(passes(farm)) >= 1, timeout=420)
    print(f"compose: the target VM ran its OS {time.monotonic() - started:.0f} s after the checks above")
    check_console(farm, payload)
    assert "pvsd: booting demo version 1 from pvs" in farm.logs("target")

    # docker kill the serving server: the VM keeps running, on another server.
    victim = serving(farm)
    farm.compose("kill", victim)
    wait_for_passes(farm, f"the VM to go on after {victim} was killed", more=3)
    check_console(farm, payload)
    assert re.search(f"failed over .*from_server={victim}", farm.logs("target")), farm.logs("target")[-3000:]
    live = [s for s in SERVERS if s != victim]

    # db stopped: the VM goes on, a known device boots, an admin command fails clearly.
    farm.compose("stop", "db")
    wait_for_passes(farm, "the VM to go on with db stopped", more=2)
    check_console(farm, payload)
    copied = farm.pvsd(
        live[0],
        "--log-level",
        "warning",
        "target",
        "copy",
        "--mac",
        KNOWN_MAC,
        "--servers",
        SERVER_LIST,
        "--out",
        "/dev/null",
        timeout=300,
    )
    assert copied.returncode == 0, copied.stdout + copied.stderr
    added = farm.pvsd(live[0], "device", "add", "52:54:00:c0:ff:09", "--name", "late", "--vdisk", "demo")
    assert added.returncode != 0
    assert "db:5432/pvsd" in added.stderr, added.stderr

    # db started: the outage's session reaches the audit log.
    farm.compose("start", "db")
    wait_for("db healthy again", lambda: farm.health("db") == "healthy", timeout=120)

    def audited() -> bool:
        try:
            entries = farm.pvsd_json(live[0], "farm", "audit", "--limit", "500")
        except ComposeError:
            return False
        return any(
            e["action"] == "session.open"
            and e["subject"] == KNOWN_MAC
            and '"offline": true' in str(e["detail"])
            for e in entries
        )

    wait_for("the outage's session in farm audit", audited, timeout=120)
    macs = {d["mac"] for d in farm.pvsd_json(live[0], "device", "list")}
    assert "52:54:00:c0:ff:09" not in macs
    wait_for_passes(farm, "the VM to go on with db back", more=1)
    check_console(farm, payload)

    # down -v leaves nothing behind.
    farm.down()
    assert farm.leftovers() == []
