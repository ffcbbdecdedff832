"""The compose farm (docker-compose.yml) under test: a Docker engine, the images, and one
project brought up and always taken down again with its containers, networks and volumes.

The engine is this machine's: started here (and stopped again) when none answers, as
`make images` does. Docker changes the host's firewall when it starts (the FORWARD policy,
br_netfilter); what this module started, it puts back as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from support import needs

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (("docker", "docker.io"), ("dockerd", "docker.io"), ("docker-compose", "docker-compose"))
ENGINE_START_S = 60.0
BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


class ComposeError(AssertionError):
    pass


def compose_command() -> list[str]:
    """Compose v2 (`docker compose`) where the client has it, else Debian's docker-compose 1.29."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def _answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def _forward_policy() -> str | None:
    if shutil.which("iptables") is None:
        return None
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True, check=False).stdout
    return next((line.split()[2] for line in rules.splitlines() if line.startswith("-P FORWARD")), None)


@contextlib.contextmanager
def docker_engine(log: Path) -> Iterator[None]:
    """A Docker engine that answers for the duration; one started here is stopped at the end,
    and the firewall settings it changed are put back."""
    needs.root("a Docker engine")
    needs.tools(*PACKAGES)
    if _answers():
        yield
        return
    policy, bridge_nf = _forward_policy(), BRIDGE_NF.read_text().strip() if BRIDGE_NF.exists() else None
    with log.open("w") as out:
        dockerd = subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + ENGINE_START_S
        while not _answers():
            if dockerd.poll() is not None or time.monotonic() > deadline:
                raise ComposeError(f"dockerd did not start; its log ends:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dockerd.kill()
            dockerd.wait()
        if policy is not None:
            subprocess.run(["iptables", "-P", "FORWARD", policy], check=False)
        if BRIDGE_NF.exists():
            BRIDGE_NF.write_text((bridge_nf or "0") + "\n")


def build_images(log: Path) -> None:
    """`make images`: the base built with debootstrap where no registry answers, then pvsd:local."""
    with log.open("w") as out:
        done = subprocess.run(
            ["scripts/images.sh"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=1200, check=False
        )
    if done.returncode != 0:
        raise ComposeError(f"make images failed; its output ends:\n{log.read_text()[-4000:]}")


@dataclass(frozen=True)
class ComposeFarm:
    project: str

    def compose(
        self, *argv: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*compose_command(), "--project-name", self.project, *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("PVSD_")},
        )
        if check and done.returncode != 0:
            raise ComposeError(f"compose {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        return done

    def container(self, service: str) -> str:
        found = self.compose("ps", "-q", service).stdout.split()
        if not found:
            raise ComposeError(f"no container for service {service}")
        return found[0]

    def pvsd(self, service: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A pvsd command in `service`'s container, which has the farm's config; not checked."""
        return self.compose("exec", "-T", service, "pvsd", *argv, timeout=timeout, check=False)

    def pvsd_json(self, service: str, *argv: str) -> list[dict[str, object]]:
        done = self.pvsd(service, *argv, "--json")
        if done.returncode != 0:
            raise ComposeError(f"pvsd {' '.join(argv)} in {service} failed:\n{done.stdout}{done.stderr}")
        value: list[dict[str, object]] = json.loads(done.stdout)
        return value

    def read(self, service: str, path: str) -> str:
        return self.compose("exec", "-T", service, "cat", path).stdout

    def logs(self, service: str) -> str:
        done = subprocess.run(
            ["docker", "logs", self.container(service)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return (done.stdout + done.stderr).replace("\r", "")

    def health(self, service: str) -> str:
        done = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                self.container(service),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    def leftovers(self) -> list[str]:
        """Whatever Docker still holds of this project: containers, networks, volumes."""
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind, argv in (
            ("container", ["docker", "ps", "-aq", "--filter", label]),
            ("network", ["docker", "network", "ls", "-q", "--filter", label]),
            ("volume", ["docker", "volume", "ls", "-q", "--filter", label]),
        ):
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            found += [f"{kind} {name}" for name in out.split()]
        return found

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


@contextlib.contextmanager
def compose_farm(project: str) -> Iterator[ComposeFarm]:
    """`up -d` the whole farm; `down --volumes` at the end, whatever happened, also after a
    failed start (an earlier run's leftovers of the same name go first)."""
    farm = ComposeFarm(project)
    farm.down()
    try:
        farm.compose("up", "-d", timeout=900)
        yield farm
    finally:
        farm.down()


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 1.0) -> float:
    """Seconds until `check()` holds; a ComposeError naming `what` after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise ComposeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start
