"""The initramfs overlay that carries the agent into a diskless guest: busybox, a Python
runtime, pvsd, the kernel modules the guest needs, and /init (pvsd/boot/guest_init.py).

iPXE loads it after the image's own initramfs, if the image has one. Everything of pvsd's lives
under /pvsd, so nothing of the image's initramfs is overwritten but /init and the dynamic loader.

The Python runtime is the one running pvsd: its binary, its shared libraries (found with
`ldd`), and exactly the modules the agent imports, found by running the agent's `--probe`,
each compiled here to a sourceless .pyc so that the guest compiles nothing. Shared objects are
stripped when `strip` is installed. The kernel modules come from the image itself (its own
/lib/modules/VERSION), so they always match the kernel the image boots; the caller passes them
in load order.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pvsd
from pvsd.boot.cpio import CpioWriter
from pvsd.boot.guest_init import AGENT_LAUNCHER, guest_init, udhcpc_script
from pvsd.errors import Failure
from pvsd.target.cmdline import AGENT_ARGV0, READY_FILE

__all__ = ["AgentModule", "build_agent_initramfs"]

BUSYBOX = Path("/bin/busybox")
PYTHON_HOME = "pvsd/python"
SITE = "pvsd/site"
LIBS = "pvsd/lib"
PROBE_TIMEOUT_S = 60.0
_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


@dataclass(frozen=True)
class AgentModule:
    """A kernel module for the guest: its name (as insmod reports it) and its uncompressed bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class _Probe:
    files: tuple[Path, ...]
    path: tuple[str, ...]
    stdlib: Path  # lib/pythonX.Y of the running interpreter


def _probe() -> _Probe:
    """Run the agent's --probe in this interpreter: the files of every module it imports."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", AGENT_LAUNCHER, "--probe"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        raise Failure(f"the agent's import probe took over {PROBE_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise Failure(f"the agent's import probe failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.splitlines()[-1])
    return _Probe(
        files=tuple(Path(f) for f in result["files"]),
        path=tuple(str(p) for p in result["path"]),
        stdlib=Path(result["stdlib"]) / "lib" / f"python{result['version']}",
    )


def _shared_objects(paths: Sequence[Path]) -> tuple[set[Path], Path]:
    """The libraries `paths` load (by ldd), and the dynamic loader."""
    libraries: set[Path] = set()
    loader: Path | None = None
    for path in paths:
        done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30)
        for line in done.stdout.splitlines():
            found = _LDD_LINE.match(line)
            if found is None:
                continue
            library = Path(found.group(1))
            if "=>" not in line:
                loader = library
            else:
                libraries.add(library)
    if loader is None:
        raise Failure(f"ldd found no dynamic loader for {paths[0]}: is it a dynamic executable?")
    return libraries, loader


def _binary(path: Path) -> bytes:
    """The file's bytes, stripped of what only a debugger needs when `strip` is installed."""
    if shutil.which("strip") is None:
        return path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="pvsd-strip-") as folder:
        stripped = Path(folder) / path.name
        done = subprocess.run(
            ["strip", "--strip-unneeded", "-o", str(stripped), str(path)], capture_output=True, timeout=60
        )
        return stripped.read_bytes() if done.returncode == 0 else path.read_bytes()


def _sourceless(source: Path) -> bytes:
    """A .pyc that imports without its .py (importlib's sourceless loader checks only the magic)."""
    code = compile(source.read_bytes(), str(source), "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)


def _place(file: Path, roots: Sequence[tuple[Path, str]]) -> str | None:
    """Where `file` goes in the overlay: below the destination of the deepest root holding it."""
    for root, destination in sorted(roots, key=lambda r: len(r[0].parts), reverse=True):
        if file.is_relative_to(root):
            return f"{destination}/{file.relative_to(root)}"
    return None


def _applets() -> list[str]:
    done = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, timeout=10, check=True)
    return [name for name in done.stdout.split() if name and "/" not in name and name != "busybox"]


def build_agent_initramfs(out: Path, kernel_version: str, modules: Sequence[AgentModule]) -> int:
    """Write the gzip'd overlay to `out` (atomically); returns its size in bytes."""
    if not BUSYBOX.is_file():
        raise Failure(f"{BUSYBOX} is missing: install Debian's busybox-static")
    probe = _probe()
    package_root = Path(pvsd.__file__).resolve().parent.parent
    roots = [(probe.stdlib, f"{PYTHON_HOME}/lib/{probe.stdlib.name}"), (package_root, SITE)]
    roots += [(Path(p), SITE) for p in probe.path if "site-packages" in p and Path(p).is_dir()]
    archive = CpioWriter()
    for name in ("dev", "proc", "sys", "run", "tmp", "newroot", "pvsd/bin", "pvsd/modules", LIBS, "lib64"):
        archive.directories(name)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("pvsd/bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _applets():
        archive.symlink(f"pvsd/bin/{applet}", "busybox")
    python = Path(sys.executable).resolve()
    extensions: list[Path] = []
    for file in sorted(probe.files):
        destination = _place(file, roots)
        if destination is None:
            continue  # a module outside every root (none in practice): the probe would show it fail
        archive.directories(str(Path(destination).parent))
        if file.suffix == ".py":
            archive.file(destination[: -len(".py")] + ".pyc", _sourceless(file))
        elif file.suffix == ".so":
            archive.file(destination, _binary(file), 0o755)
            extensions.append(file)
    libraries, loader = _shared_objects([python, *extensions])
    archive.file("pvsd/bin/python3", _binary(python), 0o755)
    for library in sorted(libraries):
        archive.file(f"{LIBS}/{library.name}", _binary(library), 0o755)
    archive.directories(str(loader.parent).lstrip("/"))
    archive.file(str(loader).lstrip("/"), loader.read_bytes(), 0o755)
    for module in modules:
        archive.file(f"pvsd/modules/{module.name}.ko", module.data)
    archive.file("pvsd/modules/order", "".join(f"{m.name}\n" for m in modules).encode())
    archive.file("pvsd/agent.py", AGENT_LAUNCHER.encode())
    archive.file("pvsd/udhcpc.script", udhcpc_script().encode(), 0o755)
    archive.file("pvsd/kernel-version", f"{kernel_version}\n".encode())
    archive.file("init", guest_init(str(READY_FILE), AGENT_ARGV0).encode(), 0o755)
    data = gzip.compress(archive.finish(), compresslevel=6, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.{os.getpid()}")
    staged.write_bytes(data)
    staged.replace(out)
    return len(data)
