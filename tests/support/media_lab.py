"""A site network with no PXE at all, for boot media: a bridge, dnsmasq handing out addresses
only (no proxy DHCP, no TFTP, no boot options), and HTTP boot servers in their own namespaces.

A media server is any process that answers `http://ADDR:PORT/boot/...` in its namespace. Until
pvsd's HTTP service lands it is `python3 -m http.server` over a folder holding the device
scripts (`http_stand_in`); swapping in `pvsd serve` only changes that one function.
Everything is torn down in `down()`, which the fixture runs even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from pvsd.boot.ipxe import device_script_name
from pvsd.boot.media import HTTP_BOOT_PATH
from pvsd.lab import network
from pvsd.lab.qemu import QEMU, BootResult, run_until

__all__ = ["MediaLab", "StartServer", "http_stand_in"]

SUBNET = IPv4Network("10.78.0.0/24")
BRIDGE = "br0"
READY_TIMEOUT_S = 10.0


def host(part: int) -> str:
    return str(SUBNET.network_address + part)


# (lab, namespace, address, port, folder of /boot/) -> pid of the process that answers
StartServer = Callable[["MediaLab", str, str, int, Path], int]


def http_stand_in(lab: MediaLab, namespace: str, address: str, port: int, boot: Path) -> int:
    """Python's own HTTP server over `boot`'s parent, so `/boot/...` maps to the folder."""
    return lab.spawn(
        "http",
        namespace,
        ["python3", "-m", "http.server", str(port), "--bind", address, "--directory", str(boot.parent)],
    )


@dataclass
class MediaLab:
    folder: Path
    prefix: str = field(default_factory=lambda: f"pm{os.getpid() % 100000}")
    pids: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def up(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._namespace(self.bridge_ns)
        network.add_bridge(self.bridge_ns, BRIDGE)
        dhcp_ns = self._namespace(f"{self.prefix}-dhcp")
        network.add_veth(dhcp_ns, "eth0", self.bridge_ns, "dhcp", BRIDGE)
        network.add_address(dhcp_ns, "eth0", f"{host(2)}/{SUBNET.prefixlen}")
        self.spawn(
            "dnsmasq",
            dhcp_ns,
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--no-resolv",
                "--no-hosts",
                "--interface=eth0",
                "--bind-interfaces",
                "--user=root",
                f"--dhcp-range={host(100)},{host(199)},{SUBNET.netmask},1h",
                "--dhcp-authoritative",
                "--no-ping",
                f"--dhcp-leasefile={self.folder / 'dnsmasq.leases'}",
                "--log-dhcp",
                "--log-facility=-",
            ],
        )

    def add_server(self, number: int, port: int, scripts: dict[str, str], start: StartServer) -> str:
        """A server namespace at .1N answering `scripts` (MAC -> device script); its address."""
        namespace = self._namespace(f"{self.prefix}-s{number}")
        address = host(10 + number)
        network.add_veth(namespace, "eth0", self.bridge_ns, f"s{number}", BRIDGE)
        network.add_address(namespace, "eth0", f"{address}/{SUBNET.prefixlen}")
        boot = self.folder / f"s{number}" / HTTP_BOOT_PATH.strip("/")
        for mac, text in scripts.items():
            path = boot / device_script_name(mac)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        start(self, namespace, address, port, boot)
        self._wait_listening(namespace, port)
        return address

    def boot(self, argv: list[str], until: str, timeout: float) -> BootResult:
        """Run QEMU in the bridge's namespace on a fresh tap until `until` or `timeout`."""
        tap = f"tap{len(self.pids)}"
        network.add_tap(self.bridge_ns, tap, BRIDGE)
        command = ["ip", "netns", "exec", self.bridge_ns, QEMU, *argv]
        command += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no"]
        return run_until(command, re.compile(until), timeout, on_start=self.pids.append)

    def spawn(self, name: str, namespace: str, argv: list[str]) -> int:
        log = (self.folder / f"{name}-{namespace}.log").open("ab")
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.pids.append(process.pid)
        return process.pid

    def logs(self) -> str:
        tails = (
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}" for p in self.folder.glob("*.log")
        )
        return "\n".join(tails)

    def down(self) -> None:
        # Only what this lab started: the processes of its own namespaces, then the namespaces.
        for namespace in reversed(self.namespaces):
            network.kill_namespace_processes(namespace)
            network.delete_namespace(namespace)
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _namespace(self, name: str) -> str:
        if network.namespace_exists(name):
            network.kill_namespace_processes(name)
            network.delete_namespace(name)
        network.new_namespace(name)
        self.namespaces.append(name)
        return name

    def _wait_listening(self, namespace: str, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            listening = network.run(["ip", "netns", "exec", namespace, "ss", "-Htln", f"sport = :{port}"])
            if listening.strip():
                return
            time.sleep(0.1)
        raise AssertionError(f"nothing listens on port {port} in {namespace} after {READY_TIMEOUT_S} s")
