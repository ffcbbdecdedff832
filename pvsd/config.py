"""The configuration: TOML file, then PVSD_<SECTION>__<KEY> environment variables, then flags.

Every key is declared once, here, with its type, default, check and one line of help;
`conf/pvsd.toml` lists them all and a test keeps the two in step. The result is a tree
of frozen dataclasses. Any wrong key, type or value raises ConfigError naming the key
and the reason, which the command line turns into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvsd.errors import BadInput
from pvsd.names import NAME_PATTERN, NAME_RULE

__all__ = [
    "ApiConfig",
    "BootConfig",
    "BootstrapConfig",
    "Config",
    "ConfigError",
    "DhcpConfig",
    "FarmConfig",
    "LogConfig",
    "LoginConfig",
    "ServerConfig",
    "StreamConfig",
    "TargetConfig",
    "TftpConfig",
    "default_table",
    "load_config",
    "render_toml",
]

ENV_PREFIX = "PVSD_"
CONFIG_ENV = "PVSD_CONFIG"

Check = Callable[[Any], str | None]


class ConfigError(BadInput):
    """A config key is unknown, of the wrong type, or has a bad value."""

    def __init__(self, key: str, reason: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"config key {key}{where}: {reason}")
        self.key = key
        self.reason = reason


def _key(default: Any, help: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check})


# -- value checks: each returns the reason a value is wrong, or None --------------------------------


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a port number (1-65535)"


def _positive(value: float) -> str | None:
    return None if value > 0 else f"{value} must be greater than 0"


def _ipv4(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{value!r} is not an IPv4 address"
    return None


def _ipv4_or_empty(value: str) -> str | None:
    return None if value == "" else _ipv4(value)


def _name_or_empty(value: str) -> str | None:
    if value == "" or NAME_PATTERN.fullmatch(value):
        return None
    return f"{value!r} is not a valid name: use {NAME_RULE}"


def _database_url(value: str) -> str | None:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return None
    if value.startswith(("postgresql://", "postgres://")):
        try:
            urllib.parse.urlsplit(value).port  # noqa: B018 - raises for a port out of 0-65535
        except ValueError as error:
            return f"{value!r} is not a usable PostgreSQL URL: {error}"
        return None
    return f"{value!r} is not a database URL: use sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or postgresql://..."


def _log_level(value: str) -> str | None:
    levels = ("debug", "info", "warning", "error")
    return None if value in levels else f"{value!r} is not one of {', '.join(levels)}"


def _port_range(value: str) -> str | None:
    match = re.fullmatch(r"(\d+)-(\d+)", value)
    if not match:
        return f"{value!r} is not a port range like 6911-6930"
    first, last = int(match[1]), int(match[2])
    if not (1 <= first <= last <= 65535):
        return f"{value!r} is not a range of ports within 1-65535, first <= last"
    return None


def _zero_or_more_float(value: float) -> str | None:
    return None if value >= 0 else f"{value} must be 0 (none) or more"


def _positive_int(value: int) -> str | None:
    return None if value > 0 else f"{value} must be 1 or more"


def _mtu(value: int) -> str | None:
    return None if 576 <= value <= 65535 else f"{value} is not an MTU within 576-65535"


def _window(value: int) -> str | None:
    return None if 1 <= value <= 256 else f"{value} is not within 1-256"


def _workers(value: int) -> str | None:
    return None if value >= 0 else f"{value} must be 0 (one per CPU) or more"


# -- the sections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    name: str = _key("", "this server's name in the farm; empty means the host name", _name_or_empty)
    address: str = _key("127.0.0.1", "the IPv4 address targets use to reach this server (advertised)", _ipv4)
    bind: str = _key(
        "", "the address the services listen on; empty means the advertised address", _ipv4_or_empty
    )
    store: str = _key("var/store", "the folder holding this server's vDisk images")
    user: str = _key(
        "", "when started as root, switch to this user after binding the ports; empty keeps root"
    )
    power: float = _key(
        1.0, "power rating for load balancing: a server rated 2 takes twice the sessions", _positive
    )
    site: str = _key("", "the site this server belongs to; empty for none", _name_or_empty)


@dataclass(frozen=True)
class FarmConfig:
    database: str = _key(
        "sqlite:///var/farm.db",
        "the farm store: sqlite:///PATH (one host) or postgresql://... (many)",
        _database_url,
    )
    heartbeat_interval: float = _key(
        2.0, "seconds between heartbeats this server writes to the farm", _positive
    )
    dead_after: float = _key(8.0, "seconds without a heartbeat before a server counts as dead", _positive)
    auto_add: bool = _key(False, "create unknown devices at their first login, from a template")
    auto_add_template: str = _key(
        "",
        "with auto_add: the device whose vDisk, site and type new devices copy; empty: no vDisk",
        _name_or_empty,
    )
    max_versions: int = _key(
        5,
        "versions per vDisk past which the CLI warns: merge (vdisk merge --base) and delete old ones",
        _positive_int,
    )
    offline_dir: str = _key(
        "var/offline",
        "where each server keeps, in a folder of its name, its snapshot of the farm (0600: it "
        "holds the farm secret) and the records it queues while the database is down",
    )


@dataclass(frozen=True)
class LogConfig:
    level: str = _key("info", "least severe level logged: debug, info, warning or error", _log_level)


def _blksize_or_auto(value: int) -> str | None:
    return (
        None if value == 0 or 8 <= value <= 65464 else f"{value} is not 0 (path MTU) or a block size 8-65464"
    )


def _windowsize(value: int) -> str | None:
    return None if 1 <= value <= 64 else f"{value} is not a window size 1-64"


def _recovery(value: str) -> str | None:
    return None if value in ("restore", "reboot") else f"{value!r} is not restore or reboot"


def _zero_or_more(value: int) -> str | None:
    return None if value >= 0 else f"{value} must be 0 (none) or more"


@dataclass(frozen=True)
class TftpConfig:
    enabled: bool = _key(True, "serve boot files over TFTP")
    port: int = _key(69, "UDP port of the TFTP service", _port)
    root: str = _key("/srv/tftp", "folder of the files served; names resolve inside it only")
    ipxe_dir: str = _key(
        "/usr/lib/ipxe",
        "the installed iPXE binaries (Debian's ipxe package): files missing from root are served from "
        "here; empty: root only",
    )
    bind: str = _key("", "listen address for TFTP; empty means [server] bind", _ipv4_or_empty)
    max_transfers: int = _key(
        500, "transfers at once; more requests get TFTP error 3 (server busy)", _positive
    )
    max_per_client: int = _key(
        8,
        "transfers at once from one client address; more get TFTP error 3, so one address cannot "
        "take every slot (raise it when many targets share an address, behind NAT)",
        _positive_int,
    )
    reserved_transfers: int = _key(
        16,
        "extra transfers beyond max_transfers for the generated boot files only (pvs.bootstrap, "
        "pvs.ipxe, device scripts), so that a flood of other requests cannot lock targets out; 0: none",
        _zero_or_more,
    )
    single_port: bool = _key(False, "answer every transfer from the TFTP port itself (for NAT and docker)")
    max_blksize: int = _key(0, "largest block size granted; 0 means the path MTU allows", _blksize_or_auto)
    max_windowsize: int = _key(64, "largest RFC 7440 window granted (1-64)", _windowsize)
    timeout: float = _key(
        1.0, "seconds before the first retransmission; doubles each time, up to 8", _positive
    )
    abandon_after: float = _key(
        30.0, "seconds without an acknowledgement before a transfer is given up", _positive
    )
    first_block_timeout: float = _key(
        3.0,
        "seconds a transfer waits for its first block to be acknowledged before it ends, silently "
        "(PXE clients answer within milliseconds and ask again if the answer was lost)",
        _positive,
    )
    cache_mb: int = _key(
        256, "memory for files shared by concurrent transfers (files up to a quarter of it)", _positive
    )
    workers: int = _key(0, "processes serving TFTP (SO_REUSEPORT); 0 means one per CPU", _workers)
    busy_poll_us: int = _key(
        200,
        "with one transfer running, spin this long for its next ACK (lower latency); 0 disables",
        _workers,
    )


@dataclass(frozen=True)
class BootstrapConfig:
    login_polling_timeout_ms: int = _key(
        5000, "how long a target waits for a login reply before the next server", _positive
    )
    login_general_timeout_ms: int = _key(
        5000, "how long a target waits for any other reply before retrying", _positive
    )
    recovery: str = _key("restore", "when every server is lost: restore (keep trying) or reboot", _recovery)
    reboot_delay_s: int = _key(
        50, "with recovery = reboot: seconds of trying before the target reboots", _positive
    )
    chain_timeout_ms: int = _key(
        3000, "pvs.ipxe: how long iPXE waits on one server before trying the next", _positive
    )
    shell_prompt_ms: int = _key(
        0, "pvs.ipxe: offer the iPXE shell (Ctrl-B) this long before asking the servers; 0: never", _workers
    )


@dataclass(frozen=True)
class BootConfig:
    script: str = _key(
        "",
        "template file of the per-device iPXE script ({{name}} {{mac}} {{vdisk}} {{type}} {{enabled}} "
        "{{site}}); empty: pvsd's own, which boots the device's vDisk diskless",
    )
    cmdline: str = _key(
        "console=tty0 console=ttyS0,115200n8",
        "kernel command line of every diskless boot, before the version's own (vdisk import --cmdline); "
        "the default shows the console on the screen and on the first serial port",
    )
    download_timeout_ms: int = _key(
        10000,
        "device script: how long iPXE gives one server for the kernel or an initramfs before the next; "
        "a stopped server fails at once, a host that is down costs this long",
        _positive,
    )
    cache_dir: str = _key(
        "var/boot", "where this server keeps the agent overlays and boot media it builds (made again if gone)"
    )


@dataclass(frozen=True)
class BootfilesConfig:
    bios: str = _key("undionly.kpxe", "boot file for BIOS PXE firmware (option 93 = 0), under [tftp] root")
    uefi_x64: str = _key("snponly.efi", "boot file for x64 UEFI PXE firmware (93 = 7 or 9)")
    uefi_ia32: str = _key("", "boot file for 32-bit UEFI (93 = 6); empty: such clients get no answer")
    uefi_arm64: str = _key("", "boot file for ARM64 UEFI (93 = 11); empty: no answer")
    http_x64: str = _key(
        "ipxe.efi", "file for x64 UEFI HTTP boot (93 = 16), served over HTTP when [api] is on"
    )
    http_arm64: str = _key("", "file for ARM64 UEFI HTTP boot (93 = 19)")


def _strategy(value: str) -> str | None:
    return None if value in ("direct", "via-4011") else f"{value!r} is not direct or via-4011"


@dataclass(frozen=True)
class StrategyConfig:
    bios: str = _key(
        "direct", "direct: the offer names the boot file; via-4011: the client asks on 4011", _strategy
    )
    uefi_x64: str = _key("direct", "the same for x64 UEFI", _strategy)
    uefi_ia32: str = _key("direct", "the same for 32-bit UEFI", _strategy)
    uefi_arm64: str = _key("direct", "the same for ARM64 UEFI", _strategy)


def _answer(value: str) -> str | None:
    return None if value in ("all", "known") else f"{value!r} is not all or known"


def _interface(value: str) -> str | None:
    return None if len(value) < 16 and "/" not in value else f"{value!r} is not a network interface name"


def _relay_list(value: str) -> list[str]:
    return [entry for entry in re.split(r"[\s,]+", value) if entry]


def _relays(value: str) -> str | None:
    for entry in _relay_list(value):
        try:
            network = ipaddress.IPv4Network(entry)
        except ValueError as error:
            return (
                f"{entry!r} is not an IPv4 address or network ({error}); "
                "list addresses or networks separated by commas, e.g. 10.1.0.1, 10.2.0.0/16"
            )
        if network.prefixlen == 0:
            return f"{entry!r} would answer any giaddr, which makes a reflector: list the relays' networks"
        if (
            network.is_multicast
            or network.is_reserved
            or network.overlaps(ipaddress.IPv4Network("0.0.0.0/8"))
        ):
            return f"{entry!r} cannot be a relay: it is multicast, reserved (240.0.0.0/4) or in 0.0.0.0/8"
    return None


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = _key(True, "answer PXE clients as a proxy DHCP server beside the site's DHCP server")
    port: int = _key(67, "UDP port of the proxy DHCP service", _port)
    pxe_port: int = _key(4011, "UDP port of the PXE boot-server service; replies leave from it", _port)
    interface: str = _key(
        "", "network interface to serve (SO_BINDTODEVICE); empty: every interface", _interface
    )
    bind: str = _key("", "address port 67 listens on; empty: all (needed to hear broadcasts)", _ipv4_or_empty)
    answer: str = _key("all", "all: every PXE client; known: only MACs registered in the farm", _answer)
    offer_delay_ms: int = _key(
        0, "wait this long before offering, to make another server preferred", _workers
    )
    per_mac_per_second: int = _key(5, "requests answered per MAC and second; the rest are dropped", _positive)
    queue: int = _key(1024, "requests waiting at most; past that a flood is dropped, not queued", _positive)
    script: str = _key("pvs.ipxe", "what iPXE is given (user class iPXE or option 175): the bootstrap script")
    relays: str = _key(
        "",
        "relay agents answered (their giaddr), addresses or networks separated by commas; empty: any "
        "relay on a subnet of the interface the request came in on",
        _relays,
    )
    bootfiles: BootfilesConfig = field(default_factory=BootfilesConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    @property
    def relay_networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        """`relays` parsed (checked when the config was loaded)."""
        return tuple(ipaddress.IPv4Network(entry) for entry in _relay_list(self.relays))


def _affinity(value: str) -> str | None:
    choices = ("none", "best-effort", "fixed")
    return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"


def _prefix(value: int) -> str | None:
    return None if 0 <= value <= 32 else f"{value} is not an IPv4 prefix length (0-32)"


def _payload(value: int) -> str | None:
    return None if 512 <= value <= MAX_STREAM_PAYLOAD else f"{value} is not within 512-{MAX_STREAM_PAYLOAD}"


def _burst(value: int) -> str | None:
    return None if 4096 <= value <= 1 << 20 else f"{value} is not within 4096-1048576 bytes"


# The largest DATA payload: a 64 KiB IP datagram less the IP, UDP, stream header and offset.
MAX_STREAM_PAYLOAD = 65535 - 20 - 8 - 18 - 8


@dataclass(frozen=True)
class LoginConfig:
    enabled: bool = _key(True, "accept target logins")
    port: int = _key(6910, "UDP port of the login service", _port)
    ticket_lifetime: float = _key(
        7 * 86400.0, "seconds a ticket stays valid for logging in again to another server", _positive
    )
    affinity: str = _key(
        "none", "subnet affinity when choosing the I/O server: none, best-effort or fixed", _affinity
    )
    affinity_prefix: int = _key(24, "the prefix length that makes a server and a target one subnet", _prefix)
    max_pending: int = _key(
        1024,
        "logins waiting to be decided at once; more are dropped (counted, logged) and the targets retry",
        _positive_int,
    )


@dataclass(frozen=True)
class StreamConfig:
    enabled: bool = _key(True, "stream vDisks to targets")
    ports: str = _key("6911-6930", "UDP port range of the I/O workers, one port per worker", _port_range)
    workers: int = _key(0, "number of I/O worker processes; 0 means one per CPU", _workers)
    cache_dir: str = _key(
        "var/cache", "where server-side write caches live; servers sharing it can take over each other's"
    )
    max_payload: int = _key(
        MAX_STREAM_PAYLOAD, "largest DATA payload in bytes; a target asks for less to fit its MTU", _payload
    )
    max_burst: int = _key(32768, "bytes answered to one READ, in as many datagrams as needed", _burst)
    idle_timeout: float = _key(
        60.0,
        "seconds without a request before a worker forgets a session (targets send keepalives)",
        _positive,
    )


@dataclass(frozen=True)
class TargetConfig:
    mtu: int = _key(
        1506, "the target's MTU: what it asks the server to fit DATA into (PVS default 1506)", _mtu
    )
    window: int = _key(8, "requests a target keeps in flight", _window)
    failover_after: int = _key(
        3, "timeouts in a row before a target logs in again to the next server", _positive_int
    )
    keepalive_interval: float = _key(10.0, "seconds between keepalives of an idle target", _positive)
    cache_ram_mb: int = _key(
        256, "the agent's write cache (standard mode, cache on the device): MiB kept in RAM", _workers
    )
    cache_max_mb: int = _key(
        1024, "the write cache in all, RAM plus the overflow file; past it writes fail with ENOSPC", _workers
    )
    cache_dir: str = _key("var/target", "where the agent keeps its cache overflow file and status file")


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = _key(True, "serve /boot/ (targets) and /replication/ (peers) over HTTP")
    port: int = _key(54321, "TCP port of the HTTP service", _port)


@dataclass(frozen=True)
class ReplicationConfig:
    enabled: bool = _key(
        True, "pull the vDisk versions this server lacks from the peers that hold them (their [api])"
    )
    parallel: int = _key(4, "chunks fetched at once per version, spread over the peers", _positive_int)
    max_rate_mbit: float = _key(
        0.0,
        "cap on the bytes this server pulls, in Mbit/s (0: none), so copies leave room for streaming",
        _zero_or_more_float,
    )
    verify_interval_s: float = _key(
        86400.0, "how often each held version is scrubbed, chunk by chunk, for bit rot, in seconds", _positive
    )
    verify_rate_mbit: float = _key(
        800.0, "cap on the scrub's reading and hashing, in Mbit/s (0: none)", _zero_or_more_float
    )
    interval_s: float = _key(
        5.0, "how often the farm is looked at for versions to pull, in seconds", _positive
    )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    farm: FarmConfig = field(default_factory=FarmConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tftp: TftpConfig = field(default_factory=TftpConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    boot: BootConfig = field(default_factory=BootConfig)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    login: LoginConfig = field(default_factory=LoginConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)


REFERENCE_HEADER = """\
# pvsd configuration: every key, with its default and what it does.
# pvsd reads this file when given --config FILE or $PVSD_CONFIG; with neither it uses these defaults.
# Any key can also be set from the environment as PVSD_<SECTION>__<KEY>, e.g. PVSD_FARM__DATABASE=...
# Services marked "not built yet" have their section so that configs written now keep working.
# This file is `pvsd config defaults`; a test keeps the two identical.
"""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def render_toml(config: Config, with_help: bool) -> str:
    """The config as TOML; with_help puts each key's one-line help above it."""
    lines = [REFERENCE_HEADER] if with_help else []

    def section(name: str, values: Any) -> None:
        lines.append(f"[{name}]")
        tables = []
        for key in dataclasses.fields(values):
            value = getattr(values, key.name)
            if dataclasses.is_dataclass(value):
                tables.append((f"{name}.{key.name}", value))
                continue
            if with_help:
                lines.append(f"# {key.metadata['help']}")
            lines.append(f"{key.name} = {_toml_value(value)}")
        lines.append("")
        for table_name, table in tables:
            section(table_name, table)

    for item in dataclasses.fields(config):
        section(item.name, getattr(config, item.name))
    return "\n".join(lines).rstrip() + "\n"


def default_table() -> dict[str, dict[str, Any]]:
    """The defaults as a TOML-shaped table, before host-dependent values are filled in."""
    return dataclasses.asdict(Config())


# -- loading ------------------------------------------------------------------------------------------


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from defaults, the file, the environment and flag overrides, in that order.

    `path` falls back to $PVSD_CONFIG; with neither, only the built-in defaults are used.
    `overrides` maps "section.key" to already-typed values (from command-line flags).
    """
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV) or None
    given: dict[str, tuple[Any, str]] = {}  # "section[.table].key" -> (value, where it came from)
    if path is not None:
        _flatten(_read_file(path), "", path, given)
    for var, value in sorted(env.items()):
        if var.startswith(ENV_PREFIX) and "__" in var:
            given[var[len(ENV_PREFIX) :].lower().replace("__", ".")] = (value, f"${var}")
    for dotted, value in (overrides or {}).items():
        given[dotted] = (value, "command line")
    used: set[str] = set()
    config = _build(Config, "", given, used)
    for dotted in sorted(set(given) - used):
        raise _unknown(dotted, given[dotted][1])
    return _resolve(_check_together(config))


def _read_file(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise BadInput(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"config file {path} is not valid TOML: {error}") from None
    except OSError as error:
        raise BadInput(f"config file {path} cannot be read: {error.strerror}") from None


def _flatten(table: Mapping[str, Any], prefix: str, source: str, out: dict[str, tuple[Any, str]]) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", source, out)
        elif not prefix:
            raise ConfigError(key, "must be a [section] table", source)
        else:
            out[f"{prefix}{key}"] = (value, source)


def _unknown(dotted: str, source: str) -> ConfigError:
    """The error for a key that no section declares, suggesting the closest that exists."""
    parts = dotted.split(".")
    cls: Any = Config
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            what = "section" if depth == 0 else "key"
            return ConfigError(".".join(parts[: depth + 1]), f"unknown {what}{_suggest(part, hints)}", source)
        cls = hints[part]
    return ConfigError(dotted, "is a section, not a key", source)


def _build(cls: type[Any], prefix: str, given: dict[str, tuple[Any, str]], used: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        dotted = f"{prefix}{item.name}"
        typ = hints[item.name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            values[item.name] = _build(typ, f"{dotted}.", given, used)
            continue
        if dotted not in given:
            continue
        used.add(dotted)
        value, source = given[dotted]
        typed = _typed(value, typ, dotted, source)
        check = item.metadata.get("check")
        reason = check(typed) if check else None
        if reason:
            raise ConfigError(dotted, reason, source)
        values[item.name] = typed
    return cls(**values)


def _check_together(config: Config) -> Config:
    """Checks that involve more than one key."""
    if config.farm.dead_after <= config.farm.heartbeat_interval:
        raise ConfigError(
            "farm.dead_after",
            f"{config.farm.dead_after} must be longer than farm.heartbeat_interval "
            f"({config.farm.heartbeat_interval}), or live servers would be reported dead",
        )
    if config.login.enabled and not config.stream.enabled:
        raise ConfigError(
            "login.enabled",
            "the login service hands out this server's I/O workers, which [stream] enabled = false "
            "turns off: enable both, or set [login] enabled = false too",
        )
    return config


def _bool_from_text(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# For each key type: what the error says is expected, which TOML values are accepted,
# and how a string from the environment is parsed.
_TYPES: dict[type[Any], tuple[str, Callable[[Any], bool], Callable[[str], Any]]] = {
    bool: ("true or false", lambda value: isinstance(value, bool), _bool_from_text),
    int: ("a whole number", lambda value: isinstance(value, int) and not isinstance(value, bool), int),
    float: ("a number", _is_number, float),
    str: ("a string", lambda value: isinstance(value, str), str),
}


def _typed(value: Any, typ: type[Any], key: str, source: str) -> Any:
    """Check a TOML value against the key's type; strings from the environment are parsed first."""
    expected, accepts, from_text = _TYPES[typ]
    if source.startswith("$") and isinstance(value, str):
        try:
            return from_text(value.strip())
        except ValueError:
            pass
    elif accepts(value):
        return typ(value)
    raise ConfigError(key, f"expected {expected}, got {value!r}", source)


def _suggest(name: str, known: Mapping[str, Any] | dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve(config: Config) -> Config:
    """Fill in the defaults that depend on the host or on other keys."""
    server = config.server
    if not server.name:
        hostname = socket.gethostname().split(".")[0]
        server = dataclasses.replace(server, name=hostname if NAME_PATTERN.fullmatch(hostname) else "pvsd")
    if not server.bind:
        server = dataclasses.replace(server, bind=server.address)
    tftp = config.tftp
    if not tftp.bind:
        tftp = dataclasses.replace(tftp, bind=server.bind)
    return dataclasses.replace(config, server=server, tftp=tftp)
