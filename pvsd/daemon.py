"""`pvsd serve`: join the farm, run the enabled services, heartbeat, and leave cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import structlog

from pvsd.api import ApiService, BootHttp, Resolver
from pvsd.api.replication import ReplicationHttp
from pvsd.api.status import status_routes
from pvsd.boot.builds import BootBuilds
from pvsd.boot.media import MediaNetwork, media_servers
from pvsd.boot.media_iso import build_media
from pvsd.boot.publish import BootFiles, Publisher
from pvsd.boot.resolvers import VersionFiles
from pvsd.config import Config, ConfigError
from pvsd.dhcp.server import DhcpServer, boot_policy
from pvsd.errors import Failure, PvsdError
from pvsd.farm.changes import ChangeFeed
from pvsd.farm.devices import DeviceView
from pvsd.farm.errors import StoreUnavailable
from pvsd.farm.membership import Membership
from pvsd.farm.offline import OfflineFarm
from pvsd.farm.records import Device, Server, ServerState
from pvsd.farm.snapshot import FarmSnapshot, SnapshotError, read_snapshot
from pvsd.farm.store import FarmStore, backend_for, open_store
from pvsd.preflight import address_problem, bind_hint, boot_file_problems
from pvsd.privileges import drop_privileges
from pvsd.stream.service import StreamService, stream_ports
from pvsd.tftp.server import TftpServer
from pvsd.tftp.workers import TftpWorkers, share_of, worker_count
from pvsd.vdisk.replicator import Replicator

__all__ = ["advertised_ports", "offline_folder", "serve"]


MEDIA_FILE = "pvsd.iso"  # served as /boot/media/pvsd.iso


def advertised_ports(config: Config) -> dict[str, int]:
    """The ports other servers and targets need to reach this one, as recorded in the farm."""
    io_ports = stream_ports(config)
    return {
        "tftp": config.tftp.port,
        "dhcp": config.dhcp.port,
        "pxe": config.dhcp.pxe_port,
        "login": config.login.port,
        "stream_first": io_ports[0],
        "stream_last": io_ports[-1],
        "api": config.api.port,
    }


# Which farm changes (audit actions, pvsd/farm/changes.py) each part of a server reads at once.
# Sessions are left to the periodic refreshes: one login must not make every server re-read.
DEVICE_CHANGES = ("device.", "vdisk.", "replica.", "site.")
SERVER_CHANGES = ("server.",)
VERSION_CHANGES = ("vdisk.", "replica.", "server.")
SNAPSHOT_CHANGES = ("device.", "vdisk.", "replica.", "server.", "site.", "farm.")


async def serve(
    config: Config,
    actor: str,
    log: structlog.stdlib.BoundLogger,
    take_over: bool = False,
    trust_database: bool = False,
) -> None:
    """Run one server until SIGTERM or SIGINT. Errors meant for the user propagate as PvsdError.
    `take_over` replaces a live process serving under this server's name; `trust_database`
    uses the farm database even if it looks older than this server's snapshot."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # Installed first, so that a signal during start-up still ends in a clean leave.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    reloads: list[Callable[[], None]] = []

    def hangup() -> None:
        # SIGHUP at logout used to kill `pvsd serve &` without a word or a clean leave. Logs go
        # to stderr (nothing to re-open); what can change without a restart is re-read.
        log.info("SIGHUP: reloading what can be reloaded ([boot] script); other keys need a restart")
        for reload in reloads:
            try:
                reload()
            except PvsdError as error:
                log.error("reload failed; keeping what was loaded", error=str(error))

    loop.add_signal_handler(signal.SIGHUP, hangup)

    # Before the farm hears of this server: a start that cannot listen leaves no record behind.
    unusable = address_problem(config.server.bind)
    if unusable is not None:
        raise Failure(f"cannot listen on {config.server.bind}: {unusable}")
    store, snapshot = await _open_farm(config, actor, log)
    try:
        membership = Membership(
            store,
            log,
            name=config.server.name,
            address=config.server.address,
            ports=advertised_ports(config),
            power=config.server.power,
            site=config.server.site or None,
            heartbeat_interval=config.farm.heartbeat_interval,
            dead_after=config.farm.dead_after,
        )
        if config.server.address.startswith("127."):
            log.warning(
                "advertising a loopback address: only targets on this host can reach this server",
                address=config.server.address,
                hint="set [server] address to this host's address on the boot network",
            )
        offline = OfflineFarm(
            store,
            offline_folder(config),
            log.bind(service="offline"),
            server=config.server.name,
            interval=config.farm.heartbeat_interval,
            active_within=config.stream.idle_timeout + 2 * config.farm.heartbeat_interval,
            trust_database=trust_database,
        )
        if snapshot is None:
            this = await membership.join(take_over)
            await membership.refresh(loop.time())
            farm = await asyncio.to_thread(store.get_farm)
            offline.load()  # what this server saw last: a database restored from a backup is noticed
        else:
            offline.snapshot = snapshot
            membership.seed(list(snapshot.servers), loop.time())
            this = _this_server(config, membership)
            farm = snapshot.farm
        services: list[Service] = [offline]
        changes = ChangeFeed(config.farm.database, log.bind(service="changes"))
        changes.subscribe("servers", SERVER_CHANGES, membership.changed)
        changes.subscribe("snapshot", SNAPSHOT_CHANGES, offline.changed)
        try:
            await offline.start()
            services += await _start_services(
                config, farm.name, farm.secret, this, membership, offline, changes, log, reloads
            )
            # Last in, so closed first: no refresh starts while the services close.
            await changes.start()
            services.append(changes)
            if drop_privileges(config.server.user):
                log.info("switched user after binding", user=config.server.user)
            log.info(
                "serving",
                server=config.server.name,
                address=config.server.address,
                bind=config.server.bind,
                database=store.url,
                database_state=str(offline.state),
            )
            heartbeats = asyncio.create_task(membership.run(), name="heartbeat")
            stop_wait = asyncio.create_task(stopping.wait(), name="stop")
            done, pending = await asyncio.wait({heartbeats, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if heartbeats in done:
                heartbeats.result()  # only ends by raising, e.g. MembershipLost
            log.info("stopping on signal", server=config.server.name)
        finally:
            for service in reversed(services):
                await service.close()
            await membership.leave()
    finally:
        await asyncio.to_thread(store.close)


class Service(Protocol):
    async def close(self) -> None: ...


def offline_folder(config: Config) -> Path:
    """Each server its own folder: two servers of one host must never share a queue."""
    return Path(config.farm.offline_dir) / config.server.name


async def _open_farm(
    config: Config, actor: str, log: structlog.stdlib.BoundLogger
) -> tuple[FarmStore, FarmSnapshot | None]:
    """The farm store, checked; or, when the database is unreachable, a store that connects
    once it is back and the snapshot this server serves from until then."""
    try:
        return await asyncio.to_thread(open_store, config.farm.database, actor), None
    except StoreUnavailable as error:
        unreachable = str(error)
        try:
            snapshot = read_snapshot(offline_folder(config))
        except SnapshotError as missing:
            raise StoreUnavailable(f"{error}; and no farm snapshot to start from: {missing}") from error
    log.warning(
        "farm database unreachable at start: serving from the farm snapshot until it returns",
        database=backend_for(config.farm.database).display_url,
        error=unreachable,
        snapshot_taken_at=datetime.fromtimestamp(snapshot.taken_at, UTC).isoformat(timespec="seconds"),
        devices=len(snapshot.devices),
        servers=len(snapshot.servers),
    )
    return FarmStore(backend_for(config.farm.database), actor), snapshot


def _this_server(config: Config, membership: Membership) -> Server:
    """This server's record when it cannot register: the snapshot's, with this run's address."""
    known = next((s for s in membership.known_servers(0.0) if s.name == config.server.name), None)
    return Server(
        name=config.server.name,
        address=config.server.address,
        ports=advertised_ports(config),
        power=config.server.power,
        site=(config.server.site or None) if known is None else known.site,
        state=ServerState.RUNNING,
        instance=membership.instance,
        started_at=None,
        last_heartbeat=None,
        heartbeat_age=0.0,
    )


async def _start_services(
    config: Config,
    farm: str,
    secret: str,
    this: Server,
    membership: Membership,
    offline: OfflineFarm,
    changes: ChangeFeed,
    log: structlog.stdlib.BoundLogger,
    reloads: list[Callable[[], None]],
) -> list[Service]:
    """Bind every enabled service; a port that cannot be bound stops the start with a clear error.
    What can be re-read on SIGHUP is added to `reloads`."""
    devices = DeviceView(membership.store, config.farm.heartbeat_interval)
    if offline.snapshot is not None:
        # Known devices keep their proxy offers and boot scripts while the database is down.
        devices.devices = {device.mac: device for device in offline.snapshot.devices}
        devices.vdisks = {vdisk.name: vdisk for vdisk in offline.snapshot.vdisks}
    services: list[Service] = [devices]
    changes.subscribe("devices", DEVICE_CHANGES, devices.refresh)
    try:
        template = _device_template(config)
        await devices.start()
        publishers: list[Publisher] = []
        if config.tftp.enabled:
            tftp, workers = await _start_tftp(config, log)
            services += [tftp, workers]
            publishers += [tftp.registry, workers]
        if config.api.enabled:
            api = await _start_api(config, log, offline)
            services.append(api)
            publishers.append(api.boot)
            files = VersionFiles(
                Path(config.server.store),
                lambda: devices.vdisks,
                BootBuilds(Path(config.boot.cache_dir), log),
            )
            api.boot.add_resolver("vdisk/", files.boot_file)
            api.boot.add_resolver("agent/", files.agent_overlay)
            api.boot.add_resolver("media/", _media_resolver(config, farm, membership, files.builds))
        if publishers:
            _publish_boot_files(config, farm, this, membership, devices, publishers, template, log, reloads)
        if config.dhcp.enabled:
            services.append(await _start_dhcp(config, devices, log))
            for problem in boot_file_problems(config):
                # A target offered this file stops with "file not found", far from any log: say it here.
                log.error("offered boot file cannot be served", key=problem.key, problem=problem.message)
        if config.stream.enabled or config.login.enabled:
            services.append(await _start_stream(config, secret, membership, offline, log))
        if config.replication.enabled:
            replicator = Replicator(config, membership, log.bind(service="replication"))
            await replicator.start()
            services.append(replicator)
            changes.subscribe("replication", VERSION_CHANGES, replicator.changed)
    except BaseException:
        for service in reversed(services):
            await service.close()
        raise
    return services


def _device_template(config: Config) -> str | None:
    if not config.boot.script:
        return None
    try:
        return Path(config.boot.script).read_text()
    except OSError as error:
        raise ConfigError("boot.script", f"cannot read {config.boot.script}: {error.strerror}") from None


async def _start_tftp(config: Config, log: structlog.stdlib.BoundLogger) -> tuple[TftpServer, TftpWorkers]:
    processes = worker_count(config.tftp.workers)
    tftp_config = share_of(config.tftp, processes)
    tftp = TftpServer.from_config(tftp_config, log, reuse_port=processes > 1)
    try:
        await tftp.start()
    except OSError as error:
        hint = bind_hint(error, "another TFTP server running? set [tftp] port or enabled = false")
        raise Failure(f"cannot listen for TFTP on {config.tftp.bind}:{config.tftp.port}: {hint}") from error
    workers = TftpWorkers(tftp_config, config.server.user, processes - 1, log)
    try:
        await workers.start()
    except BaseException:
        await tftp.close()
        raise
    return tftp, workers


async def _start_api(config: Config, log: structlog.stdlib.BoundLogger, offline: OfflineFarm) -> ApiService:
    boot = BootHttp([Path(config.tftp.root), Path(config.tftp.ipxe_dir)], log.bind(service="http"))
    host = config.server.bind or config.server.address
    replication = ReplicationHttp(Path(config.server.store), log.bind(service="replication"))
    status = status_routes(lambda: {"server": config.server.name, **offline.status()})
    api = ApiService(boot, host, config.api.port, log.bind(service="http"), [*replication.routes(), *status])
    try:
        await api.start()
    except OSError as error:
        hint = bind_hint(
            error, "another pvsd or web server on this address? set [api] port or enabled = false"
        )
        raise Failure(f"cannot listen for HTTP on {host}:{config.api.port}: {hint}") from error
    return api


def _media_resolver(config: Config, farm: str, membership: Membership, builds: BootBuilds) -> Resolver:
    """`media/pvsd.iso`: the boot media for the farm's live servers now, this one first, by DHCP."""

    async def resolve(name: str) -> Path | None:
        if name != MEDIA_FILE:
            return None
        servers = membership.known_servers(asyncio.get_running_loop().time())
        live = media_servers(config.server.name, servers, config.farm.dead_after)
        key = hashlib.sha256(" ".join(f"{s.name}={s.address}:{s.ports.get('api')}" for s in live).encode())

        def build(path: Path) -> str:
            embedded = build_media(
                path,
                servers,
                config.server.name,
                MediaNetwork(),
                config.bootstrap,
                config.api.port,
                config.farm.dead_after,
                farm,
            )
            return "boot media for " + ", ".join(s.name for s in embedded)

        return await builds.media(key.hexdigest()[:12], build)

    return resolve


def _publish_boot_files(
    config: Config,
    farm: str,
    this: Server,
    membership: Membership,
    devices: DeviceView,
    publishers: list[Publisher],
    template: str | None,
    log: structlog.stdlib.BoundLogger,
    reloads: list[Callable[[], None]],
) -> None:
    """pvs.bootstrap, pvs.ipxe and the device scripts, to TFTP and HTTP alike, kept up to date."""
    files = BootFiles(publishers, config, farm, this, template)
    files.servers_changed(membership.known_servers(asyncio.get_running_loop().time()))
    first = files.devices_changed(list(devices.devices.values()), devices.vdisks)
    log.info("device scripts published", devices=len(first.published))

    def devices_changed(changed: list[Device]) -> None:
        scripts = files.devices_changed(changed, devices.vdisks)
        for mac in scripts.published:
            log.info("device script published", mac=mac)
        for mac in scripts.withdrawn:
            log.info("device script withdrawn", mac=mac)

    def servers_changed(servers: list[Server]) -> None:
        files.servers_changed(servers)
        devices_changed(list(devices.devices.values()))  # the scripts list the live servers

    def reload_template() -> None:
        files.template = _device_template(config)
        devices_changed(list(devices.devices.values()))

    membership.watchers.append(servers_changed)
    devices.watchers.append(devices_changed)
    reloads.append(reload_template)


async def _start_dhcp(config: Config, devices: DeviceView, log: structlog.stdlib.BoundLogger) -> Service:
    loopback = "lo"  # Linux names the loopback device lo in every network namespace
    dhcp = config.dhcp
    if ipaddress.IPv4Address(config.server.address).is_loopback and not dhcp.interface and not dhcp.bind:
        # Only this host can reach a loopback address: serving the LAN would offer it to clients
        # that cannot use it (the policy refuses those anyway). Until [server] address is set,
        # proxy DHCP listens on loopback alone, which is what every other service does too.
        dhcp = dataclasses.replace(dhcp, interface=loopback)
        log.warning(
            "proxy DHCP serves loopback only: [server] address is a loopback address",
            address=config.server.address,
            interface=loopback,
            hint="set [server] address to this host's address on the boot network",
        )
    policy = boot_policy(dhcp, config.server.address, config.api.port if config.api.enabled else None)
    server = DhcpServer(dhcp, policy, config.server.bind, devices.is_known, log)
    try:
        await server.start()
    except OSError as error:
        raise Failure(
            f"cannot listen for proxy DHCP on ports {config.dhcp.port} and {config.dhcp.pxe_port}: "
            f"{error.strerror} (another DHCP server on this host? set [dhcp] port, bind or enabled = false)"
        ) from error
    return server


async def _start_stream(
    config: Config,
    secret: str,
    membership: Membership,
    offline: OfflineFarm,
    log: structlog.stdlib.BoundLogger,
) -> Service:
    stream = StreamService(config, membership.store, secret, membership, log, offline)
    try:
        await stream.start()
    except OSError as error:
        hint = bind_hint(
            error, "another pvsd on this address? set [login] port, [stream] ports or enabled = false"
        )
        raise Failure(f"cannot listen for logins or streaming on {config.server.bind}: {hint}") from error
    return stream
