"""The suite's one skip rule.

- A tool that `make test` installs never makes a test skip: when it is missing, the test
  fails and names the Debian package, because the machine is broken, not the test.
- What `make test` cannot give (root, /dev/net/tun) skips on a developer's machine.
- Under `CI=true` nothing skips: conftest.py turns every skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

# Where Debian puts tools a non-root PATH lacks (perfdhcp is in /usr/sbin).
SBIN = ("/usr/sbin", "/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def tool(name: str, package: str) -> str:
    """The path of `name`, or a failure naming the Debian package that `make test` installs."""
    found = _path(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs it (Debian package {package})")
    return found


def tools(*named: tuple[str, str]) -> None:
    """Every (tool, Debian package) pair, checked at once so that one run names all that is missing."""
    missing = [f"{name} (Debian package {package})" for name, package in named if _path(name) is None]
    if missing:
        pytest.fail("missing, and `make test` installs them: " + ", ".join(missing))


def files(*named: tuple[str, str]) -> None:
    """Every (path, Debian package) pair, as `tools` does for programs."""
    missing = [f"{path} (Debian package {package})" for path, package in named if not Path(path).exists()]
    if missing:
        pytest.fail("missing, and `make test` installs them: " + ", ".join(missing))


def unavailable(reason: str) -> NoReturn:
    """Skip for something `make test` cannot provide; conftest.py fails it under CI."""
    pytest.skip(reason)


def lab_host() -> None:
    """What a lab of namespaces with QEMU targets needs of this machine (pvsd/lab)."""
    root("network namespaces and tap devices")
    if not Path("/dev/net/tun").exists():
        unavailable("needs /dev/net/tun")
    tools(
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("dnsmasq", "dnsmasq-base"),
        ("radvd", "radvd"),
    )


def root(why: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"needs root: {why}")


def _path(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(folder) / name) for folder in SBIN if os.access(Path(folder) / name, os.X_OK)), None
    )
