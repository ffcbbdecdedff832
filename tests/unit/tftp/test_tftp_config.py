"""The [tftp] keys that keep a flood from locking targets out: defaults, and bad values naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvsd.config import ConfigError, load_config
from pvsd.tftp.workers import share_of


def test_the_lock_out_keys_and_their_defaults() -> None:
    tftp = load_config(None, environ={}).tftp
    assert (tftp.max_per_client, tftp.reserved_transfers, tftp.first_block_timeout) == (8, 16, 3.0)


def test_they_come_from_the_environment_like_any_key() -> None:
    environ = {
        "PVSD_TFTP__MAX_PER_CLIENT": "2",
        "PVSD_TFTP__RESERVED_TRANSFERS": "0",
        "PVSD_TFTP__FIRST_BLOCK_TIMEOUT": "0.5",
    }
    tftp = load_config(None, environ=environ).tftp
    assert (tftp.max_per_client, tftp.reserved_transfers, tftp.first_block_timeout) == (2, 0, 0.5)


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("[tftp]\nmax_per_client = 0", "tftp.max_per_client", "1 or more"),
        ("[tftp]\nmax_per_client = 'eight'", "tftp.max_per_client", "whole number"),
        ("[tftp]\nreserved_transfers = -1", "tftp.reserved_transfers", "0 (none) or more"),
        ("[tftp]\nfirst_block_timeout = 0", "tftp.first_block_timeout", "greater than 0"),
        ("[tftp]\nfirst_block_timeout = 'soon'", "tftp.first_block_timeout", "a number"),
    ],
)
def test_a_bad_value_names_the_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    path = tmp_path / "pvsd.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.key == key
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"config key {key}")


def test_the_limits_are_shared_out_among_the_processes() -> None:
    tftp = load_config(None, environ={}).tftp
    share = share_of(tftp, 3)
    assert (share.max_transfers, share.max_per_client, share.reserved_transfers) == (167, 3, 6)
    assert share.first_block_timeout == tftp.first_block_timeout
