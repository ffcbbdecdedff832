"""[dhcp] relays: the relays (giaddr) proxy DHCP answers; a bad entry names the key and the reason."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pvsd.config import ConfigError, load_config
from pvsd.dhcp.server import boot_policy


def test_relays_default_to_none_listed() -> None:
    config = load_config(None, environ={})
    assert config.dhcp.relays == "" and config.dhcp.relay_networks == ()
    assert boot_policy(config.dhcp, config.server.address).relays == ()


@pytest.mark.parametrize(
    ("value", "networks"),
    [
        ("10.1.0.1", ("10.1.0.1/32",)),
        ("10.1.0.1, 10.2.0.0/16", ("10.1.0.1/32", "10.2.0.0/16")),
        ("10.1.0.1 10.2.0.0/16,,192.0.2.0/24", ("10.1.0.1/32", "10.2.0.0/16", "192.0.2.0/24")),
    ],
)
def test_relays_are_addresses_or_networks_separated_by_commas(
    tmp_path: Path, value: str, networks: tuple[str, ...]
) -> None:
    path = tmp_path / "pvsd.toml"
    path.write_text(f'[dhcp]\nrelays = "{value}"\n')
    config = load_config(str(path), environ={})
    assert config.dhcp.relay_networks == tuple(IPv4Network(n) for n in networks)
    assert boot_policy(config.dhcp, "10.0.0.5").relays == config.dhcp.relay_networks
    from_env = load_config(None, environ={"PVSD_DHCP__RELAYS": value})
    assert from_env.dhcp.relay_networks == config.dhcp.relay_networks


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("10.1.0.300", "'10.1.0.300' is not an IPv4 address or network"),
        ("10.2.0.5/16", "has host bits set"),
        ("relay1", "'relay1' is not an IPv4 address or network"),
        ("0.0.0.0/0", "would answer any giaddr"),
        ("224.0.0.0/4", "cannot be a relay"),
        ("240.0.0.1", "cannot be a relay"),
        ("0.1.2.3", "cannot be a relay"),
    ],
)
def test_a_bad_relay_names_the_key_and_the_reason(tmp_path: Path, value: str, reason: str) -> None:
    path = tmp_path / "pvsd.toml"
    path.write_text(f'[dhcp]\nrelays = "{value}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.key == "dhcp.relays"
    assert str(caught.value).startswith("config key dhcp.relays")
    assert reason in str(caught.value)


def test_a_toml_list_is_refused_with_the_expected_type(tmp_path: Path) -> None:
    path = tmp_path / "pvsd.toml"
    path.write_text('[dhcp]\nrelays = ["10.1.0.1"]\n')
    with pytest.raises(ConfigError, match="expected a string"):
        load_config(str(path), environ={})
