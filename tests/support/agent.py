"""The host-side target agent (`pvsd target boot`) run as a test's target: it logs in by MAC,
streams the vDisk and exports it over NBD for QEMU."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.pvsd import in_namespace, wait_for

__all__ = ["MAC", "agent"]

MAC = "52:54:00:00:00:00"


@contextmanager
def agent(
    env: dict[str, str], folder: Path, *how: str, namespace: str | None = None, mac: str = MAC
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`pvsd target boot --mac MAC HOW...` in the background (in `namespace` if given), until
    its status file appears; SIGTERM at the end, as an operator stops it. Its log is
    `folder/agent.log`, its status `folder/agent.status.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    status = folder / "agent.status.json"
    log = (folder / "agent.log").open("w")
    process = subprocess.Popen(
        [
            *in_namespace(namespace),
            sys.executable,
            "-m",
            "pvsd",
            "--log-format",
            "json",
            "target",
            "boot",
            "--mac",
            mac,
            *how,
            "--status",
            str(status),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: status.exists() or process.poll() is not None, timeout=60, interval=0.05)
        assert process.poll() is None, (folder / "agent.log").read_text()
        yield process, status
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        log.close()
