"""Helpers shared by the benchmark scripts bench/tftp.py and bench/dhcp.py.

The scripts run as `.venv/bin/python bench/<name>.py`, so this folder is sys.path[0] and they
import this module as `common`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn, Protocol

REPO = Path(__file__).resolve().parent.parent
PVSD = REPO / ".venv" / "bin" / "pvsd"
DNSMASQ = "/usr/sbin/dnsmasq"
RESULTS = REPO / "bench" / "results"

STOP_TIMEOUT = 5.0  # seconds for a process group to exit on SIGTERM before SIGKILL
BENIGN_PVSD_EVENTS = ("advertising a loopback address",)


class BenchError(Exception):
    """Something the benchmark needs did not work: reported in one line, exit code 1."""


# -- processes ---------------------------------------------------------------------------------------


def run_in_temp(prefix: str, work: Callable[[Path], None]) -> int | None:
    """Run work(folder) in a temporary folder removed afterwards. None when it finished; the
    exit code when it failed (a BenchError, said in one line) or was interrupted."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            work(Path(tmp))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return None


def raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    """A signal handler that turns SIGTERM/SIGHUP into KeyboardInterrupt, so that cleanup runs."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def no_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM off while cleaning up, so that a second Ctrl-C cannot leave processes behind."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM the process group proc leads (reaching forked children too), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    return proc.returncode


class ServerProcess(Protocol):
    """What the helpers below need of a benchmark's server record."""

    env: dict[str, str]  # set on top of the benchmark's environment
    log_path: Path
    proc: subprocess.Popen[bytes] | None
    exit_code: int | None


def launch(server: ServerProcess, argv: list[str], cwd: Path) -> None:
    """Start argv as server.proc, in a process group of its own, logging to server.log_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVSD_")}
    env.update(server.env)
    with server.log_path.open("wb") as log:
        server.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own group: stop_group reaches forked children
        )


def stop_servers(servers: Iterable[ServerProcess]) -> None:
    """Stop every server once (later calls do nothing), even when interrupted meanwhile."""
    with no_interrupts():
        for server in servers:
            if server.proc is not None:
                server.exit_code = stop_group(server.proc)
                server.proc = None


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable: {error}"
    lines = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "unknown"


# -- pvsd --------------------------------------------------------------------------------------------


def init_pvsd_farm(work: Path) -> str:
    """Create pvsd's farm database in work; return its URL."""
    database = f"sqlite:///{work / 'farm.db'}"  # an absolute path gives sqlite:////...
    init = [str(PVSD), "farm", "init", "--database", database]
    done = subprocess.run(
        init, capture_output=True, timeout=60, check=False, cwd=work, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(init)} failed: {done.stderr.decode(errors='replace').strip()}")
    return database


def pvsd_other_services_off(keep: str) -> dict[str, str]:
    """Disable every pvsd service but `keep` (a config section), so that the benchmark binds nothing else."""
    done = subprocess.run(
        [str(PVSD), "config", "defaults"],
        capture_output=True,
        timeout=30,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    defaults = tomllib.loads(done.stdout.decode())
    return {
        f"PVSD_{section.upper()}__ENABLED": "false"
        for section, keys in defaults.items()
        if section != keep and isinstance(keys, dict) and "enabled" in keys
    }


def server_log_summary(name: str, log_path: Path, exit_code: int | None) -> dict[str, Any]:
    """Line count, exit code and tail of a server's log; for pvsd, its warnings and errors counted."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return {"lines": 0}
    summary: dict[str, Any] = {"lines": len(lines), "exit_code": exit_code, "tail": lines[-10:]}
    if name != "pvsd":
        return summary
    events: dict[str, int] = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if not isinstance(record, dict) or record.get("level") not in ("warning", "error", "critical"):
                continue
            event = str(record.get("event", ""))
            if not event.startswith(BENIGN_PVSD_EVENTS):
                key = f"{record.get('level')}: {event}"
                events[key] = events.get(key, 0) + 1
    summary["warnings_and_errors"] = events
    return summary


# -- machine info, JSON and progress -----------------------------------------------------------------


def machine_info(tools: Mapping[str, list[str]], with_platform: bool = False) -> dict[str, Any]:
    """The machine, the versions of `tools` (name: argv that prints the version) and the git state."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()}
    if with_platform:
        info["platform"] = platform.platform()
    info["python"] = sys.version.split()[0]
    info["loadavg_at_start"] = os.getloadavg()
    info["versions"] = {name: tool_version(argv) for name, argv in tools.items()}
    info["git"] = git_info()
    return info


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args],
            capture_output=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return done.stdout.decode(errors="replace").strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.TimeoutExpired):
        return {}


def report_header(benchmark: str, quick: bool, started: float, machine: dict[str, Any]) -> dict[str, Any]:
    """The first keys of a benchmark's JSON report."""
    return {
        "benchmark": benchmark,
        "mode": "quick" if quick else "full",
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {**machine, "loadavg_at_end": os.getloadavg()},
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def progress(message: str, out: IO[str] = sys.stderr) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=out, flush=True)


def print_servers(servers: dict[str, Any], clean_exits: tuple[int | None, ...] = (0, None)) -> None:
    """The "Servers:" part of the printed report, from the report's "servers"."""
    print("\nServers:")
    for name, info in servers.items():
        print(f"- {name} on {info['address']}: {' '.join(info['command'])}")
        if info["env"]:
            print(f"  env: {' '.join(f'{k}={v}' for k, v in info['env'].items())}")
        problems = info["log"].get("warnings_and_errors")
        if problems:
            print(f"  log warnings/errors: {problems}")
        if info["log"].get("exit_code") not in clean_exits:
            print(f"  exit code on SIGTERM: {info['log']['exit_code']}")


def print_machine(machine: dict[str, Any], output: Path) -> None:
    """The closing lines of the printed report: the machine and where the JSON went."""
    load = " / ".join(f"{machine[key][0]:.2f}" for key in ("loadavg_at_start", "loadavg_at_end"))
    print(
        f"\nMachine: {machine['nproc']} CPUs, kernel {machine['kernel']}, Python {machine['python']}, "
        f"1-min load average at start / end {load} (other work on the machine adds noise)"
    )
    print(f"Results written to {output}")
