"""Sizes as people type them: 1073741824, 1G, 1GiB, 512M."""

from __future__ import annotations

import re

from pvsd.errors import BadInput

__all__ = ["format_approx", "format_size", "parse_size"]

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from a plain number or one with a binary unit (K, M, G, T; KiB.. and KB.. mean the same)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise BadInput(f"bad size {text!r}: give bytes, or a number with K, M, G or T (powers of 1024)")
    return int(match[1]) * _UNITS[match[2].lower()]


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}iB"
    return f"{size} B"


def format_approx(size: float) -> str:
    """A size to three figures for people, not for parsing back: 14.1 MiB, 812 KiB, 96 B."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if size >= factor:
            value = size / factor
            return f"{value:.1f} {unit}iB" if value < 100 else f"{value:.0f} {unit}iB"
    return f"{size:.0f} B"
