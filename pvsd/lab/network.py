"""Thin wrappers over `ip`: network namespaces, a bridge, veth pairs and tap devices.

Every device is created inside a namespace the lab owns (`ip -n NS ...`), never in the
host's own namespace, so nothing here can touch the machine's real network. Every call is
bounded in time, and a failure names the command and what `ip` said.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

from pvsd.errors import Failure

__all__ = [
    "add_address",
    "add_bridge",
    "add_tap",
    "add_veth",
    "delete_link",
    "delete_namespace",
    "kill_namespace_processes",
    "list_namespaces",
    "namespace_exists",
    "namespace_pids",
    "new_namespace",
    "run",
    "set_sysctl",
]

IP_TIMEOUT_S = 10.0


def run(argv: Sequence[str], timeout: float = IP_TIMEOUT_S, check: bool = True) -> str:
    """Run a short command; return its stdout. A non-zero exit raises Failure (when `check`)."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as error:
        raise Failure(f"{argv[0]} is not installed ({error.strerror})") from error
    except subprocess.TimeoutExpired as error:
        raise Failure(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from error
    if check and result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}"
        raise Failure(f"`{' '.join(argv)}` failed: {detail}")
    return result.stdout


def list_namespaces() -> list[str]:
    # `ip netns list` prints "NAME (id: N)" for namespaces that have a peer id.
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def namespace_exists(name: str) -> bool:
    return name in list_namespaces()


def new_namespace(name: str) -> None:
    """Create a namespace with its loopback up (some services bind or talk to 127.0.0.1)."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def namespace_pids(name: str) -> list[int]:
    output = run(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in output.split() if word.isdigit()]


def kill_namespace_processes(name: str) -> list[int]:
    """SIGKILL every process inside the namespace: they are all the lab's by construction."""
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def delete_namespace(name: str) -> None:
    """Delete a namespace; its devices go with it (a veth's peer in another namespace too)."""
    run(["ip", "netns", "delete", name], check=False)


def add_bridge(namespace: str, bridge: str) -> None:
    # No STP and no forwarding delay: a PXE ROM gives up long before a learning bridge forwards.
    # Without multicast snooping, IPv6 router advertisements reach every port at once.
    run(
        [
            "ip", "-n", namespace, "link", "add", bridge, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0",
        ]
    )  # fmt: skip
    run(["ip", "-n", namespace, "link", "set", bridge, "up"])


def add_veth(namespace: str, name: str, bridge_namespace: str, peer: str, bridge: str) -> None:
    """A veth pair: `name` inside `namespace`, `peer` inside the bridge's namespace, on the bridge."""
    run(
        [
            "ip", "-n", namespace, "link", "add", name, "type", "veth",
            "peer", "name", peer, "netns", bridge_namespace,
        ]
    )  # fmt: skip
    run(["ip", "-n", bridge_namespace, "link", "set", peer, "master", bridge, "up"])
    run(["ip", "-n", namespace, "link", "set", name, "up"])


def add_address(namespace: str, device: str, cidr: str) -> None:
    run(["ip", "-n", namespace, "address", "add", cidr, "dev", device])


def add_tap(namespace: str, tap: str, bridge: str) -> None:
    """A tap device on the bridge, for one QEMU started inside the same namespace."""
    run(["ip", "-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap"])
    run(["ip", "-n", namespace, "link", "set", tap, "master", bridge, "up"])


def delete_link(namespace: str, device: str) -> None:
    run(["ip", "-n", namespace, "link", "delete", device], check=False)


def set_sysctl(namespace: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (net.*), leaving the host's value alone."""
    run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", f"{key}={value}"])
