"""Running the real `pvsd` command in subprocesses, the way an operator does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def pvsd_env(database: str, **keys: str) -> dict[str, str]:
    """The environment for a pvsd process: the farm database plus PVSD_<SECTION>__<KEY> settings.

    Proxy DHCP is off unless a test turns it on: by default it listens on 0.0.0.0:67, and a
    test must never answer DHCP on the host's real network. Logins and streaming are off
    too (they start worker processes) unless a test turns them on, and so is HTTP: several
    servers of one test often share an address, and they would all want port 54321. So is
    replication: a test of replicas sets up what each store holds.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
    env["PVSD_FARM__DATABASE"] = database
    env["PVSD_DHCP__ENABLED"] = "false"
    env["PVSD_LOGIN__ENABLED"] = "false"
    env["PVSD_STREAM__ENABLED"] = "false"
    env["PVSD_API__ENABLED"] = "false"
    env["PVSD_REPLICATION__ENABLED"] = "false"
    env.update({f"PVSD_{key.upper()}": value for key, value in keys.items()})
    return env


def in_namespace(namespace: str | None) -> list[str]:
    """The command prefix that runs a program inside a network namespace (none: here)."""
    return ["ip", "netns", "exec", namespace] if namespace else []


def pvsd(
    env: Mapping[str, str], *argv: str, timeout: float = 30, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*in_namespace(namespace), sys.executable, "-m", "pvsd", *argv],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def server_states(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    result = pvsd(env, "server", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {server["name"]: server for server in json.loads(result.stdout)}


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> float:
    """Poll until predicate() is true; return the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class ServeProcess:
    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text()

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events


@contextmanager
def serve(
    env: Mapping[str, str],
    name: str,
    address: str,
    folder: Path,
    namespace: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[ServeProcess]:
    """`pvsd serve` in the background, logging JSON to a file; always killed at the end."""
    log = folder / f"{name}-{address}-{time.monotonic_ns()}.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            [
                *in_namespace(namespace),
                sys.executable,
                "-m",
                "pvsd",
                "--log-format",
                "json",
                "serve",
                "--name",
                name,
                "--address",
                address,
                *extra,
            ],
            env=dict(env),
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield ServeProcess(process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
