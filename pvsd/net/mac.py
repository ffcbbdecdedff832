"""MAC addresses: accepted in the three spellings operators paste, always shown as aa:bb:cc:dd:ee:ff."""

from __future__ import annotations

import re

from pvsd.errors import BadInput

__all__ = ["format_mac", "parse_mac"]

_SPELLINGS = (
    re.compile(r"(?:[0-9a-f]{2}:){5}[0-9a-f]{2}"),
    re.compile(r"(?:[0-9a-f]{2}-){5}[0-9a-f]{2}"),
    re.compile(r"[0-9a-f]{12}"),
)


def parse_mac(text: str) -> str:
    """Return the canonical form of a MAC written as aa:bb:.., aa-bb-.. or aabb...

    Raises BadInput naming the reason. Multicast and all-zero addresses are refused
    because no network card boots with one: such a value is always a typo.
    """
    candidate = text.strip().lower()
    if not any(spelling.fullmatch(candidate) for spelling in _SPELLINGS):
        raise BadInput(
            f"bad MAC address {text!r}: expected aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff or aabbccddeeff"
        )
    raw = bytes.fromhex(candidate.replace(":", "").replace("-", ""))
    if raw == bytes(6):
        raise BadInput(f"bad MAC address {text!r}: all zeros")
    if raw[0] & 0x01:
        raise BadInput(f"bad MAC address {text!r}: a multicast address cannot be a device")
    return format_mac(raw)


def format_mac(raw: bytes) -> str:
    """Show six bytes as aa:bb:cc:dd:ee:ff."""
    if len(raw) != 6:
        raise ValueError(f"a MAC address has 6 bytes, not {len(raw)}")
    return raw.hex(":")
