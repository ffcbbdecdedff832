"""A Linux image's boot files, found without mounting it: the root file system (whole disk or
a partition, pvsd/boot/partitions.py), `/boot/vmlinuz-VERSION` (or `/vmlinuz`), the matching
`/boot/initrd.img-VERSION` (or `/initrd.img`), and `/lib/modules/VERSION`, the layout of every
distribution image. Also the kernel modules the agent inside the guest needs, read out of that
same tree for its initramfs overlay, so that they always match the image's kernel.
"""

from __future__ import annotations

import lzma
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pvsd.boot.agent_initramfs import AgentModule
from pvsd.boot.builds import AGENT_MODULES, OPTIONAL_MODULES
from pvsd.boot.ext4 import Ext4Image
from pvsd.boot.partitions import HEAD_BYTES, LinuxRoot, find_linux_roots, is_ext4
from pvsd.errors import BadInput
from pvsd.net.reader import DecodeError

__all__ = [
    "LinuxBoot",
    "ModuleFile",
    "find_linux_boot",
    "module_closure",
    "module_order",
    "modules_root",
    "read_agent_modules",
]

REQUIRED_MODULES = ("nbd", "ext4")  # without these the guest cannot mount its root at all
MAX_DEPTH = 64  # modules.dep is acyclic; this bounds a damaged one
_VERSION_PARTS = re.compile(r"\d+")


@dataclass(frozen=True)
class LinuxBoot:
    root_partition: int  # 0: the whole disk
    root_offset: int
    kernel: str  # the path in the image
    kernel_version: str
    initrd: str | None
    missing_modules: tuple[str, ...]  # what the agent needs and the image lacks
    other_versions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleFile:
    """One kernel module to load: its name (as modprobe spells it) and its path in the image."""

    name: str
    path: str


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko", 1)[0].replace("-", "_")


def module_order(modules_dep: str, builtin: str, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(module paths in load order, dependencies first, each once; names found nowhere) from the
    text of modules.dep and modules.builtin. Built-in modules need no loading and are left out."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        path, _, rest = line.partition(":")
        if path:
            deps[_module_name(path)] = (path, rest.split())
    built_in = {_module_name(line) for line in builtin.splitlines() if line.strip()}
    order: list[str] = []
    missing: list[str] = []

    def add(name: str, depth: int) -> None:
        if name in built_in or depth > MAX_DEPTH:
            return
        if name not in deps:
            if name not in missing:
                missing.append(name)
            return
        path, needs = deps[name]
        for need in needs:
            add(_module_name(need), depth + 1)
        if path not in order:
            order.append(path)

    for name in names:
        add(name, 0)
    return order, missing


def _kernel_versions(fs: Ext4Image) -> dict[str, str]:
    """version -> kernel path, from /boot/vmlinuz-* and the /vmlinuz symlink."""
    found = {
        name.removeprefix("vmlinuz-"): f"/boot/{name}"
        for name in fs.listdir("/boot")
        if name.startswith("vmlinuz-")
    }
    if not found:
        target = fs.resolve("/vmlinuz")
        if target is not None:
            version = Path(target).name.removeprefix("vmlinuz-")
            found[version if version != "vmlinuz" else ""] = "/vmlinuz"
    return found


def modules_root(fs: Ext4Image, version: str) -> str | None:
    for base in ("/lib/modules", "/usr/lib/modules"):
        if version in fs.listdir(base):
            return f"{base}/{version}"
    return None


def _newest(versions: Sequence[str]) -> str:
    return max(versions, key=lambda v: [int(n) for n in _VERSION_PARTS.findall(v)])


def _first_ext4(image: Path, roots: Sequence[LinuxRoot]) -> tuple[LinuxRoot, bool]:
    """The first candidate whose superblock says ext4 (partitions start past the head the table
    was read from), else the first and False: its error then names what it holds instead."""
    with image.open("rb") as f:
        for root in roots:
            f.seek(root.offset)
            if is_ext4(f.read(2048)):
                return root, True
    return roots[0], False


def _module_index(fs: Ext4Image, modules: str) -> tuple[str | None, str]:
    """modules.dep (None when absent) and modules.builtin of one /lib/modules/VERSION."""
    texts = fs.read_many([f"{modules}/modules.dep", f"{modules}/modules.builtin"])
    dep = texts.get(f"{modules}/modules.dep")
    builtin = texts.get(f"{modules}/modules.builtin", b"").decode(errors="replace")
    return (dep.decode(errors="replace") if dep is not None else None), builtin


def find_linux_boot(image: Path, sector_size: int = 512) -> LinuxBoot | None:
    """The image's Linux boot files, or None when it holds no Linux root at all (a blank disk, a
    boot sector, another OS). BadInput, naming the problem, when it has a Linux root that cannot
    boot: a damaged table, a partition that is not ext4, no kernel."""
    size = image.stat().st_size
    with image.open("rb") as f:
        head = f.read(HEAD_BYTES)
    try:
        roots = find_linux_roots(head, size, sector_size)
    except DecodeError as error:
        raise BadInput(f"{image}: {error}") from None
    if not roots:
        return None
    root, ext4 = _first_ext4(image, roots)
    where = "the whole disk" if root.partition == 0 else f"partition {root.partition}"
    if not ext4:
        raise BadInput(
            f"{image}: {where} is a Linux partition but holds no ext4 file system: pvsd reads ext4 roots "
            "only; give --kernel (and --initrd), or --no-boot for a plain disk"
        )
    fs = Ext4Image(image, root.offset)
    try:
        fs.check()
        kernels = _kernel_versions(fs)
    except BadInput as error:
        raise BadInput(
            f"{image}: the ext4 file system on {where} is damaged ({error}); repair it with e2fsck, "
            "or give --kernel (and --initrd)"
        ) from None
    if not kernels:
        raise BadInput(
            f"{image}: the Linux root on {where} has no /boot/vmlinuz-VERSION or /vmlinuz: "
            "install a kernel in the image, give --kernel, or import it with --no-boot as a plain disk"
        )
    version = _newest(list(kernels))
    initrd = next(
        (
            p
            for p in (f"/boot/initrd.img-{version}", "/initrd.img", f"/boot/initramfs-{version}.img")
            if fs.exists(p)
        ),
        None,
    )
    missing: tuple[str, ...] = tuple(AGENT_MODULES)
    modules = modules_root(fs, version) if version else None
    if modules is not None:
        dep, builtin = _module_index(fs, modules)
        missing = tuple(module_order(dep or "", builtin, AGENT_MODULES)[1])
    return LinuxBoot(
        root.partition,
        root.offset,
        kernels[version],
        version,
        initrd,
        missing,
        tuple(sorted(v for v in kernels if v != version)),
    )


def module_closure(fs: Ext4Image, kernel_version: str, names: Sequence[str]) -> list[ModuleFile]:
    """The modules to read out of the image for `names`, in load order (dependencies first, each
    once), skipping built-in ones. BadInput naming what the image lacks: no /lib/modules/VERSION
    (nor /usr/lib/modules/VERSION), or a module in neither modules.dep nor modules.builtin."""
    modules = modules_root(fs, kernel_version)
    if modules is None:
        raise BadInput(
            f"{fs.image}: no /lib/modules/{kernel_version} (nor /usr/lib/modules/{kernel_version})"
        )
    dep, builtin = _module_index(fs, modules)
    if dep is None:
        raise BadInput(f"{fs.image}: {modules} has no modules.dep (run depmod {kernel_version} in the image)")
    order, missing = module_order(dep, builtin, names)
    if missing:
        raise BadInput(f"{fs.image}: the kernel {kernel_version} has no module {', '.join(missing)}")
    return [ModuleFile(_module_name(path), f"{modules}/{path}") for path in order]


def _uncompressed(path: str, data: bytes) -> bytes:
    """busybox insmod reads plain .ko files only."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True, timeout=60).stdout
    return data


def read_agent_modules(image: Path, root_offset: int, kernel_version: str) -> tuple[str, list[AgentModule]]:
    """The modules the agent loads, out of the image's own /lib/modules/VERSION, in load order."""
    fs = Ext4Image(image, root_offset)
    modules = modules_root(fs, kernel_version)
    if modules is None:
        raise BadInput(f"{image}: no /lib/modules/{kernel_version} for the agent's kernel modules")
    dep, builtin = _module_index(fs, modules)
    order, missing = module_order(dep or "", builtin, AGENT_MODULES)
    optional, _ = module_order(dep or "", builtin, OPTIONAL_MODULES)
    order += [path for path in optional if path not in order]
    if any(name in missing for name in REQUIRED_MODULES):
        raise BadInput(f"{image}: the image's kernel {kernel_version} lacks {', '.join(missing)}")
    files = fs.read_many([f"{modules}/{path}" for path in order])
    return kernel_version, [
        AgentModule(_module_name(path), _uncompressed(path, files[f"{modules}/{path}"]))
        for path in order
        if f"{modules}/{path}" in files
    ]
