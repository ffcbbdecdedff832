"""File sources: every unsafe name refused with its reason, netascii, and files shared between transfers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from support import needs

from pvsd.tftp.codec import ErrorCode, Refusal, TftpError
from pvsd.tftp.sources import FileCache, SourceRegistry, find_file, resolve_path, to_netascii


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "boot.ipxe").write_bytes(b"#!ipxe\n")
    (root / "sub" / "file").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inner-link").symlink_to(root / "sub" / "file")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize(
    ("name", "reason", "code"),
    [
        ("", "empty file name", ErrorCode.ACCESS_VIOLATION),
        ("a\0b", "NUL byte", ErrorCode.ACCESS_VIOLATION),
        ("sub\\file", "backslash", ErrorCode.ACCESS_VIOLATION),
        ("/", "no file name after the leading slash", ErrorCode.ACCESS_VIOLATION),
        ("/../secret", "parent directory", ErrorCode.ACCESS_VIOLATION),
        ("/etc/passwd", "no such file", ErrorCode.FILE_NOT_FOUND),  # the root's etc/passwd: none
        ("../secret", "parent directory", ErrorCode.ACCESS_VIOLATION),
        ("sub/../../secret", "parent directory", ErrorCode.ACCESS_VIOLATION),
        ("escape", "symlink points outside", ErrorCode.ACCESS_VIOLATION),
        ("sub", "not a regular file", ErrorCode.ACCESS_VIOLATION),
        ("fifo", "not a regular file", ErrorCode.ACCESS_VIOLATION),
        ("missing", "no such file", ErrorCode.FILE_NOT_FOUND),
    ],
)
def test_unsafe_or_missing_names_are_refused_with_a_reason(
    root: Path, name: str, reason: str, code: ErrorCode
) -> None:
    with pytest.raises(TftpError) as caught:
        resolve_path(root, name)
    assert reason in caught.value.message
    assert caught.value.code == code


@pytest.mark.parametrize(
    "name",
    [
        "A" * 60_000,  # the hostile tryout's: the OS said "File name too long: '/srv/tftp/AAAA...'"
        "sub/" + "x" * 300,  # one component over NAME_MAX
        "/".join(["d"] * 3000),  # many short components, over PATH_MAX
    ],
)
def test_a_name_too_long_is_refused_with_a_fixed_reason_that_names_no_path(root: Path, name: str) -> None:
    with pytest.raises(TftpError) as caught:
        resolve_path(root, name)
    assert caught.value.refusal is Refusal.NAME_TOO_LONG
    assert caught.value.message == "file name too long"
    assert caught.value.code == ErrorCode.ACCESS_VIOLATION
    assert str(root) not in str(caught.value) + caught.value.detail
    assert name[:50] not in str(caught.value) + caught.value.detail


def test_a_symlink_loop_is_refused_with_a_fixed_reason(root: Path) -> None:
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(TftpError) as caught:
        resolve_path(root, "loop")
    assert caught.value.refusal in set(Refusal)
    assert str(root) not in str(caught.value) + caught.value.detail


def test_every_refusal_is_one_of_a_closed_set_of_short_reasons() -> None:
    for refusal in Refusal:
        assert len(refusal.value) <= 48 and refusal.value.isascii()
        assert isinstance(refusal.code, ErrorCode)


def test_device_files_are_refused(root: Path) -> None:
    needs.root("making a device node")
    os.mknod(root / "zero", 0o600 | 0o020000, os.makedev(1, 5))  # a character device like /dev/zero
    with pytest.raises(TftpError, match="not a regular file"):
        resolve_path(root, "zero")


def test_safe_names_resolve_inside_the_root(root: Path) -> None:
    assert resolve_path(root, "boot.ipxe") == (root / "boot.ipxe").resolve()
    assert resolve_path(root, "./sub//file") == (root / "sub" / "file").resolve()
    assert resolve_path(root, "inner-link") == (root / "sub" / "file").resolve()


def test_leading_slashes_name_the_root_as_firmware_sends_them(root: Path) -> None:
    assert resolve_path(root, "/boot.ipxe") == (root / "boot.ipxe").resolve()
    assert resolve_path(root, "//sub/file") == (root / "sub" / "file").resolve()


def test_a_file_missing_from_the_root_is_found_in_a_fallback_with_the_same_checks(
    root: Path, tmp_path: Path
) -> None:
    fallback = tmp_path / "ipxe"
    fallback.mkdir()
    (fallback / "undionly.kpxe").write_bytes(b"ipxe")
    (fallback / "boot.ipxe").write_bytes(b"not this one")
    assert find_file([root, fallback], "/undionly.kpxe") == (fallback / "undionly.kpxe").resolve()
    assert find_file([root, fallback], "boot.ipxe") == (root / "boot.ipxe").resolve()  # the root first
    with pytest.raises(TftpError, match="parent directory"):
        find_file([root, fallback], "../ipxe/undionly.kpxe")
    with pytest.raises(TftpError, match="no such file"):
        find_file([root, fallback], "missing")


def test_netascii() -> None:
    assert to_netascii(b"a\nb\r\nc\rd") == b"a\r\nb\r\0\r\nc\r\0d"


def test_a_file_wanted_by_many_transfers_at_once_is_read_once(root: Path) -> None:
    (root / "big").write_bytes(os.urandom(3 << 20))
    cache = FileCache(64 << 20)
    registry = SourceRegistry(root, cache)

    async def many() -> list[bytes]:
        sources = await asyncio.gather(*(registry.open("big", netascii=False) for _ in range(50)))
        reads = [source.read(1 << 20, 16) for source in sources]
        for source in sources:
            source.close()
        return reads

    reads = asyncio.run(many())
    assert cache.loads == 1
    assert len(set(reads)) == 1
    assert reads[0] == (root / "big").read_bytes()[1 << 20 : (1 << 20) + 16]


def test_a_changed_file_is_read_again(root: Path) -> None:
    cache = FileCache(64 << 20)
    registry = SourceRegistry(root, cache)

    async def fetch() -> bytes:
        source = await registry.open("boot.ipxe", netascii=False)
        try:
            return source.read(0, source.size)
        finally:
            source.close()

    assert asyncio.run(fetch()) == b"#!ipxe\n"
    (root / "boot.ipxe").write_bytes(b"#!ipxe\necho changed\n")
    assert asyncio.run(fetch()) == b"#!ipxe\necho changed\n"
    assert cache.loads == 2


def test_the_cache_stays_within_its_bound_and_large_files_are_streamed(root: Path) -> None:
    for index in range(6):
        (root / f"f{index}").write_bytes(os.urandom(1 << 20))
    (root / "huge").write_bytes(os.urandom(2 << 20))
    cache = FileCache(4 << 20)  # files up to 1 MiB are cached, 4 MiB in all
    registry = SourceRegistry(root, cache)

    async def fetch_all() -> None:
        for index in range(6):
            (await registry.open(f"f{index}", netascii=False)).close()
        huge = await registry.open("huge", netascii=False)
        assert huge.read((2 << 20) - 4, 100) == (root / "huge").read_bytes()[-4:]
        huge.close()

    asyncio.run(fetch_all())
    assert cache.bytes_cached <= 4 << 20


def test_published_files_come_first_and_can_be_netascii(root: Path) -> None:
    registry = SourceRegistry(root, FileCache(1 << 20))
    registry.publish("boot.ipxe", b"line1\nline2\n")

    async def fetch() -> tuple[bytes, bytes]:
        octet = await registry.open("boot.ipxe", netascii=False)
        text = await registry.open("boot.ipxe", netascii=True)
        return octet.read(0, 100), text.read(0, 100)

    assert asyncio.run(fetch()) == (b"line1\nline2\n", b"line1\r\nline2\r\n")
