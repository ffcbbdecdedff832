"""A two-server streaming farm on loopback for the login and stream tests: one farm, one store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, wait_for

SERVERS = {"pvs1": "127.0.0.11", "pvs2": "127.0.0.12"}
HEARTBEAT = 0.5
DEAD_AFTER = 3.0


def random_image(path: Path, size: int, seed: int = 7) -> str:
    """A disk image of random bytes (generated, never downloaded); returns its sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * 32  # 1 KiB seed block
    with path.open("wb") as out:
        done = 0
        counter = 0
        while done < size:
            # Each 1 MiB differs from the others, so a misplaced block changes the hash.
            chunk = hashlib.sha256(counter.to_bytes(8, "big") + block).digest() * 32768
            chunk = chunk[: min(len(chunk), size - done)]
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            counter += 1
    return digest.hexdigest()


@dataclass
class StreamFarm:
    env: dict[str, str]
    folder: Path
    image: Path
    sha256: str
    size: int
    processes: dict[str, ServeProcess] = field(default_factory=dict)
    netns: str | None = None  # servers and targets run in this network namespace when set
    stack: ExitStack = field(default_factory=ExitStack)

    def run(self, *argv: str, timeout: float = 60) -> str:
        result = pvsd(self.env, *argv, timeout=timeout, namespace=self.netns)
        assert result.returncode == 0, f"pvsd {' '.join(argv)}: {result.stderr}"
        return result.stdout

    def start(self, name: str) -> ServeProcess:
        process = self.stack.enter_context(serve(self.env, name, SERVERS[name], self.folder, self.netns))
        self.processes[name] = process
        # "serving" is logged once every port is bound: logins sent before would be lost.
        wait_for(
            lambda: any(e["event"] == "serving" for e in process.log_events()), timeout=30, interval=0.05
        )
        return process

    def wait_verified(
        self, vdisk: str, servers: tuple[str, ...] = tuple(SERVERS), timeout: float = 30
    ) -> None:
        def verified() -> bool:
            replicas = json.loads(self.run("vdisk", "replicas", vdisk, "--json"))
            return {r["server"] for r in replicas if r["state"] == "verified"} >= set(servers)

        wait_for(verified, timeout=timeout)

    def sessions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = json.loads(self.run("session", "list", "--json"))
        return result

    def servers_arg(self) -> str:
        return ",".join(SERVERS.values())


@contextmanager
def stream_farm(
    tmp_path: Path,
    size: int = 64 << 20,
    database: str | None = None,
    image: Path | None = None,
    cache: str = "server",
    sector_size: int = 512,
    **keys: str,
) -> Iterator[StreamFarm]:
    """Two servers (pvs1, pvs2) on 127.0.0.11/.12 sharing one SQLite farm, store and cache folder,
    serving the vDisk `disk` (random data of `size`, or `image`; standard mode, cache on the
    server unless `cache` says otherwise) to device `t0`."""
    (tmp_path / "store").mkdir(parents=True, exist_ok=True)
    settings = {
        "farm__heartbeat_interval": str(HEARTBEAT),
        "farm__dead_after": str(DEAD_AFTER),
        "server__store": str(tmp_path / "store"),
        "stream__cache_dir": str(tmp_path / "cache"),
        "stream__workers": "2",
        "tftp__enabled": "false",
        "login__enabled": "true",
        "stream__enabled": "true",
        "target__failover_after": "3",
    }
    env = pvsd_env(database or f"sqlite:///{tmp_path}/farm.db", **{**settings, **keys})
    if image is None:
        image = tmp_path / "disk.raw"
        sha = random_image(image, size)
    else:
        sha = hashlib.sha256(image.read_bytes()).hexdigest()
        size = image.stat().st_size
    farm = StreamFarm(env, tmp_path, image, sha, size)
    farm.run("farm", "init")
    # --no-boot: a guest's ext4 with no kernel, booted here through the host agent
    farm.run(
        "vdisk",
        "import",
        "disk",
        str(image),
        "--cache",
        cache,
        "--sector-size",
        str(sector_size),
        "--no-boot",
        "--quiet",
    )
    farm.run("device", "add", "52:54:00:00:00:00", "--name", "t0", "--vdisk", "disk")
    with farm.stack:
        yield farm
