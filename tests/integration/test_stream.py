"""Login and streaming on loopback: two real `pvsd serve` processes, one farm, one store, real targets.

Targets are `pvsd target copy` processes (and, for many at once, the client library in this
process); refusals are checked with hand-made datagrams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support.lossy_relay import lossy_relay
from support.pvsd import pvsd, wait_for
from support.stream import SERVERS, StreamFarm, stream_farm

from pvsd.config import TargetConfig
from pvsd.log import get_logger
from pvsd.stream.wire import (
    ErrorCode,
    ErrorReply,
    Keepalive,
    Login,
    LoginReply,
    Read,
    Write,
    WriteAck,
    decode,
    encode,
)
from pvsd.target.client import StreamClient
from pvsd.vdisk.replicas import SCAN_INTERVAL_S

MAC = "52:54:00:00:00:00"


def copy(farm: StreamFarm, out: Path, mac: str = MAC, servers: str | None = None) -> dict[str, Any]:
    result = json.loads(
        farm.run(
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
    )
    assert isinstance(result, dict)
    return result


def start_both(farm: StreamFarm) -> None:
    farm.start("pvs1")
    farm.start("pvs2")
    farm.wait_verified("disk")


def test_copy_matches_and_the_session_is_recorded(tmp_path: Path) -> None:
    with stream_farm(tmp_path, tftp__enabled="true", tftp__root=str(tmp_path)) as farm:
        start_both(farm)
        # The target finds the servers the way a booted target does: pvs.bootstrap over TFTP.
        result = json.loads(
            farm.run(
                "target",
                "copy",
                "--mac",
                MAC,
                "--bootstrap",
                "tftp://127.0.0.12/pvs.bootstrap",
                "--out",
                str(tmp_path / "copy.raw"),
                "--json",
            )
        )
        assert result["sha256"] == farm.sha256
        assert hashlib.sha256((tmp_path / "copy.raw").read_bytes()).hexdigest() == farm.sha256
        events = [e for p in farm.processes.values() for e in p.log_events()]
        assert any(e["event"] == "login granted" and e.get("mac") == MAC for e in events)

        # The session was recorded while it lasted; the target's logout ended it.
        def audit() -> list[str]:
            entries = json.loads(farm.run("farm", "audit", "--json"))
            return [e["action"] for e in reversed(entries) if e["subject"] == MAC]

        wait_for(lambda: "session.close" in audit(), timeout=10)
        assert audit()[-2:] == ["session.open", "session.close"]
        assert farm.sessions() == []


def test_twenty_targets_copy_at_once(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=16 << 20) as farm:
        macs = [f"52:54:00:00:01:{i:02x}" for i in range(20)]
        for index, mac in enumerate(macs):
            farm.run("device", "add", mac, "--name", f"many{index}", "--vdisk", "disk")
        start_both(farm)

        async def one(mac: str) -> str:
            client = StreamClient(
                mac, list(zip(SERVERS.values(), [6910] * 2, strict=True)), TargetConfig(), get_logger("t")
            )
            await client.connect()
            digest = hashlib.sha256()
            try:
                for offset in range(0, client.disk_size, 1 << 20):
                    digest.update(await client.read(offset, 1 << 20))
            finally:
                await client.close()
            return digest.hexdigest()

        async def everyone() -> list[str]:
            return await asyncio.gather(*(one(mac) for mac in macs))

        digests = asyncio.run(asyncio.wait_for(everyone(), 120))
        assert digests == [farm.sha256] * 20
        per_server = {name: 0 for name in SERVERS}
        for process in farm.processes.values():
            for event in process.log_events():
                if event["event"] == "login granted":
                    per_server[event["serving"]] += 1
        assert all(count >= 5 for count in per_server.values()), per_server  # both servers took a share


def copy_killing_the_server(
    farm: StreamFarm, out: Path, before_kill: Any = None
) -> tuple[dict[str, Any], str, str]:
    """`pvsd target copy` (paced, so that the kill lands mid-copy) while the serving server is
    SIGKILLed once the copy is under way; `before_kill()` runs just before the kill. Returns the
    copy's JSON result, its log and the killed server's name."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvsd",
            "--log-format",
            "json",
            "target",
            "copy",
            "--mac",
            MAC,
            "--servers",
            farm.servers_arg(),
            "--out",
            str(out),
            "--json",
            "--rate",
            "16M",
        ],
        env={**farm.env, "PVSD_TARGET__MTU": "1506"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: bool(farm.sessions()) and out.exists() and out.stat().st_size > 0,
            timeout=30,
            interval=0.05,
        )
        serving = str(farm.sessions()[0]["server"])
        if before_kill is not None:
            before_kill()
        farm.processes[serving].signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    return json.loads(stdout), stderr, serving


def test_sigkill_of_the_serving_server_mid_copy(tmp_path: Path) -> None:
    with stream_farm(tmp_path) as farm:
        start_both(farm)
        result, log, serving = copy_killing_the_server(farm, tmp_path / "copy.raw")
        assert result["sha256"] == farm.sha256
        assert result["failovers"], "the copy should report its failover"
        failover = result["failovers"][0]
        assert failover["from"] == serving and failover["to"] != serving
        assert failover["stall_s"] > 0  # reported; how long it is, bench/target.py measures
        assert "failed over" in log


def _ask(sock: socket.socket, data: bytes, address: tuple[str, int]) -> tuple[Any, Any]:
    sock.sendto(data, address)
    reply, _ = sock.recvfrom(65536)
    assert len(reply) <= max(len(data), 1 << 16)
    return decode(reply)


def _login(sock: socket.socket, mac: str, ticket: bytes = b"") -> tuple[Any, Any]:
    return _ask(sock, encode(Login(mac, 1400, ticket, 0 if ticket else 600), 7), ("127.0.0.11", 6910))


def test_reads_without_a_valid_ticket_are_refused(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.run("device", "add", "52:54:00:00:00:01", "--name", "other", "--vdisk", "disk")
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            header, reply = _login(sock, MAC)
            assert isinstance(reply, LoginReply), reply
            io = (str(reply.io_address), reply.io_port)

            # no ticket, no session: a READ names a session nobody attached
            _, refusal = _ask(sock, encode(Read(0, 4096), 1, header.session), io)
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.UNKNOWN_SESSION

            # a forged ticket: one byte of the claims changed
            forged = bytearray(reply.ticket)
            forged[20] ^= 1
            _, refusal = _ask(sock, encode(Login(MAC, 1400, bytes(forged)), 2, header.session), io)
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.TICKET_TAMPERED

            # another device's ticket
            _, other = _login(sock, "52:54:00:00:00:01")
            assert isinstance(other, LoginReply)
            _, refusal = _ask(sock, encode(Login(MAC, 1400, other.ticket), 3, header.session), io)
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.TICKET_OTHER_DEVICE
            _, refusal = _login(sock, MAC, other.ticket)
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.TICKET_OTHER_DEVICE

            # a small unpadded login gets no large reply
            _, refusal = _ask(sock, encode(Login(MAC, 1400), 4), ("127.0.0.11", 6910))
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.BAD_REQUEST

            # the real ticket works
            _, attached = _ask(sock, encode(Login(MAC, 1400, reply.ticket), 5, header.session), io)
            assert isinstance(attached, Keepalive)
            _, data = _ask(sock, encode(Read(0, 512), 6, header.session), io)
            assert data.payload == farm.image.read_bytes()[:512]
        refused = {e["code"] for e in farm.processes["pvs1"].log_events() if e["event"] == "attach refused"}
        assert {"TICKET_TAMPERED", "TICKET_OTHER_DEVICE"} <= refused, refused


def test_a_4096_byte_sector_vdisk_keeps_its_geometry_through_a_failover(tmp_path: Path) -> None:
    """The server a target fails over to never saw a fresh login of this vDisk: the geometry it
    announces comes from the ticket, not from a memory of earlier logins."""
    with stream_farm(tmp_path, size=1 << 20, sector_size=4096) as farm:
        start_both(farm)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            header, reply = _login(sock, MAC)
            assert isinstance(reply, LoginReply) and reply.sector_size == 4096
            farm.processes["pvs1"].signal(signal.SIGKILL)
            _, resumed = _ask(sock, encode(Login(MAC, 1400, reply.ticket), 8), ("127.0.0.12", 6910))
            assert isinstance(resumed, LoginReply), resumed
            assert (resumed.sector_size, resumed.disk_size) == (4096, 1 << 20)
            assert str(resumed.io_address) == "127.0.0.12"
            io = (str(resumed.io_address), resumed.io_port)
            _, attached = _ask(sock, encode(Login(MAC, 1400, resumed.ticket), 9, header.session), io)
            assert isinstance(attached, Keepalive)
            _, data = _ask(sock, encode(Read(4096, 4096), 10, header.session), io)
            assert data.payload[:1400] == farm.image.read_bytes()[4096 : 4096 + 1400]


def test_login_refusals_have_their_own_codes(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.run("device", "add", "52:54:00:00:00:02", "--name", "off", "--vdisk", "disk", "--disabled")
        farm.run("device", "add", "52:54:00:00:00:03", "--name", "nodisk")
        farm.run("vdisk", "create", "empty", "--size", "1M")
        farm.run("device", "add", "52:54:00:00:00:04", "--name", "unimaged", "--vdisk", "empty")
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        expected = {
            "52:54:00:00:00:99": ErrorCode.UNKNOWN_MAC,
            "52:54:00:00:00:02": ErrorCode.DEVICE_DISABLED,
            "52:54:00:00:00:03": ErrorCode.NO_VDISK,
            "52:54:00:00:00:04": ErrorCode.NO_SERVER,
        }
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for mac, code in expected.items():
                _, reply = _login(sock, mac)
                assert isinstance(reply, ErrorReply) and reply.code == code, (mac, reply)
        refused = [e for e in farm.processes["pvs1"].log_events() if e["event"] == "login refused"]
        assert {e["code"] for e in refused} == {code.name for code in expected.values()}


def test_server_cache_reads_back_and_is_wiped_at_the_next_fresh_login(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=4 << 20) as farm:
        start_both(farm)
        test = json.loads(
            farm.run(
                "target",
                "write-test",
                "--mac",
                MAC,
                "--servers",
                farm.servers_arg(),
                "--offset",
                "1M",
                "--size",
                "256K",
                "--json",
            )
        )
        assert test["match"] is True
        # A fresh login starts with an empty cache: the disk reads as the image again.
        assert copy(farm, tmp_path / "after.raw")["sha256"] == farm.sha256


def test_device_cache_refuses_writes(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.run(
            "vdisk", "import", "ro", str(farm.image), "--no-boot", "--quiet"
        )  # --cache device, the default
        farm.run("device", "set", MAC, "--vdisk", "ro")
        farm.start("pvs1")
        farm.wait_verified("ro", ("pvs1",))
        outcome = pvsd(
            farm.env, "target", "write-test", "--mac", MAC, "--servers", "127.0.0.11", "--size", "4K"
        )
        assert outcome.returncode != 0 and "READ_ONLY" in outcome.stderr


def test_private_writes_survive_a_restart_and_a_duplicate_is_applied_once(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.run("vdisk", "import", "mine", str(farm.image), "--mode", "private", "--no-boot", "--quiet")
        farm.run("device", "set", MAC, "--vdisk", "mine")
        farm.run("device", "add", "52:54:00:00:00:05", "--name", "second", "--vdisk", "mine")
        farm.start("pvs1")
        farm.wait_verified("mine", ("pvs1",))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            header, reply = _login(sock, MAC)
            assert isinstance(reply, LoginReply) and reply.private
            io = (str(reply.io_address), reply.io_port)
            session = header.session
            _, attached = _ask(sock, encode(Login(MAC, 1400, reply.ticket), 1, session), io)
            assert isinstance(attached, Keepalive)
            first, second = b"A" * 512, b"B" * 512
            _, ack = _ask(sock, encode(Write(5, 4096, first), 2, session), io)
            assert ack == WriteAck(5)
            _, ack = _ask(sock, encode(Write(5, 4096, second), 3, session), io)  # same sequence: not applied
            assert ack == WriteAck(5)
            _, ack = _ask(sock, encode(Write(6, 8192, second), 4, session), io)
            assert ack == WriteAck(6)
            # a second private login of another device is refused while this one is live
            _, refusal = _login(sock, "52:54:00:00:00:05")
            assert isinstance(refusal, ErrorReply) and refusal.code == ErrorCode.PRIVATE_IN_USE
        farm.processes["pvs1"].signal(signal.SIGTERM)
        assert farm.processes["pvs1"].wait() == 0
        farm.start("pvs1")
        farm.wait_verified("mine", ("pvs1",))
        out = tmp_path / "after.raw"
        copy(farm, out, servers="127.0.0.11")
        data = out.read_bytes()
        original = farm.image.read_bytes()
        assert data[4096:4608] == first and data[8192:8704] == second
        assert data[:4096] == original[:4096] and data[8704:] == original[8704:]


def test_random_datagrams_do_not_stop_the_services(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=2 << 20) as farm:
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        rng = random.Random(5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for index in range(3000):
                size = rng.choice((0, 1, 17, 18, 19, 30, 64, 600, 1400))
                data = bytearray(rng.randbytes(size))
                if size >= 18 and index % 2:
                    data[0:3] = b"PV\x01"  # a valid magic and version, so the body parsers run too
                    data[3] = rng.randrange(0, 14)
                port = rng.choice((6910, 6911, 6912))
                try:
                    sock.sendto(bytes(data), ("127.0.0.11", port))
                except BlockingIOError:
                    time.sleep(0.01)
        assert copy(farm, tmp_path / "after.raw", servers="127.0.0.11")["sha256"] == farm.sha256
        assert farm.processes["pvs1"].process.poll() is None


def test_a_copy_survives_five_percent_loss(tmp_path: Path) -> None:
    """Through a relay that drops 5% of datagrams both ways (this kernel has no tc netem)."""
    with stream_farm(tmp_path, size=8 << 20) as farm:
        start_both(farm)
        routes = {"127.0.0.21": "127.0.0.11", "127.0.0.22": "127.0.0.12"}
        with lossy_relay(routes, (6910, 6911, 6912), loss=0.05) as relay:
            result = copy(farm, tmp_path / "copy.raw", servers="127.0.0.21,127.0.0.22")
        assert result["sha256"] == farm.sha256
        assert relay.dropped > 0 and result["retransmits"] > 0


def test_a_ticket_login_needs_no_database(tmp_path: Path, pg_cluster: Any) -> None:
    """PostgreSQL stops, then the serving server dies: the target moves to the other server
    with its ticket and finishes its copy."""
    database = pg_cluster.create_database(f"farm_stream_{os.getpid()}")
    with stream_farm(tmp_path, database=database) as farm:
        start_both(farm)
        try:
            result, _, serving = copy_killing_the_server(
                farm, tmp_path / "copy.raw", before_kill=pg_cluster.stop
            )
        finally:
            pg_cluster.start()
        assert result["sha256"] == farm.sha256 and result["failovers"]
        other = next(name for name in SERVERS if name != serving)
        events = [e["event"] for e in farm.processes[other].log_events()]
        assert "login resumed with a ticket" in events


def test_copy_checks_its_output_before_logging_in_and_writes_to_stdout_for_a_dash(tmp_path: Path) -> None:
    with stream_farm(tmp_path, size=1 << 20) as farm:
        farm.start("pvs1")
        farm.wait_verified("disk", ("pvs1",))
        where = ["target", "copy", "--mac", MAC, "--servers", "127.0.0.11"]
        missing = pvsd(farm.env, *where, "--out", str(tmp_path / "missing" / "disk.raw"))
        assert missing.returncode == 2 and "--out: cannot write" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr
        assert not [e for e in farm.processes["pvs1"].log_events() if e["event"] == "login granted"]
        to_stdout = subprocess.run(
            [sys.executable, "-m", "pvsd", *where, "--out", "-", "--json"],
            env=farm.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert to_stdout.returncode == 0, to_stdout.stderr
        assert hashlib.sha256(to_stdout.stdout).hexdigest() == farm.sha256
        assert json.loads(to_stdout.stderr.decode().splitlines()[-1])["sha256"] == farm.sha256


def test_an_image_imported_while_servers_run_is_known_within_seconds(tmp_path: Path) -> None:
    """Not at the next full scan (10 s): the servers watch their store's folders."""
    with stream_farm(tmp_path, size=1 << 20) as farm:
        start_both(farm)
        second = tmp_path / "second.raw"
        second.write_bytes(os.urandom(1 << 20))
        # imported by a host that is no farm server, so no replica is reported by the import itself
        result = pvsd(
            {**farm.env, "PVSD_SERVER__NAME": "workstation"},
            "vdisk",
            "import",
            "two",
            str(second),
            "--no-boot",
        )
        assert result.returncode == 0, result.stderr
        farm.run("device", "add", "52:54:00:00:00:22", "--name", "t2", "--vdisk", "two")
        farm.wait_verified("two", timeout=SCAN_INTERVAL_S / 2)  # before any full scan could come
        out = copy(farm, tmp_path / "two.out", mac="52:54:00:00:00:22")
        assert out["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()


def test_a_ticket_for_a_removed_vdisk_is_refused_not_served_from_a_stray_image(tmp_path: Path) -> None:
    """The other server used to resume it, saying "the farm store did not answer"."""
    with stream_farm(tmp_path, size=1 << 20) as farm:
        start_both(farm)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            _, reply = _login(sock, MAC)
            assert isinstance(reply, LoginReply)
            farm.run("device", "set", MAC, "--no-vdisk")
            refused_remove = pvsd(farm.env, "vdisk", "remove", "disk")
            assert refused_remove.returncode == 2 and "streamed by t0" in refused_remove.stderr
            assert "1 session(s) ended" in farm.run("vdisk", "remove", "disk", "--force")
            _, refused = _ask(sock, encode(Login(MAC, 1400, reply.ticket), 8), ("127.0.0.12", 6910))
            assert isinstance(refused, ErrorReply) and refused.code == ErrorCode.VDISK_REMOVED, refused


def test_a_vdisk_streamed_now_is_removed_only_with_force_and_its_target_stops_saying_why(
    tmp_path: Path,
) -> None:
    """`device set --no-vdisk` plus `vdisk remove` succeeded without a word while the device
    streamed; the serving server went silent and the other one streamed a vDisk the farm lost."""
    with stream_farm(tmp_path, size=8 << 20) as farm:
        start_both(farm)
        argv = ["target", "copy", "--mac", MAC, "--servers", farm.servers_arg(), "--out", "/dev/null"]
        copying = subprocess.Popen(
            [sys.executable, "-m", "pvsd", *argv, "--rate", "1M"],
            env=farm.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: len(farm.sessions()) == 1, timeout=20)
            farm.run("device", "set", MAC, "--no-vdisk")
            refused = pvsd(farm.env, "vdisk", "remove", "disk")
            assert refused.returncode == 2 and "streamed by t0" in refused.stderr, refused.stderr
            assert "1 session(s) ended" in farm.run("vdisk", "remove", "disk", "--force")
            _, err = copying.communicate(timeout=60)
        finally:
            if copying.poll() is None:
                copying.kill()
                copying.wait()
        assert copying.returncode != 0
        assert "VDISK_REMOVED" in err, err[-3000:]
        ended = [
            e
            for p in farm.processes.values()
            for e in p.log_events()
            if e["event"].startswith("sessions ended")
        ]
        assert ended, "the serving server did not drop the session"
