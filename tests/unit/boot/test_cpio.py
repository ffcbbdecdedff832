"""pvsd.boot.cpio: what it writes the kernel can unpack (checked against cpio(1)'s reader where
installed, and by our own decoder), and the decoder's contract on any bytes."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from support import needs

from pvsd.boot.cpio import CpioWriter, EntryKind, decode_cpio
from pvsd.net.reader import DecodeError


def _archive() -> bytes:
    archive = CpioWriter()
    archive.directories("pvsd/bin")
    archive.file("pvsd/bin/tool", b"\x7fELF...", 0o755)
    archive.symlink("pvsd/bin/sh", "tool")
    archive.chardev("dev/console", 5, 1)
    archive.file("init", b"#!/pvsd/bin/sh\n", 0o755)
    return archive.finish()


def test_entries_come_back_as_written() -> None:
    entries = {e.name: e for e in decode_cpio(_archive())}
    assert list(entries) == ["pvsd", "pvsd/bin", "pvsd/bin/tool", "pvsd/bin/sh", "dev/console", "init"]
    assert entries["pvsd/bin/tool"].kind is EntryKind.FILE and entries["pvsd/bin/tool"].permissions == 0o755
    assert entries["pvsd/bin/sh"].kind is EntryKind.SYMLINK and entries["pvsd/bin/sh"].data == b"tool"
    assert entries["dev/console"].rdev == (5, 1)


def test_same_input_same_bytes() -> None:
    assert _archive() == _archive()


def test_concatenated_archives_decode_in_order_later_files_last() -> None:
    first = CpioWriter()
    first.file("init", b"theirs")
    second = CpioWriter()
    second.file("init", b"ours")
    entries = decode_cpio(first.finish() + b"\0" * 8 + second.finish())
    assert [(e.name, e.data) for e in entries] == [("init", b"theirs"), ("init", b"ours")]


def test_gnu_cpio_lists_what_we_wrote(tmp_path: Path) -> None:
    needs.tools(("cpio", "cpio"))
    archive = tmp_path / "a.cpio"
    archive.write_bytes(_archive())
    listed = subprocess.run(["cpio", "-t", "-F", str(archive)], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == [
        "pvsd",
        "pvsd/bin",
        "pvsd/bin/tool",
        "pvsd/bin/sh",
        "dev/console",
        "init",
    ]


@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_cpio(data)


@given(st.integers(min_value=0, max_value=len(_archive())), st.binary(max_size=8))
def test_damaged_archives_decode_or_raise_decode_error(cut: int, junk: bytes) -> None:
    data = _archive()
    with contextlib.suppress(DecodeError):
        decode_cpio(data[: len(data) - cut] + junk)
