"""A real OS boots from a streamed vDisk: QEMU's NBD client -> the target agent -> pvsd streaming.

Two pvsd servers on loopback share one farm and one store; the agent (`pvsd target boot`)
logs in and exports the vDisk over NBD; QEMU boots Debian's kernel with an initramfs that
mounts that disk as root. The guest prints checksums of what it read and wrote.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.agent import agent
from support.guest import (
    BiosRun,
    GuestRun,
    boot_bios,
    boot_guest,
    build_boot_sector_disk,
    build_rootfs,
    require_guest_tools,
)
from support.net import free_port
from support.pvsd import pvsd, pvsd_env, wait_for
from support.stream import StreamFarm, stream_farm

from pvsd.lab.lab import Lab

MAC = "52:54:00:00:00:00"

pytestmark = pytest.mark.timeout(300)


def streaming_agent(farm: StreamFarm, folder: Path, port: int, *extra: str) -> Any:
    return agent(farm.env, folder, "--servers", farm.servers_arg(), "--nbd", f"127.0.0.1:{port}", *extra)


# The kill test keeps both sides' view of every NBD request: the agent's "nbd reply" debug lines
# (cookie, command, range, flags, times, errno) and QEMU's nbd_* trace events, matched by cookie.
# QEMU's virtio-blk completions (status 0 is success) and the guest's device status writes (0 is a
# reset) tell an error QEMU gave the guest from one the guest's own kernel made up.
TRACE_AGENT = ("--log-level", "debug")
QEMU_EVENTS = ("nbd_*", "virtio_blk_req_complete", "virtio_set_status")


def qemu_trace(folder: Path) -> tuple[str, ...]:
    trace = folder / "qemu-trace.log"
    enable = [arg for event in QEMU_EVENTS for arg in ("-trace", event)]
    # -msg timestamp=on stamps each event with the wall clock, as the agent's JSON lines are.
    return (*enable, "-trace", f"file={trace}", "-msg", "timestamp=on")


def agent_story(folder: Path, run: GuestRun) -> str:
    """What to look at when the guest saw an I/O error: the agent's warnings and errors (any
    NBD refusal or failure), the end of the guest's console, and where the full traces are."""
    lines = (folder / "agent.log").read_text().splitlines()
    notable = [line for line in lines if '"level": "warning"' in line or '"level": "error"' in line]
    notable += [line for line in lines if "nbd request" in line or "nbd connection" in line]
    return (
        "agent log:\n"
        + "\n".join(notable[-40:])
        + "\nguest console:\n"
        + run.console[-3000:]
        + f"\nevery request: {folder / 'agent.log'} (nbd reply) and {folder / 'qemu-trace.log'}"
    )


def read_status(path: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(path.read_text())
    return status


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require_guest_tools()
    return build_rootfs(tmp_path_factory.mktemp("guest") / "root.img")


def test_a_linux_guest_boots_from_a_streamed_vdisk(tmp_path: Path, rootfs: Any) -> None:
    with stream_farm(tmp_path, image=rootfs.path, cache="device") as farm:
        farm.start("pvs1")
        farm.start("pvs2")
        farm.wait_verified("disk")
        port = free_port()
        with streaming_agent(farm, tmp_path, port) as (process, status):
            run = boot_guest(f"file=nbd://127.0.0.1:{port}/vdisk", timeout=180)
            assert run.done, run.console[-3000:]
            assert run.payload_sha256 == rootfs.payload_sha256
            assert run.written_sha256 == rootfs.expected_write_sha256
            assert run.io_errors == []
            shown = pvsd(farm.env, "target", "status", "--mac", MAC, "--status", str(status))
            assert shown.returncode == 0 and "standard, cache on the device" in shown.stdout, shown
            assert "cache" in shown.stdout and "server    pvs" in shown.stdout
        assert process.returncode == 0, (tmp_path / "agent.log").read_text()
        final = read_status(status)  # written once more as the agent stopped
        assert final["bytes_read"] > 64 << 20 and final["bytes_written"] >= 16 << 20
        assert final["cache"]["used_bytes"] >= 16 << 20
        # standard mode, device cache: the guest's writes never reached the image
        assert farm.image.read_bytes() == rootfs.path.read_bytes()
        events = [
            json.loads(line)
            for line in (tmp_path / "agent.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert any(e["event"] == "stopping: logging out and closing NBD" for e in events)


def test_the_guest_survives_the_serving_server_being_killed_mid_read(tmp_path: Path, rootfs: Any) -> None:
    with stream_farm(tmp_path, image=rootfs.path, cache="device") as farm:
        farm.start("pvs1")
        farm.start("pvs2")
        farm.wait_verified("disk")
        port = free_port()
        with streaming_agent(farm, tmp_path, port, *TRACE_AGENT) as (_, status):
            result: list[GuestRun] = []
            guest = threading.Thread(
                target=lambda: result.append(
                    boot_guest(f"file=nbd://127.0.0.1:{port}/vdisk", timeout=180, extra=qemu_trace(tmp_path))
                )
            )
            guest.start()
            # kill the serving server once the guest is well into the 64 MiB file
            wait_for(lambda: read_status(status)["bytes_read"] > 24 << 20, timeout=120, interval=0.05)
            serving = read_status(status)["server"]
            killed_at = time.monotonic()
            farm.processes[serving].signal(signal.SIGKILL)
            guest.join(200)
            finished_after = time.monotonic() - killed_at
            assert result, "the guest did not finish"
            run = result[0]
            (tmp_path / "guest.console").write_text(run.console)
            assert run.done, run.console[-3000:]
            assert run.payload_sha256 == rootfs.payload_sha256
            assert run.written_sha256 == rootfs.expected_write_sha256
            assert run.io_errors == [], agent_story(tmp_path, run)
        failovers = read_status(status)["failovers"]  # the final status, written as the agent stopped
        assert failovers and failovers[0]["from"] == serving, failovers
        stall = failovers[0]["stall_s"]
        print(f"killed {serving} {finished_after:.1f} s before the guest finished; stall {stall} s")
        assert stall > 0  # reported; its length is measured in bench/target.py, not asserted here


def test_the_bios_reads_its_boot_sector_and_sectors_through_the_stream(tmp_path: Path) -> None:
    require_guest_tools(bios=True)
    disk = build_boot_sector_disk(tmp_path / "bios.img", sectors=384)
    with stream_farm(tmp_path, image=disk.path, cache="device") as farm:
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        port = free_port()
        with streaming_agent(farm, tmp_path, port):
            run: BiosRun = boot_bios(f"file=nbd://127.0.0.1:{port}/vdisk", timeout=60)
        assert run.done, run.console[-2000:]
        assert run.checksum == disk.expected_checksum


def test_the_full_chain_in_the_lab(tmp_path: Path, rootfs: Any) -> None:
    """The agent in a target namespace: PXE DISCOVER -> proxy offer -> pvs.bootstrap by TFTP ->
    login -> NBD; QEMU in the same namespace boots the guest through it."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():
        pytest.fail("the lab needs root and /dev/net/tun")
    lab = Lab(tmp_path / "lab", say=print)
    try:
        lab.up(servers=2)
        env = pvsd_env(lab.database, server__store=str(lab.state / "store"))
        for argv in (
            ("vdisk", "import", "disk", str(rootfs.path), "--cache", "device", "--no-boot", "--quiet"),
            ("device", "add", MAC, "--name", "vm1", "--vdisk", "disk"),
        ):
            result = pvsd(env, *argv)
            assert result.returncode == 0, result.stderr

        def verified() -> bool:
            replicas = json.loads(pvsd(env, "vdisk", "replicas", "--json").stdout)
            return len([r for r in replicas if r["state"] == "verified"]) == 2

        wait_for(verified, timeout=30)  # the servers scan their store every 10 s
        target = lab.add_target(MAC)
        how = ("--dhcp", target.interface, "--nbd", "127.0.0.1:10809")
        with agent(env, tmp_path, *how, namespace=target.namespace):
            run = boot_guest("file=nbd://127.0.0.1:10809/vdisk", timeout=180, namespace=target.namespace)
        assert run.done, run.console[-3000:]
        assert run.payload_sha256 == rootfs.payload_sha256
        assert run.written_sha256 == rootfs.expected_write_sha256
        assert run.io_errors == []
        events = [
            json.loads(line)
            for line in (tmp_path / "agent.log").read_text().splitlines()
            if line.startswith("{")
        ]
        offer = next(e for e in events if e["event"] == "proxy offer")
        assert offer["server"].startswith("10.77.0.1")
        assert any(e["event"] == "logged in" for e in events)
    finally:
        lab.down(keep_state=True)
