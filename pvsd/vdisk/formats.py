"""The disk image formats users bring from hypervisors (qcow2, VHD/VHDX, VMDK, VDI), turned into
the raw image a vDisk version is, with `qemu-img` (Debian package qemu-utils).

What qemu-img does not do by itself, and this module does:
- it converts a truncated qcow2 or VMDK without a word, reading what is missing as zeros, so
  every image is `qemu-img check`ed first (exit 0, or 3 for leaked clusters, which lose no
  data; 63 means the format has no check, and VHD's conversion fails on truncation itself);
- it probes a fixed VHD (a raw disk with a 512-byte footer) as raw, so the footer is looked
  for here and the image is converted as `vpc`, without the footer;
- an image with a backing file or an external data file would make it read other files of
  this host: such images are refused, to be flattened first (`qemu-img convert -O qcow2`).
Every later qemu-img call names the format (`-f`), so nothing is probed twice.

`sniff_format` and `parse_info` are pure; the rest runs qemu-img with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvsd.errors import BadInput, Failure

__all__ = ["CONVERTIBLE", "ImageInfo", "convert_to_raw", "parse_info", "probe_image", "sniff_format"]

# qemu-img's format names -> what users call them.
CONVERTIBLE = {"qcow2": "qcow2", "vpc": "VHD", "vhdx": "VHDX", "vmdk": "VMDK", "vdi": "VDI"}
_VHD_FOOTER = b"conectix"
_MAGICS = (
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (_VHD_FOOTER, "vpc"),
    (b"<<< ", "vdi"),
)
_CHECK_OK = {0, 3, 63}  # clean, leaked clusters only, format without a check
_INFO_TIMEOUT_S = 60
_CONVERT_TIMEOUT_S = 6 * 3600  # a big image on slow disks; qemu-img is killed past it


@dataclass(frozen=True)
class ImageInfo:
    format: str  # qemu-img's name: raw, qcow2, vpc, vhdx, vmdk, vdi
    virtual_size: int
    backing: str | None = None

    @property
    def raw(self) -> bool:
        return self.format == "raw"


def sniff_format(head: bytes, tail: bytes) -> str | None:
    """The format that the first and last 512 bytes of a file announce, or None for raw."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    # A fixed VHD has its footer only at the end.
    return "vpc" if tail[-512:].startswith(_VHD_FOOTER) else None


def parse_info(text: str, source: Path) -> ImageInfo:
    """`qemu-img info --output=json`'s answer; BadInput for an image pvsd will not read."""
    try:
        info = json.loads(text)
        name = info["format"]
        size = info["virtual-size"]
    except (ValueError, KeyError, TypeError):
        raise Failure(f"qemu-img info gave no format for {source}: {text.strip()[:200]}") from None
    if not isinstance(name, str) or not isinstance(size, int) or isinstance(size, bool):
        raise Failure(f"qemu-img info gave no format for {source}: {text.strip()[:200]}")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise BadInput(
            f"cannot import {source}: it is a {name} image on the backing file {backing}; "
            f"flatten it first (qemu-img convert -O {name} {source} flat.{name})"
        )
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    data_file = data.get("data-file") if isinstance(data, dict) else None
    if data_file:
        raise BadInput(
            f"cannot import {source}: its data lives in another file ({data_file}); flatten it first"
        )
    if name != "raw" and name not in CONVERTIBLE:
        accepted = ", ".join(sorted(CONVERTIBLE.values()))
        raise BadInput(f"cannot import {source}: {name} images are not supported (raw, {accepted} are)")
    return ImageInfo(name, size)


def probe_image(source: Path) -> ImageInfo:
    """What `source` is. A raw image needs no qemu-img; any other format does."""
    head, tail = _ends(source)
    sniffed = sniff_format(head, tail)
    qemu_img = _qemu_img()
    if qemu_img is None:
        if sniffed is None:
            return ImageInfo("raw", source.stat().st_size)
        raise BadInput(
            f"cannot import {source}: it looks like a {CONVERTIBLE[sniffed]} image, and converting "
            "it needs qemu-img (Debian package qemu-utils)"
        )
    argv = [qemu_img, "info", "--output=json"]
    # A fixed VHD probes as raw: name the format so its footer is not taken for disk data.
    argv += ["-f", "vpc"] if sniffed == "vpc" else []
    done = _run([*argv, str(source)], _INFO_TIMEOUT_S)
    if done.returncode != 0:
        raise BadInput(f"cannot import {source}: qemu-img cannot read it: {_first_error(done)}")
    info = parse_info(done.stdout, source)
    if info.raw:
        return info
    check = _run([qemu_img, "check", "-f", info.format, str(source)], _INFO_TIMEOUT_S)
    if check.returncode not in _CHECK_OK:
        raise BadInput(
            f"cannot import {source}: this {CONVERTIBLE[info.format]} image is damaged or truncated "
            f"(qemu-img check: {_first_error(check)})"
        )
    return info


def convert_to_raw(source: Path, info: ImageInfo, out: Path) -> None:
    """Write the raw disk of `source` to `out` (sparse where the image is)."""
    qemu_img = _qemu_img()
    if qemu_img is None:
        raise Failure("qemu-img is missing (Debian package qemu-utils)")
    done = _run(
        [qemu_img, "convert", "-f", info.format, "-O", "raw", str(source), str(out)], _CONVERT_TIMEOUT_S
    )
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise BadInput(
            f"cannot import {source}: converting the {CONVERTIBLE[info.format]} image failed: "
            f"{_first_error(done)}"
        )


def _ends(source: Path) -> tuple[bytes, bytes]:
    try:
        with source.open("rb") as stream:
            head = stream.read(512)
            size = os.fstat(stream.fileno()).st_size
            stream.seek(max(0, size - 512))
            return head, stream.read(512)
    except OSError as error:
        raise BadInput(f"cannot import {source}: {error.strerror or error}") from None


def _qemu_img() -> str | None:
    return shutil.which("qemu-img")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Failure(f"{' '.join(argv[:2])} did not finish in {timeout:g} s") from None


def _first_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "rror" in line]
    return (errors or lines or [f"exit code {done.returncode}"])[0][:300]
