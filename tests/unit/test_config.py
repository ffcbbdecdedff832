"""Config: defaults, file, environment and flags, and an error that names the key for every mistake."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from pvsd.config import Config, ConfigError, default_table, load_config, render_toml
from pvsd.errors import BadInput

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pvsd.toml"
    path.write_text(text)
    return str(path)


def test_the_shipped_file_is_the_generated_reference() -> None:
    """conf/pvsd.toml is `pvsd config defaults`: regenerate it when a key changes."""
    assert (ROOT / "conf" / "pvsd.toml").read_text() == render_toml(Config(), with_help=True)
    assert tomllib.loads((ROOT / "conf" / "pvsd.toml").read_text()) == default_table()


def test_every_key_in_the_shipped_file_has_a_comment() -> None:
    lines = (ROOT / "conf" / "pvsd.toml").read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), f"no comment above {line!r}"


def test_defaults_with_no_file_and_no_environment() -> None:
    config = load_config(None, environ={})
    assert config.farm.database == "sqlite:///var/farm.db"
    assert (config.farm.heartbeat_interval, config.farm.dead_after, config.farm.auto_add) == (2.0, 8.0, False)
    assert config.server.name  # the host name
    assert config.server.bind == config.server.address == "127.0.0.1"
    assert config.login.port == 6910 and config.tftp.port == 69 and config.dhcp.pxe_port == 4011
    for section in ("tftp", "dhcp", "login", "stream", "api"):
        assert getattr(config, section).enabled is True


def test_config_is_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.farm.database = "x"  # type: ignore[misc]


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nname = "pvs1"\naddress = "10.0.0.5"\n[farm]\nheartbeat_interval = 1\ndead_after = 4\n',
    )
    config = load_config(path, environ={"PVSD_FARM__DEAD_AFTER": "6.5", "PVSD_SERVER__NAME": "pvs2"})
    assert config.server.name == "pvs2"
    assert config.server.address == config.server.bind == "10.0.0.5"
    assert config.farm.heartbeat_interval == 1.0 and config.farm.dead_after == 6.5
    flagged = load_config(path, environ={"PVSD_SERVER__NAME": "pvs2"}, overrides={"server.name": "pvs3"})
    assert flagged.server.name == "pvs3"


def test_the_file_is_found_through_pvsd_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nname = "from-env-file"\n')
    assert load_config(None, environ={"PVSD_CONFIG": path}).server.name == "from-env-file"
    other = tmp_path / "other.toml"
    other.write_text('[server]\nname = "from-flag"\n')
    assert load_config(str(other), environ={"PVSD_CONFIG": path}).server.name == "from-flag"


@pytest.mark.parametrize(
    ("environ", "key", "reason"),
    [
        ({"PVSD_FARM__AUTO_ADD": "yes"}, None, None),
        ({"PVSD_FARM__AUTO_ADD": "perhaps"}, "farm.auto_add", "true or false"),
        ({"PVSD_LOGIN__PORT": "69x"}, "login.port", "whole number"),
        ({"PVSD_FARM__HEARTBEAT_INTERVAL": "fast"}, "farm.heartbeat_interval", "number"),
        ({"PVSD_FARM__DATABSE": "sqlite:///x"}, "farm.databse", "did you mean 'database'"),
        ({"PVSD_FRAM__DATABASE": "sqlite:///x"}, "fram", "unknown section (did you mean 'farm'"),
    ],
)
def test_environment_values_are_parsed_and_checked(
    environ: dict[str, str], key: str | None, reason: str
) -> None:
    if key is None:
        assert load_config(None, environ=environ).farm.auto_add is True
        return
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ=environ)
    assert caught.value.key == key
    assert reason in str(caught.value)
    assert "$PVSD_" in str(caught.value)


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("[farm]\ndatabse = 'x'", "farm.databse", "unknown key (did you mean 'database'?)"),
        ("[frm]\ndatabase = 'x'", "frm", "unknown section"),
        ("farm = 3", "farm", "must be a [section] table"),
        ("[farm]\nheartbeat_interval = '2s'", "farm.heartbeat_interval", "expected a number"),
        ("[farm]\nheartbeat_interval = 0", "farm.heartbeat_interval", "greater than 0"),
        ("[farm]\nauto_add = 1", "farm.auto_add", "true or false"),
        ("[farm]\ndead_after = 1.5", "farm.dead_after", "longer than farm.heartbeat_interval"),
        ("[farm]\ndatabase = 'mysql://x'", "farm.database", "not a database URL"),
        ("[farm]\ndatabase = 'sqlite:///'", "farm.database", "not a database URL"),
        ("[server]\naddress = '10.0.0.300'", "server.address", "not an IPv4 address"),
        ("[server]\naddress = 'fe80::1'", "server.address", "not an IPv4 address"),
        ("[server]\nbind = 'localhost'", "server.bind", "not an IPv4 address"),
        ("[server]\nname = 'bad name'", "server.name", "not a valid name"),
        ("[server]\nname = 7", "server.name", "expected a string"),
        ("[server]\npower = -1", "server.power", "greater than 0"),
        ("[login]\nport = 70000", "login.port", "not a port number"),
        ("[tftp]\nport = true", "tftp.port", "whole number"),
        ("[tftp]\nenabled = 'yes'", "tftp.enabled", "true or false"),
        ("[stream]\nports = '6930-6911'", "stream.ports", "first <= last"),
        ("[stream]\nports = '6911'", "stream.ports", "port range"),
        ("[stream]\nworkers = -2", "stream.workers", "0 (one per CPU)"),
        ("[log]\nlevel = 'loud'", "log.level", "not one of"),
        ("[stream]\nenabled = false", "login.enabled", "[stream] enabled = false"),
        ("[farm]\ndatabase = 'postgresql://h:99999/x'", "farm.database", "Port out of range"),
    ],
)
def test_every_bad_key_type_or_value_names_the_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key == key
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"config key {key}")
    assert caught.value.exit_code == 2


def test_file_problems_are_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        load_config(str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(BadInput, match="not valid TOML"):
        load_config(write(tmp_path, "[farm\n"), environ={})


def test_a_complete_config_round_trips(tmp_path: Path) -> None:
    """Loading the shipped file gives exactly the built-in defaults."""
    shipped = load_config(str(ROOT / "conf" / "pvsd.toml"), environ={})
    assert shipped == load_config(None, environ={})
    assert isinstance(shipped, Config)


def test_nested_tables_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[dhcp.bootfiles]\nbios = "ipxe.pxe"\n[dhcp.strategy]\nuefi_x64 = "via-4011"\n')
    config = load_config(path, environ={"PVSD_DHCP__BOOTFILES__UEFI_X64": "ipxe.efi"})
    assert config.dhcp.bootfiles.bios == "ipxe.pxe" and config.dhcp.bootfiles.uefi_x64 == "ipxe.efi"
    assert config.dhcp.strategy.uefi_x64 == "via-4011"


@pytest.mark.parametrize(
    ("toml", "key", "reason"),
    [
        ("[dhcp.bootfiles]\nbioss = 'x'", "dhcp.bootfiles.bioss", "did you mean 'bios'"),
        ("[dhcp.strategy]\nbios = 'sideways'", "dhcp.strategy.bios", "not direct or via-4011"),
        ("[dhcp]\nbootfiles = 'x'", "dhcp.bootfiles", "is a section, not a key"),
        ("[dhcp.nope]\nx = 1", "dhcp.nope", "unknown key"),
    ],
)
def test_nested_errors_name_the_whole_key(tmp_path: Path, toml: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, toml), environ={})
    assert caught.value.key == key and reason in str(caught.value)
