"""pvsd.target.cmdline: the device script's words come back as the guest's settings."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pvsd.errors import BadInput
from pvsd.target.cmdline import GuestSettings, OnFail, guest_arguments, parse_cmdline

SERVERS = (("10.77.0.11", 6910), ("10.77.0.12", 6910))


def test_round_trip_through_a_real_command_line() -> None:
    settings = GuestSettings("52:54:00:12:34:56", SERVERS, "demo", 64, "/dev/nbd0p2", OnFail.POWEROFF)
    line = f"BOOT_IMAGE=vmlinuz console=tty0 console=ttyS0 {guest_arguments(settings)} quiet initrd=agent"
    assert parse_cmdline(line) == settings


def test_defaults_are_left_out_and_come_back() -> None:
    settings = GuestSettings("52:54:00:12:34:56", SERVERS)
    assert (
        guest_arguments(settings) == "pvsd.mac=52:54:00:12:34:56 pvsd.servers=10.77.0.11:6910,10.77.0.12:6910"
    )
    assert parse_cmdline(guest_arguments(settings)) == settings


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("console=ttyS0", "pvsd.mac"),
        ("pvsd.mac=nonsense pvsd.servers=1.2.3.4:6910", "pvsd.mac"),
        ("pvsd.mac=52:54:00:12:34:56", "pvsd.servers"),
        ("pvsd.mac=52:54:00:12:34:56 pvsd.servers=1.2.3.4", "pvsd.servers"),
        ("pvsd.mac=52:54:00:12:34:56 pvsd.servers=1.2.3.4:99999", "pvsd.servers"),
        ("pvsd.mac=52:54:00:12:34:56 pvsd.servers=1.2.3.4:1 pvsd.cache_mb=lots", "pvsd.cache_mb"),
        ("pvsd.mac=52:54:00:12:34:56 pvsd.servers=1.2.3.4:1 pvsd.onfail=explode", "pvsd.onfail"),
    ],
)
def test_a_bad_word_is_named(line: str, names: str) -> None:
    with pytest.raises(BadInput, match=names.replace(".", r"\.")):
        parse_cmdline(line)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_bad_input(text: str) -> None:
    with contextlib.suppress(BadInput):
        parse_cmdline(text)
