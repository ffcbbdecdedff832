from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.errors import BadInput
from pvsd.net.mac import format_mac, parse_mac


@pytest.mark.parametrize(
    "text", ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aabbccddeeff", " Aa:Bb:cC:dd:EE:ff "]
)
def test_the_three_spellings(text: str) -> None:
    assert parse_mac(text) == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("aa:bb:cc:dd:ee", "expected"),
        ("aa:bb:cc:dd:ee:ff:00", "expected"),
        ("aa:bb-cc:dd:ee:ff", "expected"),
        ("aabbccddeefg", "expected"),
        ("", "expected"),
        ("00:00:00:00:00:00", "all zeros"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
    ],
)
def test_bad_macs_say_why(text: str, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        parse_mac(text)


@given(st.binary(min_size=6, max_size=6).filter(lambda raw: raw != bytes(6) and not raw[0] & 1))
def test_every_unicast_mac_round_trips_in_every_spelling(raw: bytes) -> None:
    canonical = format_mac(raw)
    for spelling in (canonical, canonical.replace(":", "-").upper(), canonical.replace(":", "")):
        assert parse_mac(spelling) == canonical


@given(st.text(max_size=40))
def test_parse_mac_only_ever_raises_bad_input(text: str) -> None:
    with contextlib.suppress(BadInput):
        parse_mac(text)
