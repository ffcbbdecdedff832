from __future__ import annotations

import pytest

from pvsd.errors import BadInput
from pvsd.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("8G", 8 << 30), ("8GiB", 8 << 30), ("64 MiB", 64 << 20), ("1t", 1 << 40), ("4KB", 4096)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "8X", "G"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(BadInput, match="bad size"):
        parse_size(text)


def test_format_size() -> None:
    assert [format_size(n) for n in (8 << 30, 1536, 3 << 20, 1000)] == ["8 GiB", "1536 B", "3 MiB", "1000 B"]
