"""The lab: a PXE network of namespaces on this machine, for trying pvsd against real firmware.

    namespace PFX-br:   bridge br0, one tap per QEMU target, radvd (IPv6 RAs), QEMU itself
    namespace PFX-dhcp: eth0 10.77.0.2 on the bridge, dnsmasq: the site's DHCP (addresses only)
    namespace PFX-sN:   eth0 10.77.0.1N on the bridge, `pvsd serve --name pvsN` (proxy DHCP, TFTP,
                        logins and streaming from the shared store STATE/store)
    namespace PFX-tXXXXXX: a target agent's namespace (`add_target`), eth0 10.77.0.50-89

PFX is "pvl" plus a short hash of the state folder, so labs in different folders never
share a namespace, and `down` finds a lab's namespaces from its folder alone, even when
`up` crashed half way. All the servers share one SQLite farm in the state folder. Every
process the lab starts runs inside one of its namespaces, so `down` can always find and
stop them (`ip netns pids`), besides the pid files it keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pvsd.errors import BadInput, Failure
from pvsd.lab import network
from pvsd.lab.qemu import BootResult, Firmware, qemu_command, run_until
from pvsd.net.mac import parse_mac

__all__ = ["DEFAULT_STATE", "DEFAULT_UNTIL", "Lab", "LabServer", "LabTarget", "random_mac"]

DEFAULT_STATE = Path("var/lab")
DEFAULT_UNTIL = r"pvsd device:"
SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
BRIDGE = "br0"
DHCP_ADDRESS = 2  # host part of the site DHCP server's address
SERVER_BASE = 10  # pvsN gets host part SERVER_BASE + N
POOL = (100, 199)  # host parts of the site DHCP server's pool
TARGET_BASE, TARGET_COUNT = 50, 40  # host parts of target agents' namespaces: 50-89
MAX_SERVERS = 9
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
STATE_FILE = "lab.json"
IPV6_PREFIX = "fd77::/64"  # unique local: RAs only need to exist, nothing routes them

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class LabServer:
    name: str
    address: str
    namespace: str
    interface: str = "eth0"


@dataclass(frozen=True)
class LabTarget:
    mac: str
    address: str
    namespace: str
    interface: str = "eth0"


@dataclass
class Lab:
    """One lab, known by its state folder. Construct it, then `up()`, `boot()`, `down()`."""

    state: Path = DEFAULT_STATE
    say: Say = _quiet
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = self.state.resolve()
        digest = hashlib.sha1(str(self.state).encode(), usedforsecurity=False).hexdigest()
        self.prefix = f"pvl{digest[:6]}"

    # -- names ----------------------------------------------------------------------------------------

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    @property
    def dhcp_ns(self) -> str:
        return f"{self.prefix}-dhcp"

    @property
    def database(self) -> str:
        return f"sqlite:///{self.state / 'farm.db'}"  # an absolute path gives sqlite:////...

    def server(self, number: int) -> LabServer:
        return LabServer(f"pvs{number}", _host(SERVER_BASE + number), f"{self.prefix}-s{number}")

    def servers(self) -> list[LabServer]:
        count = int(self._read_state().get("servers", 0))
        return [self.server(n) for n in range(1, count + 1)]

    def find_server(self, name: str) -> LabServer:
        for server in self.servers():
            if name in (server.name, server.address, server.name.removeprefix("pvs")):
                return server
        raise BadInput(f"no server {name!r} in the lab at {self.state} (see `pvsd lab status`)")

    # -- up and down ----------------------------------------------------------------------------------

    def up(self, servers: int = 2) -> list[LabServer]:
        """Build the lab from scratch (after removing any leftovers of an earlier one)."""
        if not 1 <= servers <= MAX_SERVERS:
            raise BadInput(f"--servers must be between 1 and {MAX_SERVERS}, not {servers}")
        _require_root()
        self.down()
        (self.state / "pids").mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        # Written first: from here on, `down` knows this folder is a lab's and may remove it.
        self._write_state({"prefix": self.prefix, "servers": servers, "started": time.time()})
        try:
            self._up(servers)
        except BaseException:
            self.say("lab up failed; removing what was built")
            self.down(keep_state=True)
            raise
        return self.servers()

    def _up(self, servers: int) -> None:
        started = time.monotonic()
        network.new_namespace(self.bridge_ns)
        network.add_bridge(self.bridge_ns, BRIDGE)
        self.say(f"bridge {BRIDGE} in namespace {self.bridge_ns}")

        network.new_namespace(self.dhcp_ns)
        network.add_veth(self.dhcp_ns, "eth0", self.bridge_ns, "dhcp", BRIDGE)
        network.add_address(self.dhcp_ns, "eth0", f"{_host(DHCP_ADDRESS)}/{SUBNET.prefixlen}")
        self._start_dnsmasq()
        self._start_radvd()

        self._pvsd(["farm", "init", "--database", self.database, "--name", "lab"], {})
        for number in range(1, servers + 1):
            server = self.server(number)
            network.new_namespace(server.namespace)
            network.add_veth(server.namespace, server.interface, self.bridge_ns, f"s{number}", BRIDGE)
            network.add_address(server.namespace, server.interface, f"{server.address}/{SUBNET.prefixlen}")
            self._start_server(server)
        for number in range(1, servers + 1):
            self._wait_ready(self.server(number))
        self.say(f"lab up in {time.monotonic() - started:.1f} s: {servers} server(s), state in {self.state}")

    def down(self, keep_state: bool = False) -> None:
        """Remove the lab: its processes, its namespaces and (unless `keep_state`) its state folder.

        Works on whatever is left of a crashed or half-built lab, and on no lab at all.
        """
        _require_root()
        for pid_file in sorted((self.state / "pids").glob("*.pid")):
            self._stop_pid_file(pid_file, signal.SIGTERM)
        for namespace in network.list_namespaces():
            if namespace.startswith(f"{self.prefix}-"):
                killed = network.kill_namespace_processes(namespace)
                for pid in killed:
                    _reap(pid)
                network.delete_namespace(namespace)
                self.say(f"namespace {namespace} removed" + (f" ({len(killed)} killed)" if killed else ""))
        if not keep_state and (self.state / STATE_FILE).exists():
            shutil.rmtree(self.state, ignore_errors=True)

    def kill(self, name: str) -> LabServer:
        """SIGKILL one server (for failover tests): it gets no chance to leave the farm."""
        server = self.find_server(name)
        pid_file = self.state / "pids" / f"{server.name}.pid"
        if not self._stop_pid_file(pid_file, signal.SIGKILL):
            raise BadInput(f"server {server.name} is not running")
        return server

    def status(self) -> dict[str, Any]:
        namespaces = [n for n in network.list_namespaces() if n.startswith(f"{self.prefix}-")]
        # The processes a lab has, running or not (a killed server has lost its pid file), and
        # whatever else has a pid file now (QEMU targets).
        names = ["dnsmasq", "radvd", *(s.name for s in self.servers())]
        names += sorted(p.stem for p in (self.state / "pids").glob("*.pid") if p.stem not in names)
        processes = {}
        for name in names:
            pid = _read_pid(self.state / "pids" / f"{name}.pid")
            processes[name] = {"pid": pid, "running": pid is not None}
        farm: Any = None
        if (self.state / "farm.db").exists():
            result = self._pvsd(["server", "list", "--json"], {}, check=False)
            farm = json.loads(result.stdout) if result.returncode == 0 else result.stderr.strip()
        return {
            "state": str(self.state),
            "prefix": self.prefix,
            "up": bool(namespaces),
            "namespaces": namespaces,
            "servers": [s.__dict__ for s in self.servers()] if namespaces else [],
            "processes": processes,
            "farm": farm,
        }

    # -- targets --------------------------------------------------------------------------------------

    def boot(
        self,
        firmware: Firmware = Firmware.BIOS,
        mac: str | None = None,
        until: str = DEFAULT_UNTIL,
        timeout: float = 90.0,
        echo: TextIO | None = None,
        memory_mb: int = 256,
        on_text: Callable[[str], None] | None = None,
        media: Path | None = None,
    ) -> BootResult:
        """Boot one QEMU target from the lab's network, or from boot `media` (an ISO); stop it at
        the marker or after `timeout`. A target that boots its OS diskless needs `memory_mb` of
        512 or more."""
        _require_root()
        if not network.namespace_exists(self.bridge_ns):
            raise Failure(f"the lab at {self.state} is not up: run `pvsd lab up` first")
        try:
            marker = re.compile(until)
        except re.error as error:
            raise BadInput(f"--until is not a valid regular expression: {error}") from error
        mac = parse_mac(mac) if mac is not None else random_mac()
        tap = "t" + mac.replace(":", "")[-8:]  # unique per target, within IFNAMSIZ
        pid_file = self.state / "pids" / f"qemu-{tap}.pid"
        network.add_tap(self.bridge_ns, tap, BRIDGE)
        try:
            if media is not None and not media.is_file():
                raise BadInput(f"no boot media at {media}: write one with `pvsd media build --out FILE.iso`")
            iso = str(media.resolve()) if media is not None else None
            command = qemu_command(Firmware(firmware), mac, tap, memory_mb, iso)
            argv = ["ip", "netns", "exec", self.bridge_ns, *command]
            source = f"from {media}" if media is not None else "from the network"
            self.say(f"booting {firmware} target {mac} {source} until /{until}/ (at most {timeout:g} s)")
            return run_until(
                argv, marker, timeout, echo, on_start=lambda pid: _write_pid(pid_file, pid), on_text=on_text
            )
        finally:
            pid_file.unlink(missing_ok=True)
            network.delete_link(self.bridge_ns, tap)

    def add_target(self, mac: str) -> LabTarget:
        """A namespace for a target agent, on the bridge with a fixed address (as if the site's
        DHCP had given it one): the agent does the PXE part of the chain itself."""
        _require_root()
        if not network.namespace_exists(self.bridge_ns):
            raise Failure(f"the lab at {self.state} is not up: run `pvsd lab up` first")
        mac = parse_mac(mac)
        suffix = mac.replace(":", "")[-6:]
        host = TARGET_BASE + int(suffix, 16) % TARGET_COUNT
        target = LabTarget(mac, _host(host), f"{self.prefix}-t{suffix}")
        if network.namespace_exists(target.namespace):
            self.remove_target(target)
        network.new_namespace(target.namespace)
        network.add_veth(target.namespace, target.interface, self.bridge_ns, f"t{suffix}", BRIDGE)
        network.add_address(target.namespace, target.interface, f"{target.address}/{SUBNET.prefixlen}")
        network.run(["ip", "netns", "exec", target.namespace, "ip", "link", "set", "lo", "up"])
        self.say(f"target namespace {target.namespace}: {target.interface} {target.address}")
        return target

    def remove_target(self, target: LabTarget) -> None:
        network.kill_namespace_processes(target.namespace)
        network.delete_namespace(target.namespace)
        network.delete_link(self.bridge_ns, f"t{target.mac.replace(':', '')[-6:]}")

    def server_log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- processes ------------------------------------------------------------------------------------

    def _start_dnsmasq(self) -> None:
        first, last = (_host(part) for part in POOL)
        self._spawn(
            "dnsmasq",
            self.dhcp_ns,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",  # the host's /etc/dnsmasq.conf is not this lab's
                "--port=0",  # no DNS: the site server only hands out addresses
                "--no-resolv",
                "--no-hosts",
                "--interface=eth0",
                "--bind-interfaces",
                "--user=root",  # keeps the lease file in the state folder writable
                f"--dhcp-range={first},{last},{SUBNET.netmask},1h",
                "--dhcp-authoritative",
                # No ping before offering: on a fresh lab bridge it only delays each boot by seconds.
                "--no-ping",
                f"--dhcp-leasefile={self.state / 'dnsmasq.leases'}",
                "--log-dhcp",
                "--log-facility=-",
            ],
            {},
        )

    def _start_radvd(self) -> None:
        # The Debian iPXE ROM waits about 15 s for IPv6 router advertisements before it runs
        # its boot file; a bare bridge sends none. A lifetime of 0 says "not a default router".
        config = self.state / "radvd.conf"
        config.write_text(
            f"interface {BRIDGE} {{\n"
            "  AdvSendAdvert on;\n"
            "  MinRtrAdvInterval 3;\n"
            "  MaxRtrAdvInterval 4;\n"
            "  AdvDefaultLifetime 0;\n"
            f"  prefix {IPV6_PREFIX} {{ AdvOnLink on; AdvAutonomous on; }};\n"
            "};\n"
        )
        config.chmod(0o644)
        # radvd refuses to advertise unless the namespace forwards IPv6 (this namespace only).
        network.set_sysctl(self.bridge_ns, "net.ipv6.conf.all.forwarding", "1")
        self._spawn(
            "radvd",
            self.bridge_ns,
            [
                "radvd",
                "--nodaemon",
                f"--config={config}",
                f"--pidfile={self.state / 'radvd.pid'}",
                "--logmethod=stderr",
            ],
            {},
        )

    def _start_server(self, server: LabServer) -> None:
        # One store and one write-cache folder for all: servers on one host may share them.
        store = self.state / "store"
        store.mkdir(parents=True, exist_ok=True)
        tftp_root = self.state / "tftp"
        tftp_root.mkdir(parents=True, exist_ok=True)
        env = {
            "PVSD_FARM__DATABASE": self.database,
            "PVSD_FARM__HEARTBEAT_INTERVAL": "1",
            "PVSD_FARM__DEAD_AFTER": "4",
            "PVSD_SERVER__STORE": str(store),
            "PVSD_DHCP__ENABLED": "true",
            "PVSD_DHCP__INTERFACE": server.interface,
            # The iPXE binaries come from [tftp] ipxe_dir (/usr/lib/ipxe), whose own symlinks may
            # point out (ipxe.efi -> /boot/ipxe.efi); as the root they would be refused.
            "PVSD_TFTP__ROOT": str(tftp_root),
            # QEMU under TCG needs the CPUs: one TFTP process, and no spinning for ACKs.
            "PVSD_TFTP__WORKERS": "1",
            "PVSD_TFTP__BUSY_POLL_US": "0",
            "PVSD_STREAM__WORKERS": "1",
            "PVSD_STREAM__CACHE_DIR": str(self.state / "cache"),
            **self.extra_env,
        }
        argv = [*_pvsd_argv(), "--log-format", "json", "serve", "--name", server.name]
        self._spawn(server.name, server.namespace, [*argv, "--address", server.address], env)

    def _wait_ready(self, server: LabServer) -> None:
        """Wait for the server's "serving" log line: its ports are bound and it is in the farm."""
        log = self.state / "logs" / f"{server.name}.log"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if '"event": "serving"' in text or '"event":"serving"' in text:
                self.say(f"{server.name} serving at {server.address} in namespace {server.namespace}")
                return
            if _read_pid(self.state / "pids" / f"{server.name}.pid") is None:
                raise Failure(f"{server.name} exited at start; its log ({log}) ends:\n{_tail(text)}")
            time.sleep(0.1)
        raise Failure(f"{server.name} not serving after {READY_TIMEOUT_S:g} s; its log ends:\n{_tail(text)}")

    def _spawn(self, name: str, namespace: str, argv: list[str], env: Mapping[str, str]) -> int:
        """Start a long-running process inside a namespace, logging to logs/NAME.log."""
        log = self.state / "logs" / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
        full_env.update(env)
        with log.open("ab") as stream:
            try:
                process = subprocess.Popen(
                    ["ip", "netns", "exec", namespace, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    # Its own session: it outlives `pvsd lab up` and ignores the caller's Ctrl-C.
                    start_new_session=True,
                )
            except FileNotFoundError as error:
                raise Failure(f"cannot start {name}: {error}") from error
        _write_pid(self.state / "pids" / f"{name}.pid", process.pid)
        return process.pid

    def _stop_pid_file(self, pid_file: Path, signum: int) -> bool:
        """Stop the process a pid file names (if it is still that process); True if it was running."""
        pid = _read_pid(pid_file)
        pid_file.unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid) and time.monotonic() < deadline + STOP_TIMEOUT_S:
                _reap(pid)
                time.sleep(0.05)
        _reap(pid)
        return True

    def _pvsd(
        self, argv: list[str], env: Mapping[str, str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
        full_env.update({"PVSD_FARM__DATABASE": self.database, "PVSD_FARM__DEAD_AFTER": "4", **env})
        result = subprocess.run(
            [*_pvsd_argv(), *argv], env=full_env, capture_output=True, text=True, timeout=30, check=False
        )
        if check and result.returncode != 0:
            raise Failure(f"`pvsd {' '.join(argv)}` failed: {result.stderr.strip()}")
        return result

    # -- the state file -------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            value = json.loads((self.state / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _write_state(self, value: dict[str, Any]) -> None:
        (self.state / STATE_FILE).write_text(json.dumps(value, indent=2) + "\n")


def _host(part: int) -> str:
    return str(SUBNET.network_address + part)


def random_mac() -> str:
    # 52:54:00 is QEMU's prefix; the rest random, so targets of one run never collide.
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in os.urandom(3))


def _pvsd_argv() -> list[str]:
    return [sys.executable, "-m", "pvsd"]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise BadInput("the lab needs root: it creates network namespaces and tap devices")


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _write_pid(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {_start_time(pid) or ''}\n")


def _read_pid(path: Path) -> int | None:
    """The pid in a pid file, if that very process still runs (not a zombie, not a reused pid)."""
    try:
        words = path.read_text().split()
    except OSError:
        return None
    if not words or not words[0].isdigit():
        return None
    pid = int(words[0])
    started = _start_time(pid)
    if started is None or (len(words) > 1 and words[1] != started) or not _alive(pid):
        return None
    return pid


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect a child that was started by this very process (tests use the lab in-process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])
