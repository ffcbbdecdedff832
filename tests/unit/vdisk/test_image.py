"""vDisk images: import copies exactly and atomically, bad input is refused by name, sidecars are trusted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pvsd.errors import BadInput
from pvsd.vdisk import (
    ImageCheck,
    Sidecar,
    image_path,
    import_image,
    read_sidecar,
    sha256_file,
    sidecar_path,
    verify_image,
    write_sidecar,
)
from pvsd.vdisk.chunk_files import kept_index


def make_source(folder: Path, size: int, name: str = "source.raw") -> Path:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def refused(source: Path, destination: Path, sector_size: int = 512) -> str:
    with pytest.raises(BadInput) as caught:
        import_image(source, destination, sector_size=sector_size)
    return str(caught.value)


def test_image_path() -> None:
    assert image_path(Path("/srv/store"), "win10", 3) == Path("/srv/store/win10/v3.img")


def test_import_copies_hashes_and_reports_progress(tmp_path: Path) -> None:
    source = make_source(tmp_path, 10 * 4096 + 512)
    destination = image_path(tmp_path / "store", "win10", 1)
    calls: list[tuple[int, int]] = []
    result = import_image(
        source, destination, progress=lambda done, total: calls.append((done, total)), chunk=4096
    )
    content = source.read_bytes()
    assert destination.read_bytes() == content
    assert result.size == len(content)
    assert result.sha256 == hashlib.sha256(content).hexdigest() == sha256_file(destination, chunk=1000)
    assert len(calls) == 11
    assert calls[-1] == (len(content), len(content))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {len(content)}
    assert not destination.with_suffix(".img.part").exists()
    names = sorted(path.name for path in destination.parent.iterdir())
    assert names == ["v1.img", "v1.img.chunks", "v1.img.sha256"]
    kept = kept_index(destination, result.sha256)  # made on the way, for peers that pull it
    assert kept is not None and kept.size == len(content)
    info = destination.stat()
    assert read_sidecar(destination) == Sidecar(result.sha256, info.st_size, info.st_mtime_ns)


def test_import_with_default_chunk_and_a_stale_part_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, 4096)
    destination = tmp_path / "store" / "d" / "v2.img"
    destination.parent.mkdir(parents=True)
    destination.with_suffix(".img.part").write_bytes(b"left by a crash")
    result = import_image(source, destination)
    assert destination.read_bytes() == source.read_bytes()
    assert result.size == 4096
    assert not destination.with_suffix(".img.part").exists()


def test_a_failed_import_leaves_no_part_file(tmp_path: Path) -> None:
    source = make_source(tmp_path, 8192)
    destination = tmp_path / "store" / "v1.img"

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_image(source, destination, progress=interrupt, chunk=4096)
    assert list(destination.parent.iterdir()) == []


def test_missing_source(tmp_path: Path) -> None:
    message = refused(tmp_path / "nope.raw", tmp_path / "v1.img")
    assert "nope.raw" in message
    assert "no such file" in message


def test_directory_source(tmp_path: Path) -> None:
    message = refused(tmp_path, tmp_path / "store" / "v1.img")
    assert str(tmp_path) in message
    assert "directory" in message


def test_non_regular_source(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # O_RDWR so that opening the FIFO for reading does not block waiting for a writer
    keeper = os.open(fifo, os.O_RDWR)
    try:
        assert "not a regular file" in refused(fifo, tmp_path / "v1.img")
    finally:
        os.close(keeper)


def test_unreadable_source() -> None:
    """Root reads any file, so as root (how `make test` runs) the import runs as nobody."""
    with tempfile.TemporaryDirectory() as folder:
        # tmp_path's parents are private to root: a folder that nobody may enter, not list
        Path(folder).chmod(0o711)
        source = make_source(Path(folder), 512)
        source.chmod(0)
        if os.geteuid() != 0:
            assert "permission denied" in refused(source, Path(folder) / "v1.img")
            return
        code = (
            "import sys; from pathlib import Path; from pvsd.errors import BadInput\n"
            "from pvsd.privileges import drop_privileges; from pvsd.vdisk import import_image\n"
            "drop_privileges('nobody')\n"
            "try: import_image(Path(sys.argv[1]), Path(sys.argv[2]), sector_size=512)\n"
            "except BadInput as error: print(error)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(source), f"{folder}/v1.img"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "permission denied" in result.stdout


def test_empty_source(tmp_path: Path) -> None:
    source = make_source(tmp_path, 0)
    assert "empty" in refused(source, tmp_path / "v1.img")


def test_size_not_a_multiple_of_the_sector_size(tmp_path: Path) -> None:
    source = make_source(tmp_path, 1000)
    message = refused(source, tmp_path / "v1.img")
    assert "1000 bytes" in message
    assert "not a multiple of the 512-byte sector size" in message
    assert "4096-byte" in refused(
        make_source(tmp_path, 1024, "small.raw"), tmp_path / "v1.img", sector_size=4096
    )


def test_existing_destination(tmp_path: Path) -> None:
    source = make_source(tmp_path, 512)
    destination = tmp_path / "v1.img"
    destination.write_bytes(b"keep me")
    message = refused(source, destination)
    assert str(destination) in message
    assert "exists" in message
    assert destination.read_bytes() == b"keep me"


def imported(tmp_path: Path, size: int = 8192) -> tuple[Path, str]:
    destination = tmp_path / "store" / "v1.img"
    result = import_image(make_source(tmp_path, size), destination)
    return destination, result.sha256


def test_verify_trusts_a_matching_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, sha256 = imported(tmp_path)

    def no_hashing(path: Path, chunk: int = 0) -> str:
        raise AssertionError("hashed despite a matching sidecar")

    monkeypatch.setattr("pvsd.vdisk.image.sha256_file", no_hashing)
    assert verify_image(image, sha256.upper(), 8192) == ImageCheck(ok=True, reason="sidecar", sha256=sha256)


def test_verify_hashes_without_a_sidecar_and_writes_one(tmp_path: Path) -> None:
    image, sha256 = imported(tmp_path)
    sidecar_path(image).unlink()
    assert verify_image(image, sha256, 8192) == ImageCheck(ok=True, reason="hashed", sha256=sha256)
    assert read_sidecar(image) is not None
    assert verify_image(image, sha256, 8192).reason == "sidecar"


def test_verify_catches_a_changed_byte(tmp_path: Path) -> None:
    image, sha256 = imported(tmp_path)
    content = bytearray(image.read_bytes())
    content[4000] ^= 0xFF
    image.write_bytes(content)
    info = image.stat()
    os.utime(image, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    check = verify_image(image, sha256, 8192)
    assert not check.ok
    assert check.sha256 == hashlib.sha256(content).hexdigest()
    assert sha256 in check.reason
    assert check.sha256 in check.reason


def test_verify_wrong_size_and_missing(tmp_path: Path) -> None:
    image, sha256 = imported(tmp_path)
    check = verify_image(image, sha256, 4096)
    assert not check.ok
    assert "8192" in check.reason
    assert "4096" in check.reason
    assert verify_image(tmp_path / "gone.img", sha256, 8192) == ImageCheck(
        ok=False, reason="missing", sha256=None
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"sha256": "ab", "size": 1, "mtime_ns": 1}',
        b'{"sha256": "' + b"A" * 64 + b'", "size": 1, "mtime_ns": 1}',
        b'{"sha256": "' + b"a" * 64 + b'", "size": true, "mtime_ns": 1}',
        b'{"sha256": "' + b"a" * 64 + b'", "size": -1, "mtime_ns": 1}',
        b'{"sha256": "' + b"a" * 64 + b'", "size": 1}',
        b'{"sha256": "' + b"a" * 64 + b'", "size": 1, "mtime_ns": 1.5}',
    ],
)
def test_malformed_sidecar_reads_as_none(tmp_path: Path, content: bytes) -> None:
    image = tmp_path / "v1.img"
    sidecar_path(image).write_bytes(content)
    assert read_sidecar(image) is None


def test_sidecar_round_trip(tmp_path: Path) -> None:
    image = tmp_path / "v1.img"
    assert read_sidecar(image) is None
    image.write_bytes(b"x" * 512)
    write_sidecar(image, "AB" * 32)
    info = image.stat()
    assert read_sidecar(image) == Sidecar("ab" * 32, 512, info.st_mtime_ns)
    assert json.loads(sidecar_path(image).read_text()) == {
        "sha256": "ab" * 32,
        "size": 512,
        "mtime_ns": info.st_mtime_ns,
    }
