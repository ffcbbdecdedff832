"""The pure half of pvsd/vdisk/formats.py: what a file's ends announce, and what qemu-img info's
answer lets through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvsd.errors import BadInput, Failure
from pvsd.vdisk.formats import ImageInfo, parse_info, sniff_format

SOURCE = Path("disk.img")


@pytest.mark.parametrize(
    ("head", "tail", "expected"),
    [
        (b"QFI\xfb\x00\x00\x00\x03", b"", "qcow2"),
        (b"KDMV\x01", b"", "vmdk"),
        (b"# Disk DescriptorFile\n", b"", "vmdk"),
        (b"vhdxfile", b"", "vhdx"),
        (b"conectix", b"", "vpc"),
        (bytes(512), b"conectix" + bytes(504), "vpc"),  # a fixed VHD: its footer only
        (b"<<< Oracle VM VirtualBox Disk Image >>>", b"", "vdi"),
        (bytes(446) + b"\x80" + bytes(63) + b"\x55\xaa", bytes(512), None),  # an MBR: raw
        (b"", b"", None),
    ],
)
def test_the_ends_of_a_file_name_its_format(head: bytes, tail: bytes, expected: str | None) -> None:
    assert sniff_format(head, tail) == expected


def test_info_gives_the_format_and_the_virtual_size() -> None:
    text = json.dumps({"format": "qcow2", "virtual-size": 1 << 30, "filename": "x"})
    assert parse_info(text, SOURCE) == ImageInfo("qcow2", 1 << 30)
    assert parse_info(json.dumps({"format": "raw", "virtual-size": 512}), SOURCE).raw


@pytest.mark.parametrize(
    ("info", "message"),
    [
        (
            {"format": "qcow2", "virtual-size": 1, "backing-filename": "/etc/shadow"},
            "backing file /etc/shadow",
        ),
        (
            {"format": "qcow2", "virtual-size": 1, "format-specific": {"data": {"data-file": "/dev/sda"}}},
            "another file",
        ),
        ({"format": "qed", "virtual-size": 1}, "qed images are not supported"),
    ],
)
def test_images_that_would_read_other_files_or_are_unknown_are_refused(
    info: dict[str, object], message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        parse_info(json.dumps(info), SOURCE)


@pytest.mark.parametrize(
    "text", ["", "not json", "[]", '{"format": 3, "virtual-size": 1}', '{"format": "raw"}']
)
def test_an_answer_without_a_format_is_a_failure_not_a_crash(text: str) -> None:
    with pytest.raises(Failure):
        parse_info(text, SOURCE)
