"""Target agent benchmark: `pvsd target boot` (NBD in front of a 2-server pvsd farm) against
qemu-nbd serving the same raw image directly, both on loopback, plus the failover stall.

Run it from the checkout (as root, after `make .venv/.installed` and the Debian packages
fio, libnbd-bin and qemu-utils):

    make bench-target                          # the full run: a 512 MiB image
    .venv/bin/python bench/target.py --quick   # a smoke run: 64 MiB, 3 s fio runs, 2 kills
    .venv/bin/python bench/target.py --help

It generates one random raw image, imports it as a standard vDisk with the write cache on
the device, starts two `pvsd serve` (pvs1 on 127.0.0.21, pvs2 on 127.0.0.22, one stream
worker each, sharing one SQLite farm and store) and the target agent (`pvsd target boot`,
NBD export `vdisk` on a free port of 127.0.0.1), and measures with fio's nbd engine:

- sequential 1 MiB reads, iodepth 16, the whole disk (at most `--seconds`);
- 4 KiB random reads, iodepth 16, `--seconds`;
- 4 KiB random writes, iodepth 16, `--seconds` (they land in the agent's RAM write cache);

the same three jobs against `qemu-nbd -f raw` (default cache, i.e. the page cache) serving
the image file (read-only) and, for the writes, a copy of it. The agent runs at target MTU
1506 (PVS's default; servers' max_burst 32768) and, unless `--settings lan`, again at MTU
65535 with max_burst 262144.

Failover stall (MTU 1506 only): this script's own NBD client (stdlib socket, fixed newstyle,
NBD_OPT_GO) reads the export sequentially with 4-64 KiB requests, 4 in flight, comparing
every byte with the image and recording each completion's time. The serving server (the
agent's status file says which) is killed with SIGKILL (its whole process group, workers
too), reading goes on for 3 s after the first read completed after the kill, and the stall
is the longest gap between consecutive completions around the kill. The killed server is
restarted (same name and address) and waited for (alive, replica verified); `--kills` times
(5), so the agent fails over back and forth. Goal: median stall under 2 s and no lost or
corrupted byte.

It prints a table and the goal and writes every figure, the exact commands, the tool
versions and the date to bench/results/target-<timestamp>.json. Every process it starts runs
in a process group of its own and is stopped on exit, on failure and on Ctrl-C; the temp
folder is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import mmap
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    PVSD,
    RESULTS,
    BenchError,
    init_pvsd_farm,
    launch,
    log_tail,
    machine_info,
    print_machine,
    print_servers,
    progress,
    pvsd_other_services_off,
    raise_interrupt,
    report_header,
    run_in_temp,
    server_log_summary,
    stop_servers,
    write_json,
)

MIB = 1 << 20
MAC = "52:54:00:5c:00:01"
VDISK = "disk"
EXPORT = "vdisk"
NBD_HOST = "127.0.0.1"
SERVERS = {"pvs1": "127.0.0.21", "pvs2": "127.0.0.22"}
LOGIN_PORT = 6910
STREAM_PORTS = "6911-6912"

START_TIMEOUT = 90.0  # seconds for a server to be alive with a verified replica, or the agent to export
FAILOVER_TIMEOUT = 30.0  # seconds the reader waits for reads to resume after a kill
AFTER_RESUME_S = 3.0  # seconds the reader keeps reading once reads resumed after a kill
GOAL_STALL_S = 2.0

# The stall reader: request sizes (4 KiB multiples) and requests in flight.
READ_SIZES = (4096, 8192, 16384, 32768, 65536)
READER_DEPTH = 4
MAX_READER_READS = 20_000_000  # a bound on the reader's loop, whatever the clock says

NBD_MAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
NBD_OPT_GO = 7
NBD_REP_MAGIC = 0x3E889045565A9
NBD_REP_ACK = 1
NBD_REP_INFO = 3
NBD_INFO_EXPORT = 0
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_CMD_READ = 0
NBD_CMD_DISC = 2


@dataclass(frozen=True)
class Setting:
    key: str
    label: str
    mtu: int
    max_burst: int


LAN = Setting("lan", "MTU 1506", 1506, 32768)
LARGE = Setting("large", "MTU 65535, max_burst 262144", 65535, 262144)
SETTINGS = {s.key: s for s in (LAN, LARGE)}


@dataclass(frozen=True)
class Options:
    size: int
    seconds: float
    kills: int
    settings: tuple[Setting, ...]
    output: Path


@dataclass
class Server:
    name: str
    address: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None


class Running:
    """Every process of the run; leaving the context stops each process group."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_servers(self.servers)

    def start(self, server: Server, cwd: Path) -> None:
        launch(server, server.argv, cwd)
        if server not in self.servers:
            self.servers.append(server)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
    env.update(extra)
    return env


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_image(path: Path, size: int) -> None:
    with path.open("wb") as out:
        for offset in range(0, size, MIB):
            out.write(os.urandom(min(MIB, size - offset)))
    path.chmod(0o644)


# -- the farm ----------------------------------------------------------------------------------------


def pvsd_cli(env: dict[str, str], work: Path, *argv: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(PVSD), "--log-level", "warning", *argv],
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=work,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise BenchError(f"pvsd {' '.join(argv)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")


def setup_farm(work: Path, image: Path) -> dict[str, str]:
    (work / "store").mkdir()
    env = {
        "PVSD_FARM__DATABASE": init_pvsd_farm(work),
        "PVSD_SERVER__STORE": str(work / "store"),
        "PVSD_STREAM__CACHE_DIR": str(work / "cache"),
        "PVSD_FARM__HEARTBEAT_INTERVAL": "0.5",
        "PVSD_FARM__DEAD_AFTER": "3",
    }
    pvsd_cli(env, work, "vdisk", "import", VDISK, str(image), "--cache", "device", "--quiet")
    pvsd_cli(env, work, "device", "add", MAC, "--name", "t", "--vdisk", VDISK)
    return env


def server_env(farm_env: dict[str, str], setting: Setting) -> dict[str, str]:
    try:
        off = pvsd_other_services_off("stream")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"`pvsd config defaults` failed: {error}") from None
    off.pop("PVSD_LOGIN__ENABLED", None)
    return {
        **farm_env,
        **off,
        "PVSD_LOGIN__PORT": str(LOGIN_PORT),
        "PVSD_STREAM__PORTS": STREAM_PORTS,
        "PVSD_STREAM__WORKERS": "1",
        "PVSD_STREAM__MAX_BURST": str(setting.max_burst),
    }


def pvsd_server(work: Path, name: str, env: dict[str, str], incarnation: int) -> Server:
    argv = [str(PVSD), "--log-format", "json", "serve", "--name", name, "--address", SERVERS[name]]
    log = work / "logs" / f"{name}-{incarnation}.log"
    return Server(name, f"{SERVERS[name]}:{LOGIN_PORT}", argv, env, log)


def logged_serving(server: Server) -> bool:
    with contextlib.suppress(OSError):
        for line in server.log_path.read_text(errors="replace").splitlines():
            if '"serving"' in line:
                return True
    return False


def wait_farm(work: Path, env: dict[str, str], servers: list[Server]) -> float:
    """Until every server logged "serving", is alive in the farm and holds a verified replica."""
    started = time.monotonic()
    names = {s.name for s in servers}
    while time.monotonic() - started < START_TIMEOUT:
        for server in servers:
            if server.proc is not None and server.proc.poll() is not None:
                raise BenchError(f"{server.name} exited: {log_tail(server.log_path)}")
        if all(logged_serving(s) for s in servers):
            alive = {
                s["name"]
                for s in json.loads(pvsd_cli(env, work, "server", "list", "--json"))
                if s.get("state") == "alive"
            }
            replicas = json.loads(pvsd_cli(env, work, "vdisk", "replicas", "--json"))
            verified = {r["server"] for r in replicas if r.get("state") == "verified"}
            if names <= alive and names <= verified:
                return time.monotonic() - started
        time.sleep(0.2)
    raise BenchError(f"servers {sorted(names)} not alive and verified within {START_TIMEOUT:.0f} s")


def agent_server(work: Path, farm_env: dict[str, str], setting: Setting, port: int) -> Server:
    status = work / f"agent-{setting.key}.status.json"
    env = {
        **farm_env,
        "PVSD_TARGET__MTU": str(setting.mtu),
        "PVSD_TARGET__CACHE_RAM_MB": "1024",
        "PVSD_TARGET__CACHE_MAX_MB": "2048",
        "PVSD_TARGET__CACHE_DIR": str(work / "target"),
    }
    argv = [str(PVSD), "--log-format", "json", "target", "boot", "--mac", MAC]
    argv += ["--servers", ",".join(SERVERS.values()), "--nbd", f"{NBD_HOST}:{port}", "--status", str(status)]
    return Server(
        f"agent ({setting.key})", f"{NBD_HOST}:{port}", argv, env, work / "logs" / f"agent-{setting.key}.log"
    )


def status_path(agent: Server) -> Path:
    return Path(agent.argv[agent.argv.index("--status") + 1])


def read_status(agent: Server) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        status: dict[str, Any] = json.loads(status_path(agent).read_text())
        return status
    return {}


def wait_tcp(server: Server, host: str, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc is None or server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited: {log_tail(server.log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.1)
    raise BenchError(f"{server.name} did not accept connections on {host}:{port}")


# -- fio ---------------------------------------------------------------------------------------------

JOBS = (
    ("seq-read", "sequential read, 1 MiB, iodepth 16", "MB/s", "read", "1M"),
    ("rand-read", "4 KiB random read, iodepth 16", "IOPS", "randread", "4k"),
    ("rand-write", "4 KiB random write, iodepth 16", "IOPS", "randwrite", "4k"),
)


def fio_argv(uri: str, size: int, rw: str, bs: str, seconds: float) -> list[str]:
    argv = ["fio", f"--name={rw}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}"]
    argv += ["--iodepth=16", f"--size={size}", f"--runtime={seconds:g}", "--output-format=json"]
    if rw != "read":
        argv.append("--time_based")  # the sequential job reads the disk once, or stops at runtime
    return argv


def fio_run(argv: list[str], timeout: float) -> dict[str, Any]:
    """fio's figures for one job: value (MB/s or IOPS), latencies, or error."""
    try:
        done = subprocess.run(
            argv, capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"value": None, "error": f"timeout after {timeout:.0f} s"}
    out = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        lines = (done.stderr.decode(errors="replace") + out).strip().splitlines()
        return {"value": None, "error": f"exit {done.returncode}: {lines[-1][:300] if lines else ''}"}
    try:
        job = json.loads(out[out.index("{") :])["jobs"][0]
    except (ValueError, KeyError, IndexError) as error:
        return {"value": None, "error": f"unreadable fio output: {error}"}
    if job.get("error"):
        return {"value": None, "error": f"fio job error {job['error']}"}
    side = job["write"] if "--rw=randwrite" in argv else job["read"]
    pct = side.get("clat_ns", {}).get("percentile", {})
    return {
        "bw_mb_s": round(side["bw_bytes"] / 1e6, 1),
        "iops": round(side["iops"]),
        "io_bytes": side["io_bytes"],
        "runtime_ms": side["runtime"],
        "clat_p50_us": round(pct.get("50.000000", 0) / 1000, 1),
        "clat_p99_us": round(pct.get("99.000000", 0) / 1000, 1),
        "error": "",
    }


def fio_jobs(uri: str, write_uri: str, size: int, seconds: float) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for key, _, unit, rw, bs in JOBS:
        argv = fio_argv(write_uri if rw == "randwrite" else uri, size, rw, bs, seconds)
        result = fio_run(argv, seconds + 60)
        if not result["error"]:
            result["value"] = result["bw_mb_s"] if unit == "MB/s" else result["iops"]
        result["command"] = argv
        cells[key] = result
        shown = result["value"] if not result["error"] else result["error"]
        progress(f"  {key}: {shown} {unit if not result['error'] else ''}")
        time.sleep(0.5)
    return cells


# -- the stall reader: a small NBD client ------------------------------------------------------------


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise BenchError("NBD server closed the connection")
        got += k
    return bytes(buf)


def nbd_connect(host: str, port: int, export: str) -> tuple[socket.socket, int]:
    """Fixed newstyle handshake with NBD_OPT_GO; returns the socket and the export's size."""
    sock = socket.create_connection((host, port), timeout=10.0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = recv_exact(sock, 18)
    if head[:16] != NBD_MAGIC + IHAVEOPT:
        raise BenchError(f"not a newstyle NBD server: {head!r}")
    flags = struct.unpack(">H", head[16:])[0]
    sock.sendall(struct.pack(">I", 3 if flags & 2 else 1))  # FIXED_NEWSTYLE (+ NO_ZEROES)
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    sock.sendall(IHAVEOPT + struct.pack(">II", NBD_OPT_GO, len(data)) + data)
    size = -1
    for _ in range(100):  # replies to one option: INFO..., then ACK or an error
        magic, _option, reply, length = struct.unpack(">QIII", recv_exact(sock, 20))
        payload = recv_exact(sock, length) if length else b""
        if magic != NBD_REP_MAGIC:
            raise BenchError("bad NBD option reply magic")
        if reply == NBD_REP_INFO and struct.unpack(">H", payload[:2])[0] == NBD_INFO_EXPORT:
            size = struct.unpack(">Q", payload[2:10])[0]
        elif reply == NBD_REP_ACK:
            break
        elif reply & 0x80000000:
            raise BenchError(f"NBD_OPT_GO refused: {reply:#x} {payload!r}")
    if size < 0:
        raise BenchError("NBD server sent no export size")
    return sock, size


class StallReader(threading.Thread):
    """Reads the export sequentially (wrapping), READER_DEPTH requests in flight, and compares
    every reply with the image; records each completion's monotonic time."""

    def __init__(self, port: int, image: Path) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.image = image
        self.stop = threading.Event()
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.sent = 0
        self.mismatches: list[int] = []
        self.errors: list[str] = []

    def completions_since(self, t: float) -> list[float]:
        with self.lock:
            return [x for x in self.times[-50_000:] if x >= t]

    def run(self) -> None:
        try:
            self._run()
        except Exception as error:  # reported in the results, not lost in a thread
            self.errors.append(f"{type(error).__name__}: {error}")

    def _run(self) -> None:
        rng = random.Random(1)
        sock, size = nbd_connect(NBD_HOST, self.port, EXPORT)
        sock.settimeout(FAILOVER_TIMEOUT + 30)
        with self.image.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as ref:
            if size != len(ref):
                raise BenchError(f"export is {size} bytes, the image {len(ref)}")
            offset = 0
            inflight: dict[int, tuple[int, int]] = {}
            handle = 0
            for _ in range(MAX_READER_READS):
                while len(inflight) < READER_DEPTH and not self.stop.is_set():
                    length = min(rng.choice(READ_SIZES), size - offset)
                    handle += 1
                    inflight[handle] = (offset, length)
                    sock.sendall(
                        struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, NBD_CMD_READ, handle, offset, length)
                    )
                    self.sent += 1
                    offset = (offset + length) % size
                if not inflight:
                    break
                magic, error, got = struct.unpack(">IIQ", recv_exact(sock, 16))
                if magic != NBD_SIMPLE_REPLY_MAGIC or got not in inflight:
                    raise BenchError(f"bad NBD reply (magic {magic:#x}, handle {got})")
                where, length = inflight.pop(got)
                if error:
                    self.errors.append(f"read at {where}: NBD error {error}")
                    continue
                data = recv_exact(sock, length)
                now = time.monotonic()
                if data != ref[where : where + length]:
                    self.mismatches.append(where)
                with self.lock:
                    self.times.append(now)
                self.reads += 1
                self.bytes += length
            with contextlib.suppress(OSError):
                sock.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, NBD_CMD_DISC, 0, 0, 0))
            sock.close()


def kill_group(server: Server) -> None:
    assert server.proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(10)
    server.exit_code = server.proc.returncode
    server.proc = None


def measure_failovers(
    running: Running,
    work: Path,
    farm_env: dict[str, str],
    servers: dict[str, Server],
    agent: Server,
    port: int,
    image: Path,
    kills: int,
) -> dict[str, Any]:
    reader = StallReader(port, image)
    reader.start()
    events: list[dict[str, Any]] = []
    incarnation = {name: 0 for name in servers}
    try:
        deadline = time.monotonic() + 10
        while reader.reads < 200 and time.monotonic() < deadline and not reader.errors:
            time.sleep(0.05)
        for k in range(kills):
            if reader.errors or not reader.is_alive():
                break
            time.sleep(1.0)  # steady reading before the kill
            serving = read_status(agent).get("server", "")
            if serving not in servers:
                raise BenchError(f"the agent's status names no known server: {serving!r}")
            killed_at = time.monotonic()
            kill_group(servers[serving])
            # Read on until reads resumed and AFTER_RESUME_S more passed (bounded).
            resumed: float | None = None
            end = killed_at + FAILOVER_TIMEOUT
            while time.monotonic() < end and reader.is_alive():
                after = reader.completions_since(killed_at)
                if after and resumed is None:
                    resumed = after[0]
                    end = min(end, max(resumed, killed_at) + AFTER_RESUME_S)
                time.sleep(0.05)
            window = reader.completions_since(killed_at - 1.0)
            gaps = [b - a for a, b in itertools.pairwise(window) if b >= killed_at]
            stall = max(gaps) if gaps and resumed is not None else None
            before = [b - a for a, b in itertools.pairwise(window) if b < killed_at]
            first = (resumed - killed_at) if resumed is not None else None
            progress(
                f"  kill {k + 1}: {serving} killed, longest gap "
                f"{'none (reads did not resume)' if stall is None else f'{stall:.3f} s'}"
            )
            # The agent's own figure (its status is rewritten every 2 s).
            agent_stall = None
            wait_until = time.monotonic() + 6
            while time.monotonic() < wait_until:
                failovers = read_status(agent).get("failovers", [])
                if len(failovers) > len(events):
                    agent_stall = failovers[-1]
                    break
                time.sleep(0.2)
            events.append(
                {
                    "killed": serving,
                    "stall_s": None if stall is None else round(stall, 4),
                    "first_read_after_kill_s": None if first is None else round(first, 4),
                    "longest_gap_in_the_second_before_s": round(max(before), 4) if before else None,
                    "agent_failover": agent_stall,
                }
            )
            # Restart the killed server and wait for it to be alive and verified again.
            incarnation[serving] += 1
            fresh = pvsd_server(work, serving, servers[serving].env, incarnation[serving])
            servers[serving] = fresh
            running.start(fresh, work)
            waited = wait_farm(work, farm_env, list(servers.values()))
            events[-1]["restart_ready_s"] = round(waited, 2)
        time.sleep(0.5)
    finally:
        reader.stop.set()
        reader.join(FAILOVER_TIMEOUT + 40)
    stalls = [e["stall_s"] for e in events if e["stall_s"] is not None]
    lost = reader.sent - reader.reads if not reader.is_alive() else None
    return {
        "events": events,
        "stalls_s": stalls,
        "median_stall_s": round(statistics.median(stalls), 4) if stalls else None,
        "kills": len(events),
        "reads": reader.reads,
        "bytes_read": reader.bytes,
        "requests_sent": reader.sent,
        "requests_unanswered": lost,
        "mismatches": len(reader.mismatches),
        "mismatch_offsets": reader.mismatches[:20],
        "errors": reader.errors[:20],
        "method": (
            f"own NBD client (stdlib socket, NBD_OPT_GO), sequential reads of {READ_SIZES[0]}-"
            f"{READ_SIZES[-1]} bytes, {READER_DEPTH} in flight, every byte compared with the image; "
            "stall = longest gap between consecutive completions after the SIGKILL"
        ),
    }


# -- the run -----------------------------------------------------------------------------------------


def run(options: Options, work: Path, report: dict[str, Any]) -> None:
    (work / "logs").mkdir()
    image = work / "disk.raw"
    progress(f"generating a {options.size // MIB} MiB random image")
    make_image(image, options.size)
    report["image_bytes"] = options.size
    farm_env = setup_farm(work, image)
    with Running() as running:
        # qemu-nbd: the image (read-only) for reads, a copy of it for writes; default cache.
        copy = work / "disk-copy.raw"
        shutil.copyfile(image, copy)
        peer: dict[str, Any] = {}
        uris = []
        for name, path, extra in (("qemu-nbd", image, ["--read-only"]), ("qemu-nbd-rw", copy, [])):
            port = free_tcp_port(NBD_HOST)
            argv = ["qemu-nbd", "-f", "raw", "-b", NBD_HOST, "-p", str(port), "-x", EXPORT]
            argv += ["--persistent", "-e", "8", *extra, str(path)]
            server = Server(name, f"{NBD_HOST}:{port}", argv, {}, work / "logs" / f"{name}.log")
            running.start(server, work)
            wait_tcp(server, NBD_HOST, port)
            uris.append(f"nbd://{NBD_HOST}:{port}/{EXPORT}")
        progress("qemu-nbd: fio jobs")
        peer = fio_jobs(uris[0], uris[1], options.size, options.seconds)
        report["qemu_nbd"] = peer
        report["servers"] = {}
        for server in list(running.servers):
            stop_servers([server])
            report["servers"][server.name] = describe(server)
        running.servers.clear()

        report["agent"] = {}
        for setting in options.settings:
            progress(f"pvsd farm and agent, {setting.label}")
            env = server_env(farm_env, setting)
            servers = {name: pvsd_server(work, f"{name}", env, 0) for name in SERVERS}
            for server in servers.values():
                server.log_path = work / "logs" / f"{server.name}-{setting.key}-0.log"
                running.start(server, work)
            wait_farm(work, farm_env, list(servers.values()))
            port = free_tcp_port(NBD_HOST)
            agent = agent_server(work, farm_env, setting, port)
            running.start(agent, work)
            wait_tcp(agent, NBD_HOST, port)
            uri = f"nbd://{NBD_HOST}:{port}/{EXPORT}"
            cells = fio_jobs(uri, uri, options.size, options.seconds)
            result: dict[str, Any] = {"setting": setting.__dict__, "fio": cells}
            # The random writes changed the agent's view of the disk: reads of the stall test
            # compare with the image, so the failovers run on a fresh agent (empty cache).
            if setting is LAN and options.kills:
                stop_servers([agent])
                report["servers"][agent.log_path.stem] = describe(agent)
                agent.log_path = work / "logs" / f"agent-{setting.key}-failover.log"
                status_path(agent).unlink(missing_ok=True)
                running.start(agent, work)
                wait_tcp(agent, NBD_HOST, port)
                progress(f"failover stall: {options.kills} kills")
                result["failover"] = measure_failovers(
                    running, work, farm_env, servers, agent, port, image, options.kills
                )
            stop_servers([agent])
            result["agent_final_status"] = read_status(agent)
            for server in list(running.servers):
                stop_servers([server])
                report["servers"][server.log_path.stem] = describe(server)
            running.servers.clear()
            report["agent"][setting.key] = result
            time.sleep(1.0)


def describe(server: Server) -> dict[str, Any]:
    env = {k: v for k, v in server.env.items() if k.startswith("PVSD_") and "DATABASE" not in k}
    name = "pvsd" if server.argv[0] == str(PVSD) else server.name
    return {
        "address": server.address,
        "command": server.argv,
        "env": env,
        "log": server_log_summary(name, server.log_path, server.exit_code),
    }


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_report(report: dict[str, Any], output: Path) -> None:
    print("\n| measurement | unit | agent | qemu-nbd | agent/qemu-nbd |")
    print("|---|---|---|---|---|")
    rows = []
    for key, label, unit, _, _ in JOBS:
        peer = report["qemu_nbd"][key]
        for setting_key, result in report["agent"].items():
            cell = result["fio"][key]
            a, b = cell.get("value"), peer.get("value")
            shown = a if a is not None else f"failed: {cell['error']}"
            rows.append(
                {
                    "measurement": f"{label}, {SETTINGS[setting_key].label}",
                    "unit": unit,
                    "agent": a,
                    "qemu_nbd": b,
                    "ratio": round(a / b, 3) if a and b else None,
                }
            )
            print(f"| {label}, {SETTINGS[setting_key].label} | {unit} | {shown} | {b} | {ratio(a, b)} |")
    report["table"] = rows
    failover = report["agent"].get("lan", {}).get("failover")
    if failover:
        stalls = ", ".join(f"{s:.3f}" for s in failover["stalls_s"])
        agent_stalls = ", ".join(
            str((e["agent_failover"] or {}).get("stall_s", "?")) for e in failover["events"]
        )
        median = failover["median_stall_s"]
        clean = (
            failover["mismatches"] == 0
            and not failover["errors"]
            and failover["requests_unanswered"] == 0
            and len(failover["stalls_s"]) == failover["kills"]
        )
        met = median is not None and median < GOAL_STALL_S and clean
        report["goal"] = {
            "text": f"median stall under {GOAL_STALL_S:g} s and no lost or corrupted byte",
            "met": met,
        }
        print(
            f"\nFailover stall ({failover['kills']} kills): {stalls} s; median "
            f"{median if median is None else f'{median:.3f}'} s; the agent's own stall_s: {agent_stalls}"
        )
        print(
            f"Reader: {failover['reads']} reads, {failover['bytes_read'] / 1e6:.0f} MB, "
            f"{failover['mismatches']} corrupted, {failover['requests_unanswered']} unanswered, "
            f"errors: {failover['errors'] or 'none'}"
        )
        print(f"Goal: {report['goal']['text']}: {'MET' if met else 'MISSED'}")
    print_servers(report["servers"], clean_exits=(0, None, -9, -15, 143))
    print_machine(report["machine"], output)


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image size in MiB (default 512)")
    parser.add_argument("--seconds", type=float, default=10.0, help="fio runtime per job (default 10)")
    parser.add_argument("--kills", type=int, default=5, help="server kills for the stall (default 5)")
    parser.add_argument("--settings", default="lan,large", help="agent settings: lan, large or both")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 3 s fio runs, 2 kills, lan only")
    parser.add_argument(
        "--output", type=Path, help="the JSON file (default bench/results/target-<time>.json)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.seconds, args.kills, args.settings = 64, 3.0, 2, "lan"
    keys = [k.strip() for k in args.settings.split(",") if k.strip()]
    if not keys or any(k not in SETTINGS for k in keys) or not 1 <= args.size <= 8192:
        parser.error("--settings takes lan and/or large; --size 1..8192")
    if not 1 <= args.seconds <= 120 or not 0 <= args.kills <= 20:
        parser.error("--seconds 1..120, --kills 0..20")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(
        size=args.size * MIB,
        seconds=args.seconds,
        kills=args.kills,
        settings=tuple(SETTINGS[k] for k in keys),
        output=args.output or RESULTS / f"target-{stamp}.json",
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
    for tool in ("fio", "qemu-nbd"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install fio qemu-utils)", file=sys.stderr)
            return 1
    started = time.time()
    machine = machine_info(
        {
            "pvsd": [str(PVSD), "--version"],
            "fio": ["fio", "--version"],
            "qemu-nbd": ["qemu-nbd", "--version"],
        }
    )
    report: dict[str, Any] = {}
    failed = run_in_temp("pvsd-bench-target-", lambda folder: run(options, folder, report))
    if failed is not None:
        return failed
    full = report_header("target", False, started, machine)
    full["options"] = {
        "size": options.size,
        "fio_seconds": options.seconds,
        "kills": options.kills,
        "settings": [s.key for s in options.settings],
        "qemu_nbd_cache": "default (writeback, through the page cache)",
    }
    full.update(report)
    print_report(full, options.output)
    write_json(options.output, full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
