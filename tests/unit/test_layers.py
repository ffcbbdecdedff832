"""The layering of DESIGN.md section 3, checked by parsing every module (nothing is imported).

Pure modules (codecs, state machines, decisions, script generators) import no asyncio, socket,
select or time, no farm store, and of pvsd only other pure modules and the plain-data modules
below. A new pure module is added to PURE. Lower layers never import higher ones: the farm
knows no protocol, a vDisk knows no wire, and only the command line imports the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pvsd"

PURE = {
    "pvsd.net.reader",
    "pvsd.net.mac",
    "pvsd.dhcp.codec",
    "pvsd.dhcp.policy",
    "pvsd.dhcp.pxe_client",
    "pvsd.tftp.codec",
    "pvsd.tftp.session",
    "pvsd.stream.wire",
    "pvsd.stream.peer_heartbeat",
    "pvsd.farm.reconnect",
    "pvsd.stream.ticket",
    "pvsd.stream.admission",
    "pvsd.stream.placement",
    "pvsd.stream.session",
    "pvsd.target.flow",
    "pvsd.target.nbd_codec",
    "pvsd.boot.bootstrap",
    "pvsd.boot.ipxe",
    "pvsd.boot.media",
    "pvsd.boot.grub",
    "pvsd.lograte",
    "pvsd.farm.heartbeats",
    "pvsd.boot.cpio",
    "pvsd.boot.guest_init",
    "pvsd.boot.partitions",
    "pvsd.target.cmdline",
    "pvsd.api.ranges",
    "pvsd.vdisk.chunks",
    "pvsd.vdisk.ratelimit",
    "pvsd.farm.versions",
}
# Plain data and its checks: what a pure module may use of pvsd besides other pure modules.
DATA = {"pvsd.errors", "pvsd.names", "pvsd.units", "pvsd.config", "pvsd.farm.records"}
FORBIDDEN = {"asyncio", "socket", "select", "selectors", "time", "threading", "multiprocessing"}
STORE = {"pvsd.farm.store", "pvsd.farm.sqlite", "pvsd.farm.postgres", "pvsd.farm.backend"}

# The bounded reader and the project's one DecodeError serve every decoder, whatever its layer: a
# vDisk's chunk index is decoded from a peer's bytes too, and knows no wire for it.
SHARED = {"pvsd.net.reader"}

# package -> packages it must never import (SHARED excepted)
NEVER = {
    "pvsd.net": (
        "pvsd.dhcp",
        "pvsd.tftp",
        "pvsd.stream",
        "pvsd.target",
        "pvsd.boot",
        "pvsd.farm",
        "pvsd.vdisk",
    ),
    "pvsd.farm": (
        "pvsd.dhcp",
        "pvsd.tftp",
        "pvsd.stream",
        "pvsd.target",
        "pvsd.boot",
        "pvsd.vdisk",
        "pvsd.net.udp",
    ),
    "pvsd.vdisk": ("pvsd.dhcp", "pvsd.tftp", "pvsd.stream", "pvsd.target", "pvsd.boot", "pvsd.net"),
    "pvsd.dhcp": ("pvsd.tftp", "pvsd.stream", "pvsd.target", "pvsd.boot", "pvsd.vdisk"),
    "pvsd.tftp": ("pvsd.dhcp", "pvsd.stream", "pvsd.target", "pvsd.boot", "pvsd.vdisk", "pvsd.farm"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    return imports_of(MODULES[name].read_text())


def imports_of(source: str) -> set[str]:
    """Every module the source imports, by its full dotted name (`from a import b` counts a and a.b),
    function-level imports included."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def pvsd_modules(found: set[str]) -> set[str]:
    """The pvsd modules among `found` (a name imported from a module is not a module)."""
    return {name for name in found if name in MODULES}


def test_every_pure_module_exists() -> None:
    assert set(MODULES) >= PURE, sorted(PURE - set(MODULES))
    assert set(MODULES) >= DATA, sorted(DATA - set(MODULES))


@pytest.mark.parametrize("name", sorted(PURE))
def test_a_pure_module_imports_no_io_no_store_and_no_glue(name: str) -> None:
    found = imports(name)
    io = {module for module in found if module.split(".")[0] in FORBIDDEN}
    assert not io, f"{name} imports {sorted(io)}: that belongs in the glue"
    glue = pvsd_modules(found) - PURE - DATA - {"pvsd"}
    assert not glue, f"{name} imports {sorted(glue)}: a pure module may use only pure and data modules"
    assert not (found & STORE), f"{name} imports the farm store"


@pytest.mark.parametrize("name", sorted(DATA))
def test_a_data_module_imports_no_event_loop_no_store_and_no_glue(name: str) -> None:
    found = imports(name)
    assert not {m for m in found if m.split(".")[0] in FORBIDDEN - {"socket"}}, name
    assert not (pvsd_modules(found) - DATA - {"pvsd"}), f"{name} imports {sorted(pvsd_modules(found) - DATA)}"


@pytest.mark.parametrize("package", sorted(NEVER))
def test_lower_layers_never_import_higher_ones(package: str) -> None:
    for name in (n for n in MODULES if n == package or n.startswith(package + ".")):
        higher = {m for m in pvsd_modules(imports(name)) - SHARED if m.startswith(NEVER[package])}
        assert not higher, f"{name} imports {sorted(higher)}"


def test_only_the_command_line_imports_the_command_line() -> None:
    for name in MODULES:
        if name.startswith("pvsd.cli") or name == "pvsd.__main__":
            continue
        assert not {m for m in imports(name) if m.startswith("pvsd.cli")}, name


def test_the_checker_sees_imports_anywhere_in_a_module() -> None:
    found = imports_of("import asyncio\ndef f():\n    from pvsd.farm.store import FarmStore\n")
    assert {"asyncio", "pvsd.farm.store", "pvsd.farm.store.FarmStore"} <= found
    assert pvsd_modules(found) == {"pvsd.farm.store"}
