"""Login burst benchmark: how long one fresh login takes when 1,000 targets log in at once, and
how many farm-store transactions each login costs.

Run it from the checkout (as root, after `make .venv/.installed` and Debian's `postgresql`):

    make bench-login                                   # 1,000 LOGINs at once
    .venv/bin/python bench/login.py --logins 200       # a smaller burst
    .venv/bin/python bench/login.py --source DIR       # another checkout's pvsd (an older commit)

It starts a throwaway PostgreSQL server (Debian's binaries, as the tests do), creates a farm
with one 1 MiB vDisk and `--logins` devices, and starts one `pvsd serve` on 127.0.0.31 with only
the login and stream services (one I/O worker). Once the server is alive with its replica
verified, one UDP socket sends a fresh, padded LOGIN for every device as fast as it can, and
retransmits an unanswered one on the target client's schedule (0.83 s, 1.67 s, 2.5 s, then
again, for at most 15 s), as real targets do.

Measured per login: the time from its first LOGIN to its answer (median, 95th percentile,
maximum), the attempts it took, and how it was answered. The store's cost is PostgreSQL's own
count of committed transactions in the farm database (pg_stat_database.xact_commit) over the
burst, less what the server commits when idle over as long a time (heartbeats, scans), divided
by the logins granted.

It prints a table and writes the figures, the commands and the machine to
bench/results/login-<timestamp>.json. Every process it starts is stopped on exit, on failure
and on Ctrl-C; the temp folder is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    REPO,
    RESULTS,
    BenchError,
    launch,
    log_tail,
    machine_info,
    print_machine,
    progress,
    raise_interrupt,
    report_header,
    run_in_temp,
    server_log_summary,
    stop_servers,
    write_json,
)

sys.path.insert(0, str(REPO / "tests"))
from support.postgres import Cluster, postgres_cluster

ADDRESS = "127.0.0.31"
LOGIN_PORT = 6910
STREAM_PORTS = "6911-6911"
VDISK = "disk"
START_TIMEOUT = 60.0
GIVE_UP_S = 15.0  # a target's three rounds of three attempts
RETRANSMIT_AFTER = (0.833, 1.667, 2.5)  # the client's per-attempt waits (login_timeout 5 s)
IDLE_WINDOW_S = 12.0  # long enough for PostgreSQL's backends to flush their statistics
MAX_LOGINS = 10_000

# The login wire format (docs/protocol.md): header magic, version, type, flags, request id, session.
HEADER = struct.Struct("!HBBHIQ")
MAGIC, VERSION, LOGIN, LOGIN_REPLY, ERROR = 0x5056, 1, 1, 2, 4
PADDED_LOGIN = 512


@dataclass
class Server:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None


@dataclass
class Attempted:
    mac: str
    request_id: int
    first_sent: float = 0.0
    last_sent: float = 0.0
    attempts: int = 0
    answered: float | None = None
    kind: str = ""


@dataclass
class Options:
    logins: int
    source: Path
    output: Path


@dataclass
class Burst:
    logins: list[Attempted] = field(default_factory=list)
    seconds: float = 0.0


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=1000, help="LOGINs in the burst (1000)")
    parser.add_argument("--source", type=Path, default=REPO, help="the checkout whose pvsd to run (this one)")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--output", type=Path, default=RESULTS / f"login-{stamp}.json")
    args = parser.parse_args(argv)
    if not 1 <= args.logins <= MAX_LOGINS:
        parser.error(f"--logins must be within 1-{MAX_LOGINS}")
    return Options(args.logins, args.source.resolve(), args.output)


def mac_of(index: int) -> str:
    return "52:54:01:" + ":".join(f"{b:02x}" for b in index.to_bytes(3, "big"))


PVSD_COMMAND = [sys.executable, "-m", "pvsd"]  # with PYTHONPATH naming the measured checkout


def source_commit(source: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, timeout=10, check=False
    )
    return done.stdout.decode().strip() or "unknown"


def source_env(source: Path, database: str, work: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": str(source),
        "PVSD_FARM__DATABASE": database,
        "PVSD_SERVER__NAME": "pvs1",
        "PVSD_SERVER__ADDRESS": ADDRESS,
        "PVSD_SERVER__STORE": str(work / "store"),
        "PVSD_STREAM__CACHE_DIR": str(work / "cache"),
        "PVSD_STREAM__PORTS": STREAM_PORTS,
        "PVSD_STREAM__WORKERS": "1",
        "PVSD_LOGIN__PORT": str(LOGIN_PORT),
        "PVSD_TFTP__ENABLED": "false",
        "PVSD_DHCP__ENABLED": "false",
        "PVSD_LOG__LEVEL": "warning",
    }


def run_pvsd(env: dict[str, str], work: Path, *argv: str) -> str:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")} | env
    done = subprocess.run(
        [*PVSD_COMMAND, *argv],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=work,
        env=full,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise BenchError(f"pvsd {' '.join(argv)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


# Runs inside the measured checkout (PYTHONPATH), so it uses only the store API both old and new have.
ADD_DEVICES = """
import sys
from pvsd.farm.store import open_store
store = open_store(sys.argv[1], "bench")
for index in range(int(sys.argv[2])):
    mac = "52:54:01:" + ":".join(f"{b:02x}" for b in index.to_bytes(3, "big"))
    store.add_device(mac, f"t{index}", vdisk="disk")
"""


def prepare(options: Options, env: dict[str, str], work: Path) -> None:
    run_pvsd(env, work, "farm", "init", "--name", "bench")
    image = work / "disk.raw"
    image.write_bytes(os.urandom(1 << 20))
    run_pvsd(env, work, "vdisk", "import", VDISK, str(image), "--cache", "device", "--quiet")
    full = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")} | env
    subprocess.run(
        [sys.executable, "-c", ADD_DEVICES, env["PVSD_FARM__DATABASE"], str(options.logins)],
        check=True,
        timeout=600,
        cwd=work,
        env=full,
        stdin=subprocess.DEVNULL,
    )


def wait_ready(env: dict[str, str], work: Path, server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise BenchError(f"pvsd serve exited: {log_tail(server.log_path)}")
        replicas = run_pvsd(env, work, "vdisk", "replicas")
        if "verified" in replicas:
            return
        time.sleep(0.5)
    raise BenchError(f"pvsd serve not ready within {START_TIMEOUT:g} s: {log_tail(server.log_path)}")


def committed(cluster: Cluster, database: str) -> int:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as connection:
        row = connection.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def login_datagram(mac: str, request_id: int) -> bytes:
    body = bytes.fromhex(mac.replace(":", "")) + struct.pack("!HH", 1464, 0)
    datagram = HEADER.pack(MAGIC, VERSION, LOGIN, 0, request_id, 0) + body
    return datagram + bytes(PADDED_LOGIN - len(datagram))


def burst(count: int) -> Burst:
    """Every LOGIN at once from one socket; retransmit the unanswered on the client's schedule."""
    logins = [Attempted(mac_of(index), index + 1) for index in range(count)]
    by_id = {login.request_id: login for login in logins}
    pending = set(by_id)
    waits = [*RETRANSMIT_AFTER] * 3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.01)
        started = time.monotonic()
        for login in logins:
            with contextlib.suppress(BlockingIOError):
                sock.sendto(login_datagram(login.mac, login.request_id), (ADDRESS, LOGIN_PORT))
            login.first_sent = login.last_sent = time.monotonic()
            login.attempts = 1
        while pending and time.monotonic() - started < GIVE_UP_S + 1:
            with contextlib.suppress(TimeoutError):
                data = sock.recv(65536)
                if len(data) >= HEADER.size:
                    magic, _, kind, _, request_id, _ = HEADER.unpack_from(data)
                    login_or_none = by_id.get(request_id)
                    if magic == MAGIC and login_or_none is not None and login_or_none.answered is None:
                        login_or_none.answered = time.monotonic()
                        login_or_none.kind = (
                            "granted"
                            if kind == LOGIN_REPLY
                            else f"error {struct.unpack_from('!H', data, HEADER.size)[0]}"
                            if kind == ERROR
                            else f"type {kind}"
                        )
                        pending.discard(request_id)
            now = time.monotonic()
            for request_id in list(pending):
                login = by_id[request_id]
                if login.attempts > len(waits) or now - login.first_sent > GIVE_UP_S:
                    pending.discard(request_id)
                elif now - login.last_sent >= waits[login.attempts - 1]:
                    sock.sendto(login_datagram(login.mac, request_id), (ADDRESS, LOGIN_PORT))
                    login.last_sent = now
                    login.attempts += 1
        finished = max((login.answered or 0.0 for login in logins), default=started)
    return Burst(logins, finished - started)


def run(options: Options, work: Path, report: dict[str, Any]) -> None:
    progress("starting a throwaway PostgreSQL server")
    with postgres_cluster() as cluster:
        database = cluster.create_database("farm")
        env = source_env(options.source, database, work)
        progress(f"creating the farm: one vDisk, {options.logins} devices")
        prepare(options, env, work)
        server = Server("pvsd", env, work / "pvsd.log")
        argv = [*PVSD_COMMAND, "--log-format", "json", "serve"]
        try:
            launch(server, argv, work)
            wait_ready(env, work, server)
            progress(f"server ready; measuring {IDLE_WINDOW_S:g} s of idle transactions")
            idle_before = committed(cluster, "farm")
            time.sleep(IDLE_WINDOW_S)
            idle = committed(cluster, "farm") - idle_before
            progress(f"sending {options.logins} LOGINs at once")
            before = committed(cluster, "farm")
            measured = time.monotonic()
            result = burst(options.logins)
            time.sleep(IDLE_WINDOW_S)  # the server's backend reports its statistics within this
            window = time.monotonic() - measured
            during = committed(cluster, "farm") - before
        finally:
            stop_servers([server])
        report["server"] = {
            "command": argv,
            "env": {k: v for k, v in env.items() if k != "PVSD_FARM__DATABASE"},
            "log": server_log_summary("pvsd", server.log_path, server.exit_code),
        }
    answered = [login for login in result.logins if login.answered is not None]
    latencies = sorted((login.answered or 0.0) - login.first_sent for login in answered)
    granted = sum(login.kind == "granted" for login in answered)
    background = idle / IDLE_WINDOW_S * window
    report["burst"] = {
        "logins": options.logins,
        "answered": len(answered),
        "granted": granted,
        "answers": dict(Counter(login.kind for login in answered)),
        "unanswered": options.logins - len(answered),
        "attempts": dict(Counter(login.attempts for login in result.logins)),
        "burst_s": round(result.seconds, 3),
        "latency_s": {
            "median": round(statistics.median(latencies), 4) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 4) if latencies else None,
            "max": round(latencies[-1], 4) if latencies else None,
        },
        "transactions": {
            "during_burst_window": during,
            "idle_in_window": round(background, 1),
            "per_granted_login": round((during - background) / granted, 2) if granted else None,
        },
    }


def print_report(report: dict[str, Any], output: Path) -> None:
    burst_info = report["burst"]
    latency = burst_info["latency_s"]
    source = report["source"]
    print(
        f"\nLogin burst: {burst_info['logins']} fresh LOGINs at once to one pvsd "
        f"(source {source['path']} at {source['commit'][:10]})"
    )

    print(f"{'answered':<28}{burst_info['answered']} ({burst_info['answers']})")
    print(f"{'unanswered after 15 s':<28}{burst_info['unanswered']}")
    print(f"{'attempts per login':<28}{burst_info['attempts']}")
    print(f"{'whole burst answered in':<28}{burst_info['burst_s']} s")
    print(f"{'one login, median':<28}{latency['median']} s")
    print(f"{'one login, 95th percentile':<28}{latency['p95']} s")
    print(f"{'one login, slowest':<28}{latency['max']} s")
    print(f"{'store transactions / login':<28}{burst_info['transactions']['per_granted_login']}")
    problems = report["server"]["log"].get("warnings_and_errors")
    if problems:
        print(f"server log warnings/errors: {problems}")
    print_machine(report["machine"], output)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
    started = time.time()
    machine = machine_info({"postgres": ["psql", "--version"]})
    report: dict[str, Any] = {}
    failed = run_in_temp("pvsd-bench-login-", lambda folder: run(options, folder, report))
    if failed is not None:
        return failed
    full = report_header("login", False, started, machine)
    full["source"] = {"path": str(options.source), "commit": source_commit(options.source)}
    full.update(report)
    print_report(full, options.output)
    write_json(options.output, full)
    return 0


if __name__ == "__main__":
    sys.exit(main())
