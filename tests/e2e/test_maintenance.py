"""The maintenance workflow with a real OS, as PVS has it, on three servers with their own stores.

A Linux guest (QEMU, Debian's kernel) boots each time through the host agent (`pvsd target
boot`), as one of three devices: maintenance, test or production. The maintenance device boots
version 2 (made with `vdisk version new` on pvs1) read-write, writes a file into it and powers
off. After `promote 2 test` the test device sees the file and the production device does not.
After `promote 2 production` the version is pending while pvs3 (stopped with SIGSTOP) lacks it,
and the production device still boots version 1; once pvs3 has pulled it, the production
device's next boot sees the file.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from support import guest
from support.agent import agent
from support.net import free_port
from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, wait_for

HOSTS = {"pvs1": "127.0.0.61", "pvs2": "127.0.0.62", "pvs3": "127.0.0.63"}
DEVICES = {
    "maintenance": "52:54:00:00:0a:01",
    "test": "52:54:00:00:0a:02",
    "production": "52:54:00:00:0a:03",
}
NOTE = "written in maintenance"

pytestmark = pytest.mark.timeout(900)

# The guest's /init.sh: say what it finds, and with `pvsd.write` on its command line write it.
_INIT_SH = """#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo "GUEST-INIT: root is the streamed vDisk"
echo "SEEN: $(cat /data/note 2>/dev/null || echo nothing)"
if grep -q pvsd.write /proc/cmdline; then
    echo "{note}" > /data/note
    echo "WROTE the note"
fi
sync
{stop_writes}echo "{done}"
poweroff -f
"""


def _env(tmp_path: Path, name: str) -> dict[str, str]:
    return pvsd_env(
        f"sqlite:///{tmp_path}/farm.db",
        server__name=name,
        server__store=str(tmp_path / f"store-{name}"),
        stream__cache_dir=str(tmp_path / f"cache-{name}"),
        stream__workers="1",
        login__enabled="true",
        stream__enabled="true",
        api__enabled="true",
        api__port=str(free_port(HOSTS[name], socket.SOCK_STREAM)),
        tftp__enabled="false",
        replication__enabled="true",
        replication__interval_s="0.5",
        farm__heartbeat_interval="0.5",
        farm__dead_after="3",
        target__failover_after="3",
    )


def _ok(env: dict[str, str], *argv: str) -> str:
    done = pvsd(env, *argv, timeout=120)
    assert done.returncode == 0, f"pvsd {' '.join(argv)}: {done.stderr}"
    return done.stdout


def _holders(env: dict[str, str], version: int) -> set[str]:
    rows: list[dict[str, Any]] = json.loads(_ok(env, "vdisk", "versions", "lab", "--json"))
    return set(next(r for r in rows if r["number"] == version)["servers"])


def _version(env: dict[str, str], number: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = json.loads(_ok(env, "vdisk", "versions", "lab", "--json"))
    return next(r for r in rows if r["number"] == number)


def _boot(env: dict[str, str], folder: Path, kind: str, write: bool = False) -> str:
    """Boot the guest as the device of this kind; what it said it saw."""
    port = free_port()
    servers = ",".join(HOSTS.values())
    with agent(env, folder, "--servers", servers, "--nbd", f"127.0.0.1:{port}", mac=DEVICES[kind]):
        run = guest.boot_guest(
            f"file=nbd://127.0.0.1:{port}/vdisk", timeout=240, append="pvsd.write" if write else ""
        )
    (folder / "console.txt").write_text(run.console)
    assert run.done, run.console[-3000:]
    assert run.io_errors == [], run.console[-3000:]
    seen = [line for line in run.console.splitlines() if line.startswith("SEEN: ")]
    assert seen, run.console[-3000:]
    return seen[-1].removeprefix("SEEN: ").strip()


def test_maintenance_test_production_with_a_real_os(tmp_path: Path) -> None:
    guest.require_guest_tools()
    script = _INIT_SH.format(
        note=NOTE, stop_writes=guest.STOP_WRITES_SH.format(fail=guest.FAIL_MARKER), done=guest.DONE_MARKER
    )
    image = guest.build_rootfs(
        tmp_path / "root.img", size=96 << 20, payload_size=24 << 20, init_sh=script
    ).path
    envs = {name: _env(tmp_path, name) for name in HOSTS}
    pvs1 = envs["pvs1"]
    _ok(pvs1, "farm", "init", "--name", "lab")
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServeProcess] = {
            name: stack.enter_context(serve(envs[name], name, HOSTS[name], tmp_path)) for name in HOSTS
        }
        for process in servers.values():
            wait_for(lambda p=process: any(e["event"] == "serving" for e in p.log_events()), timeout=30)
        _ok(pvs1, "vdisk", "import", "lab", str(image), "--no-boot", "--quiet")
        for kind, mac in DEVICES.items():
            _ok(pvs1, "device", "add", mac, "--name", kind, "--vdisk", "lab", "--type", kind)
        wait_for(lambda: _holders(pvs1, 1) == set(HOSTS), timeout=120)

        assert "version 2: maintenance" in _ok(pvs1, "vdisk", "version", "new", "lab")
        assert _boot(pvs1, tmp_path / "boot-maintenance", "maintenance", write=True) == "nothing"
        # The agent logged out: the write lock ended with its session. The note is in version 2.
        assert _boot(pvs1, tmp_path / "boot-production-0", "production") == "nothing"

        servers["pvs3"].signal(signal.SIGSTOP)  # pvs3 stops pulling: the version stays pending
        try:
            _ok(pvs1, "vdisk", "promote", "lab", "2", "test")
            wait_for(lambda: _holders(pvs1, 2) == {"pvs1", "pvs2"}, timeout=120)
            assert _boot(pvs1, tmp_path / "boot-test", "test") == NOTE
            assert _boot(pvs1, tmp_path / "boot-production-1", "production") == "nothing"

            promoted = _ok(pvs1, "vdisk", "promote", "lab", "2", "production")
            assert "pending until every server holds it" in promoted
            assert _version(pvs1, 2)["pending"] is True
            assert _boot(pvs1, tmp_path / "boot-production-2", "production") == "nothing"
        finally:
            servers["pvs3"].signal(signal.SIGCONT)
        wait_for(lambda: _holders(pvs1, 2) == set(HOSTS), timeout=120)
        assert _version(pvs1, 2)["pending"] is False
        assert _boot(pvs1, tmp_path / "boot-production-3", "production") == NOTE
        for process in servers.values():
            assert "Traceback" not in process.log_text()
