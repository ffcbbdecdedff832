"""Proxy DHCP benchmark: pvsd against dnsmasq in proxy mode, both loaded by perfdhcp, on 127.0.0.0/8.

Run it from the checkout as root (it makes network namespaces and binds port 67), after
`make .venv/.installed` and the Debian packages kea-admin (perfdhcp), dnsmasq-base, iproute2:

    .venv/bin/python bench/dhcp.py           # the full run: about 2 minutes
    .venv/bin/python bench/dhcp.py --quick   # a smoke run: about 20 s
    .venv/bin/python bench/dhcp.py --help

The load is perfdhcp (ISC Kea) sending DISCOVERs of a BIOS PXE client (option 60
`PXEClient:Arch:00000:UNDI:002001`, option 93 = 0) from 100,000 MACs (taken in turn),
DISCOVER-OFFER only (`-i`). It measures, for each server:

- offers per second at fixed offered rates (`-r`), with the loss and p50/p99 latency;
- offers per second with perfdhcp sending as fast as it can (the best of the repeats);
- pvsd at dnsmasq's maximum rate: its loss and p99 there.

Latencies come from perfdhcp's per-exchange timestamps (`-x t`): DISCOVER sent to OFFER
received. Offers per second is offers received over the time from the first DISCOVER to the
last offer.

How the servers are reached. perfdhcp given a unicast server address acts as a relay: it sets
giaddr to its local address and listens on port 67 there, and relayed replies go to giaddr:67.
dnsmasq binds its DHCP socket to 0.0.0.0:67 (and 0.0.0.0:4011) whatever --listen-address
says, which perfdhcp's 127.x:67 socket (no SO_REUSEADDR) cannot share, and which must never
listen on the host's network. So each server runs in a network namespace of its own, joined
to perfdhcp's namespace by a veth pair carrying 127.2.N.0/24 (route_localnet = 1 in the
namespaces), and dnsmasq binds to that veth only (--interface, SO_BINDTODEVICE). Nothing
listens in the host's namespace and nothing leaves 127.0.0.0/8. pvsd gets the same topology.

It prints a table and writes the results, the machine, the versions and the exact commands to
bench/results/dhcp.json (dhcp-quick.json with --quick). Every process and namespace and the
temp folder are removed on exit, on failure and on Ctrl-C.

Goal: pvsd at least dnsmasq's offer rate, with p99 under 5 ms at that rate.

Both servers and perfdhcp share the machine's CPUs, so the maximum rates depend on how much
CPU perfdhcp takes; that is the same for both.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DNSMASQ,
    PVSD,
    RESULTS,
    BenchError,
    init_pvsd_farm,
    launch,
    log_tail,
    machine_info,
    no_interrupts,
    print_machine,
    print_servers,
    progress,
    pvsd_other_services_off,
    raise_interrupt,
    report_header,
    server_log_summary,
    stop_group,
    stop_servers,
    write_json,
)

VENDOR_CLASS = b"PXEClient:Arch:00000:UNDI:002001"  # BIOS iPXE (DESIGN.md section 5)
CLIENTS = 100_000  # distinct MACs perfdhcp takes in turn
SEED = 11
DROP_TIME_S = 2.0  # perfdhcp -d: an offer later than this counts as lost
EXIT_WAIT_US = 300_000  # perfdhcp -W: wait this long after the last DISCOVER
START_TIMEOUT = 20.0
PAUSE_BETWEEN_RUNS = 0.5  # let a server drain its socket before the next run
P99_GOAL_MS = 5.0
LOSS_GOAL = 0.01  # at dnsmasq's rate, at most 1% of the DISCOVERs may go unanswered
SERVERS = ("pvsd", "dnsmasq")
SUBNETS = {"pvsd": 1, "dnsmasq": 2}  # 127.2.N.0/24 between perfdhcp and the server


# -- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    quick: bool
    seconds: int
    rates: tuple[int, ...]
    repeats: int
    servers: tuple[str, ...]
    output: Path


@dataclass
class Run:
    """One perfdhcp run against one server."""

    rate: int | None  # offered DISCOVERs/s; None: as fast as perfdhcp can
    sent: int = 0
    received: int = 0
    offers_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    exit_code: int | None = None
    error: str = ""
    command: list[str] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return (self.sent - self.received) / self.sent if self.sent else 1.0


@dataclass
class Row:
    key: str
    label: str
    runs: dict[str, Run] = field(default_factory=dict)


# -- processes and namespaces -------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        ["ip", *args], capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL
    )
    if check and done.returncode != 0:
        raise BenchError(f"ip {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done


@dataclass
class Server:
    name: str
    namespace: str
    client_address: str  # perfdhcp's address: giaddr, where offers come back to port 67
    address: str  # the server's port 67
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # set on top of the benchmark's environment
    log_path: Path = Path(os.devnull)
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None


class Lab:
    """perfdhcp's namespace and one namespace per server, joined by veth pairs; leaving removes all."""

    def __init__(self, servers: Sequence[str]) -> None:
        tag = f"pvsdb{os.getpid()}"
        self.client = f"{tag}-perf"
        self.servers = {
            name: Server(
                name,
                f"{tag}-{name}",
                f"127.2.{SUBNETS[name]}.1",
                f"127.2.{SUBNETS[name]}.20",
            )
            for name in servers
        }
        self.namespaces: list[str] = []
        self.running: list[Server] = []

    def __enter__(self) -> Lab:
        try:
            self._add_namespace(self.client)
            for server in self.servers.values():
                self._add_namespace(server.namespace)
                peer = f"vp{SUBNETS[server.name]}"
                ip("-n", server.namespace, "link", "add", "vs", "type", "veth", "peer", "name", peer)
                ip("-n", server.namespace, "link", "set", peer, "netns", self.client)
                ip("-n", server.namespace, "addr", "add", f"{server.address}/24", "dev", "vs")
                ip("-n", self.client, "addr", "add", f"{server.client_address}/24", "dev", peer)
                ip("-n", server.namespace, "link", "set", "vs", "up")
                ip("-n", self.client, "link", "set", peer, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        # 127.0.0.0/8 addresses on a veth: route_localnet lets them be routed (per namespace).
        for key in ("all", "default"):
            self.exec_in(name, "sysctl", "-qw", f"net.ipv4.conf.{key}.route_localnet=1")

    def exec_in(self, namespace: str, *argv: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            capture_output=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0:
            raise BenchError(
                f"{' '.join(argv)} in {namespace}: {done.stderr.decode(errors='replace').strip()}"
            )

    def close(self) -> None:
        """Stop every server, then delete every namespace (later calls do nothing)."""
        with no_interrupts():
            self.stop_servers()
            for name in reversed(self.namespaces):
                ip("netns", "del", name, check=False)  # takes its veth ends with it
            self.namespaces.clear()

    def stop_servers(self) -> None:
        stop_servers(self.running)

    def start(self, server: Server, cwd: Path) -> None:
        launch(server, ["ip", "netns", "exec", server.namespace, *server.argv], cwd)
        self.running.append(server)
        self.wait_ready(server)

    def wait_ready(self, server: Server) -> None:
        """Until a short perfdhcp run gets an offer back."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert server.proc is not None
            if server.proc.poll() is not None:
                raise BenchError(
                    f"{server.name} exited with {server.proc.returncode}: {log_tail(server.log_path)}"
                )
            probe = perfdhcp(self, server, rate=20, seconds=1, clients=1000, timeout=10)
            if probe.received > 0:
                return
            time.sleep(0.2)
        raise BenchError(f"{server.name} gave no offer on {server.address}:67 within {START_TIMEOUT:.0f} s")


def perfdhcp_path() -> str | None:
    found = shutil.which("perfdhcp")
    if found:
        return found
    return next((p for p in ("/usr/sbin/perfdhcp", "/sbin/perfdhcp") if os.access(p, os.X_OK)), None)


# -- the servers --------------------------------------------------------------------------------------


def pvsd_server(lab: Lab, work: Path) -> Server:
    server = lab.servers["pvsd"]
    database = init_pvsd_farm(work)
    server.env = {
        **pvsd_other_services_off("dhcp"),
        "PVSD_FARM__DATABASE": database,
        "PVSD_SERVER__STORE": str(work / "store"),
        "PVSD_DHCP__ENABLED": "true",
        "PVSD_DHCP__BIND": server.address,
        "PVSD_DHCP__PORT": "67",
        "PVSD_DHCP__PXE_PORT": "4011",
        "PVSD_DHCP__PER_MAC_PER_SECOND": "1000000",  # the rate limit must not shape the figures
    }
    server.argv = [str(PVSD), "--log-format", "json", "--log-level", "warning"]
    server.argv += ["serve", "--name", "bench", "--address", server.address]
    server.log_path = work / "logs" / "pvsd.log"
    return server


def dnsmasq_server(lab: Lab, work: Path) -> Server:
    server = lab.servers["dnsmasq"]
    subnet = server.address.rsplit(".", 1)[0] + ".0"
    argv = [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root"]
    argv += ["--interface=vs", "--bind-interfaces"]  # 0.0.0.0%vs:67 inside its own namespace
    argv += [f"--dhcp-range={subnet},proxy,255.255.255.0", "--pxe-service=x86PC,PXE,undionly"]
    argv += [f"--pid-file={work / 'dnsmasq.pid'}", "--log-facility=-"]
    server.argv = argv
    server.log_path = work / "logs" / "dnsmasq.log"
    return server


SERVER_FACTORIES = {"pvsd": pvsd_server, "dnsmasq": dnsmasq_server}


# -- perfdhcp -----------------------------------------------------------------------------------------

TIMESTAMP = re.compile(rb"sent / received: ([\d.]+) / ([\d.]+)")


def perfdhcp_argv(lab: Lab, server: Server, rate: int | None, seconds: int, clients: int) -> list[str]:
    tool = perfdhcp_path() or "perfdhcp"
    argv = ["ip", "netns", "exec", lab.client, tool, "-4", "-l", server.client_address, "-i"]
    argv += ["-o", f"60,{VENDOR_CLASS.hex()}", "-o", "93,0000", "-R", str(clients), "-s", str(SEED)]
    argv += ["-p", str(seconds), "-d", f"{DROP_TIME_S:g}", "-W", str(EXIT_WAIT_US), "-x", "t"]
    if rate is not None:
        argv += ["-r", str(rate)]
    return [*argv, server.address]


def perfdhcp(
    lab: Lab, server: Server, rate: int | None, seconds: int, clients: int = CLIENTS, timeout: float = 60
) -> Run:
    argv = perfdhcp_argv(lab, server, rate, seconds, clients)
    run = Run(rate=rate, command=argv)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.error = f"perfdhcp timed out after {timeout:.0f} s"
        return run
    finally:
        with no_interrupts():
            if proc.poll() is None:
                stop_group(proc)
    run.exit_code = proc.returncode
    parse_perfdhcp(out, run)
    if proc.returncode not in (0, 3):  # 3: some exchanges did not complete, which is measured
        message = (err or out).decode(errors="replace").strip().splitlines()
        run.error = f"perfdhcp exit {proc.returncode}: {message[-1] if message else 'no message'}"
    return run


def parse_perfdhcp(output: bytes, run: Run) -> None:
    text = output.decode(errors="replace")
    for name, attr in (("sent packets", "sent"), ("received packets", "received")):
        found = re.search(rf"^{name}: (\d+)$", text, re.MULTILINE)
        if found:
            setattr(run, attr, int(found.group(1)))
    pairs = [(float(sent), float(received)) for sent, received in TIMESTAMP.findall(output)]
    if not pairs:
        return
    delays = sorted(received - sent for sent, received in pairs)
    span = max(received for _, received in pairs) - min(sent for sent, _ in pairs)
    run.offers_per_s = round(len(pairs) / span, 1) if span > 0 else 0.0
    run.p50_ms = round(percentile(delays, 0.50) * 1000, 3)
    run.p99_ms = round(percentile(delays, 0.99) * 1000, 3)
    run.max_ms = round(delays[-1] * 1000, 3)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank of sorted values."""
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


# -- the plan -----------------------------------------------------------------------------------------


def measure(lab: Lab, settings: Settings) -> list[Row]:
    rows: list[Row] = []
    servers = list(lab.running)
    for index, rate in enumerate(settings.rates):
        row = Row(f"rate-{rate}", f"{rate}/s offered")
        progress(f"measuring {row.label}")
        for server in rotated(servers, index):
            row.runs[server.name] = perfdhcp(lab, server, rate, settings.seconds)
            time.sleep(PAUSE_BETWEEN_RUNS)
        rows.append(row)
    best = Row("max", "as fast as perfdhcp sends")
    progress(f"measuring {best.label} (best of {settings.repeats})")
    for repeat in range(settings.repeats):
        for server in rotated(servers, repeat):
            run = perfdhcp(lab, server, None, settings.seconds)
            if server.name not in best.runs or run.offers_per_s > best.runs[server.name].offers_per_s:
                best.runs[server.name] = run
            time.sleep(PAUSE_BETWEEN_RUNS)
    rows.append(best)
    peer_max = best.runs.get("dnsmasq")
    if "pvsd" in lab.servers and peer_max is not None and peer_max.offers_per_s > 0:
        rate = int(peer_max.offers_per_s)
        at = Row("at-dnsmasq-max", f"{rate}/s offered (dnsmasq's max)")
        progress(f"measuring {at.label}")
        for server in servers:
            at.runs[server.name] = perfdhcp(lab, server, rate, settings.seconds)
            time.sleep(PAUSE_BETWEEN_RUNS)
        rows.append(at)
    return rows


def rotated(servers: list[Server], shift: int) -> list[Server]:
    """Each round starts with another server, so that neither always runs first."""
    shift %= max(1, len(servers))
    return servers[shift:] + servers[:shift]


def sustained(rows: list[Row]) -> dict[str, int | None]:
    """Per server, the highest offered rate answered with at most LOSS_GOAL lost and p99 under the goal."""
    best: dict[str, int | None] = {}
    for row in rows:
        for name, run in row.runs.items():
            best.setdefault(name, None)
            good = (
                not run.error
                and run.loss <= LOSS_GOAL
                and run.p99_ms is not None
                and run.p99_ms < P99_GOAL_MS
            )
            if run.rate is not None and good and run.rate > (best[name] or 0):
                best[name] = run.rate
    return best


def goals(rows: list[Row]) -> list[dict[str, Any]]:
    by_key = {row.key: row for row in rows}
    checks: list[dict[str, Any]] = []
    best = by_key.get("max")
    if best and "pvsd" in best.runs and "dnsmasq" in best.runs:
        ours, theirs = best.runs["pvsd"].offers_per_s, best.runs["dnsmasq"].offers_per_s
        checks.append(
            {
                "goal": "max offers/s: pvsd >= dnsmasq",
                "pvsd": ours,
                "dnsmasq": theirs,
                "ratio": round(ours / theirs, 2) if theirs else None,
                "met": bool(theirs) and ours >= theirs,
            }
        )
    at = by_key.get("at-dnsmasq-max")
    if at and "pvsd" in at.runs:
        run = at.runs["pvsd"]
        met = not run.error and run.loss <= LOSS_GOAL and run.p99_ms is not None and run.p99_ms < P99_GOAL_MS
        checks.append(
            {
                "goal": f"at dnsmasq's max rate ({run.rate}/s): pvsd loses <= {LOSS_GOAL:.0%}, "
                f"p99 < {P99_GOAL_MS:g} ms",
                "loss": round(run.loss, 4),
                "p99_ms": run.p99_ms,
                "met": met,
            }
        )
    return checks


# -- report -------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(rows: list[Row], settings: Settings) -> str:
    header = ["measurement"]
    for name in settings.servers:
        header += [f"{name} offers/s", "loss", "p50 ms", "p99 ms"]
    if len(settings.servers) == 2:
        header.append("pvsd/dnsmasq")
    lines = [header]
    for row in rows:
        line = [row.label]
        for name in settings.servers:
            run = row.runs.get(name)
            if run is None:
                line += ["-", "-", "-", "-"]
                continue
            rate = f"{run.offers_per_s:.0f}" + (" (!)" if run.error else "")
            line += [rate, f"{run.loss:.2%}", fmt(run.p50_ms), fmt(run.p99_ms)]
        if len(settings.servers) == 2:
            ours, theirs = row.runs.get("pvsd"), row.runs.get("dnsmasq")
            ok = ours is not None and theirs is not None and theirs.offers_per_s > 0
            line.append(f"{ours.offers_per_s / theirs.offers_per_s:.2f}x" if ok and ours and theirs else "-")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    text += [
        "",
        f"Each cell: one perfdhcp run of {settings.seconds} s, DISCOVER-OFFER, {CLIENTS} MACs in turn.",
        "offers/s: offers received / (last offer - first DISCOVER). loss: DISCOVERs without an offer",
        f"within {DROP_TIME_S:g} s. p50/p99: DISCOVER-to-OFFER latency of the answered ones.",
        "pvsd/dnsmasq: ratio of offers/s (>1: pvsd answered more). (!): see the notes.",
    ]
    return "\n".join(text)


def build_report(
    settings: Settings, machine: dict[str, Any], lab: Lab, rows: list[Row], started: float
) -> dict[str, Any]:
    return {
        **report_header("dhcp", settings.quick, started, machine),
        "settings": {
            "seconds": settings.seconds,
            "rates": list(settings.rates),
            "repeats": settings.repeats,
            "clients": CLIENTS,
            "vendor_class": VENDOR_CLASS.decode(),
            "option_93": "0000",
        },
        "topology": {
            "note": "perfdhcp in one network namespace, each server in its own, joined by veth pairs",
            "perfdhcp_namespace": lab.client,
            "servers": {s.name: {"namespace": s.namespace, "giaddr": s.client_address} for s in lab.running},
        },
        "servers": {
            server.name: {
                "command": server.argv,
                "env": server.env,
                "address": f"{server.address}:67",
                "log": server_log_summary(server.name, server.log_path, server.exit_code),
            }
            for server in lab.running
        },
        "results": [
            {
                "key": row.key,
                "label": row.label,
                "runs": {
                    name: {**asdict(run), "loss": round(run.loss, 5), "command": " ".join(run.command)}
                    for name, run in row.runs.items()
                },
            }
            for row in rows
        ],
        "sustained_rate": sustained(rows),
        "goals": goals(rows),
    }


def print_report(rows: list[Row], report: dict[str, Any], settings: Settings) -> None:
    print()
    print(render_table(rows, settings))
    notes = [
        f"{row.label}, {name}: {run.error}" for row in rows for name, run in row.runs.items() if run.error
    ]
    if notes:
        print("\nNotes:")
        print("\n".join(f"- {note}" for note in notes))
    rates = ", ".join(f"{name} {rate or 0}/s" for name, rate in report["sustained_rate"].items())
    print(f"\nHighest offered rate with loss <= {LOSS_GOAL:.0%} and p99 < {P99_GOAL_MS:g} ms: {rates}")
    if report["goals"]:
        print("\nGoals:")
        for goal in report["goals"]:
            detail = {k: v for k, v in goal.items() if k not in ("goal", "met")}
            print(f"{'MET ' if goal['met'] else 'MISS'}  {goal['goal']} {detail}")
    print_servers(report["servers"], clean_exits=(0, None, -signal.SIGTERM))
    example = next((run for row in rows for run in row.runs.values()), None)
    if example is not None:
        print(f"\nLoad: {' '.join(example.command)}")
    print_machine(report["machine"], settings.output)


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmark pvsd's proxy DHCP against dnsmasq (proxy mode) with perfdhcp on 127.0.0.0/8.",
        epilog="Writes bench/results/dhcp.json (dhcp-quick.json with --quick) unless --output is given.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per run, 3 rates, 1 repeat")
    parser.add_argument("--seconds", type=int, help="seconds per perfdhcp run (default 3, quick 1)")
    parser.add_argument(
        "--rates",
        type=int,
        nargs="+",
        metavar="N",
        help="offered DISCOVERs/s (default 1000 5000 10000 15000 20000 30000, quick 1000 5000 10000)",
    )
    parser.add_argument(
        "--repeats", type=int, help="runs at full speed per server, best kept (default 3, quick 1)"
    )
    parser.add_argument(
        "--servers", nargs="+", choices=SERVERS, default=list(SERVERS), help="servers to run (default: both)"
    )
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    seconds = args.seconds or (1 if quick else 3)
    rates = tuple(args.rates or ((1000, 5000, 10000) if quick else (1000, 5000, 10000, 15000, 20000, 30000)))
    repeats = args.repeats or (1 if quick else 3)
    if not 1 <= seconds <= 60 or not all(1 <= r <= 200_000 for r in rates) or not 1 <= repeats <= 10:
        parser.error("--seconds must be 1-60, --rates 1-200000, --repeats 1-10")
    return Settings(
        quick=quick,
        seconds=seconds,
        rates=rates,
        repeats=repeats,
        servers=tuple(name for name in SERVERS if name in args.servers),
        output=args.output or RESULTS / ("dhcp-quick.json" if quick else "dhcp.json"),
    )


def check_tools(settings: Settings) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark makes network namespaces and binds port 67 in them")
    needed = {"perfdhcp": perfdhcp_path() or "", "ip": shutil.which("ip") or ""}
    if "pvsd" in settings.servers:
        needed["pvsd"] = str(PVSD)
    if "dnsmasq" in settings.servers:
        needed["dnsmasq"] = DNSMASQ
    missing = [name for name, path in needed.items() if not path or not os.access(path, os.X_OK)]
    if missing:
        raise BenchError(
            f"missing: {', '.join(missing)} (run `make .venv/.installed`; "
            "Debian packages kea-admin dnsmasq-base iproute2)"
        )


def run(settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    started = time.time()
    machine = machine_info(
        {
            "pvsd": [str(PVSD), "--version"],
            "dnsmasq": [DNSMASQ, "--version"],
            "perfdhcp": [perfdhcp_path() or "perfdhcp", "-v"],
        }
    )
    with tempfile.TemporaryDirectory(prefix="pvsd-bench-dhcp-") as tmp, Lab(settings.servers) as lab:
        work = Path(tmp)
        (work / "logs").mkdir()
        for name in settings.servers:
            server = SERVER_FACTORIES[name](lab, work)
            lab.start(server, work)
            progress(f"{name} answering on {server.address}:67 in namespace {server.namespace}")
        rows = measure(lab, settings)
        lab.stop_servers()  # now, so that their logs are complete for the report
        return rows, build_report(settings, machine, lab, rows, started)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    try:
        check_tools(settings)
        rows, report = run(settings)
        write_json(settings.output, report)
        print_report(rows, report, settings)
    except BenchError as error:
        print(f"bench/dhcp.py: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "bench/dhcp.py: interrupted; servers stopped, namespaces and temp folder removed", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
