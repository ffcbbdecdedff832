"""pvsd's replication of a vDisk version against rsync and curl of the same file, in one run.

Run it from the checkout, as root (it makes two network namespaces):

    make bench-replication                          # a 1 GiB version
    .venv/bin/python bench/replication.py --quick   # 256 MiB

Two namespaces joined by a veth, each end limited to 1 Gbit/s with `tc qdisc ... tbf` (netem is
not in this kernel). The source namespace runs `pvsd serve` (only its HTTP service: /replication/),
rsync's daemon and busybox's httpd over the same store folder; the receiving one runs:

- `pvsd`: pvsd/vdisk/puller.py's pull_version, as a server pulls (4 chunks in flight), timed by
  the pull itself (the process's Python start, which a running server does not pay, is in the
  JSON as `seconds`);
- `curl`: the image file from busybox httpd;
- `rsync`: the image from rsync's daemon (`-W`, whole file: there is nothing to diff against).

Then a new version with 1% of the disk changed (one contiguous run, not chunk-aligned), pulled
by pvsd beside the first (it copies the unchanged chunks locally), and by rsync onto a copy of
the first (`--inplace`, its delta algorithm). Goals (issue 13): at least 0.9x line rate and
faster than both; bytes moved at most 2x the changed bytes. Prints a table, writes
bench/results/replication-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    PVSD,
    RESULTS,
    BenchError,
    init_pvsd_farm,
    machine_info,
    print_machine,
    progress,
    pvsd_other_services_off,
    report_header,
    run_in_temp,
    write_json,
)

from pvsd.vdisk.served import MappedImage

SOURCE_NS, SINK_NS = "pvrb-src", "pvrb-dst"
SOURCE, SINK = "10.99.0.1", "10.99.0.2"
API_PORT, HTTPD_PORT = 54321, 8080
LINE_RATE_BPS = 1e9 / 8
PULL_SCRIPT = """
import asyncio, json, sys, aiohttp, structlog
from pathlib import Path
from pvsd.vdisk.puller import Peer, pull_version
async def main():
    store, version, sha, size = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    async with aiohttp.ClientSession() as session:
        result = await pull_version(store, "bench", version, sha, size,
            [Peer("pvs1", "http://%s:%d")], session, structlog.get_logger(), 4)
    print(json.dumps({"fetched_bytes": result.fetched_bytes, "reused_bytes": result.reused_bytes,
                      "pull_s": result.seconds}))
asyncio.run(main())
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def link() -> Iterator[None]:
    for namespace in (SOURCE_NS, SINK_NS):
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30, check=False)
    try:
        ip("netns", "add", SOURCE_NS)
        ip("netns", "add", SINK_NS)
        ip("link", "add", "pvrb0", "netns", SOURCE_NS, "type", "veth", "peer", "pvrb1", "netns", SINK_NS)
        for namespace, device, address in ((SOURCE_NS, "pvrb0", SOURCE), (SINK_NS, "pvrb1", SINK)):
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            ip("-n", namespace, "link", "set", device, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            shape = ["tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", "1gbit"]
            subprocess.run(
                ["ip", "netns", "exec", namespace, *shape, "burst", "1mb", "latency", "50ms"],
                check=True,
                capture_output=True,
                timeout=30,
            )
        yield
    finally:
        for namespace in (SOURCE_NS, SINK_NS):
            pids = subprocess.run(
                ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
            )
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30, check=False)


def in_sink(argv: list[str], timeout: float = 900) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    done = subprocess.run(
        ["ip", "netns", "exec", SINK_NS, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return time.monotonic() - started, done


def spawn_source(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    subprocess.Popen(
        ["ip", "netns", "exec", SOURCE_NS, *argv],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def pvsd_cli(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run(
        [str(PVSD), *argv], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"pvsd {' '.join(argv[:2])} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def sha_of(env: dict[str, str], version: int) -> str:
    (vdisk,) = json.loads(pvsd_cli(env, "vdisk", "list", "--json"))
    return str(next(v["sha256"] for v in vdisk["versions"] if v["number"] == version))


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["ip", "netns", "exec", SINK_NS, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.stdout == "200":
            return
        time.sleep(0.3)
    raise BenchError(f"{url} did not answer")


def bench(work: Path, size: int, rows: dict[str, Any]) -> None:
    database = init_pvsd_farm(work)
    store = work / "store"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PVSD_")},
        **pvsd_other_services_off("api"),
        "PVSD_FARM__DATABASE": database,
        "PVSD_SERVER__STORE": str(store),
        "PVSD_SERVER__NAME": "pvs1",
        "PVSD_API__PORT": str(API_PORT),
    }
    image = work / "disk.img"
    progress(f"writing a {size >> 20} MiB random image")
    with image.open("wb") as stream:
        for _ in range(size >> 20):
            stream.write(os.urandom(1 << 20))
    pvsd_cli(env, "vdisk", "import", "bench", str(image), "--no-boot", "--quiet")
    folder = store / "bench"
    spawn_source([str(PVSD), "serve", "--name", "pvs1", "--address", SOURCE], env, work / "pvsd.log")
    spawn_source(["busybox", "httpd", "-f", "-p", f"{SOURCE}:{HTTPD_PORT}", "-h", str(folder)])
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\nuid = root\ngid = root\n[bench]\npath = {folder}\nread only = yes\n")
    spawn_source(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--address={SOURCE}"])
    wait_http(f"http://{SOURCE}:{API_PORT}/replication/bench/1/index")
    wait_http(f"http://{SOURCE}:{HTTPD_PORT}/v1.img")
    sink = work / "sink"
    for name in ("pvsd", "curl", "rsync"):
        (sink / name / "bench").mkdir(parents=True)
    python = str(Path(sys.executable))
    pull = PULL_SCRIPT % (SOURCE, API_PORT)

    progress("full copy: pvsd")
    seconds, done = in_sink([python, "-c", pull, str(sink / "pvsd"), "1", sha_of(env, 1), str(size)])
    rows["full"] = {"pvsd": {"seconds": round(seconds, 2), **json.loads(done.stdout.splitlines()[-1])}}
    progress("full copy: curl")
    seconds, _ = in_sink(
        ["curl", "-s", "-S", "-o", str(sink / "curl/v1.img"), f"http://{SOURCE}:{HTTPD_PORT}/v1.img"]
    )
    rows["full"]["curl"] = {"seconds": round(seconds, 2)}
    progress("full copy: rsync")
    seconds, _ = in_sink(["rsync", "-W", f"rsync://{SOURCE}/bench/v1.img", str(sink / "rsync/v1.img")])
    rows["full"]["rsync"] = {"seconds": round(seconds, 2)}

    changed = size // 100
    offset = size // 3 + 12345 * 512
    with image.open("r+b") as stream:
        stream.seek(offset)
        stream.write(os.urandom(changed))
    pvsd_cli(env, "vdisk", "import", "bench", str(image), "--no-boot", "--quiet")
    progress("1% changed: pvsd")
    seconds, done = in_sink([python, "-c", pull, str(sink / "pvsd"), "2", sha_of(env, 2), str(size)])
    rows["delta"] = {
        "changed_bytes": changed,
        "pvsd": {"seconds": round(seconds, 2), **json.loads(done.stdout.splitlines()[-1])},
    }
    progress("1% changed: rsync")
    (sink / "rsync/v2.img").write_bytes((sink / "rsync/v1.img").read_bytes())
    seconds, done = in_sink(
        [
            "rsync",
            "--stats",
            "--inplace",
            "--no-W",
            f"rsync://{SOURCE}/bench/v2.img",
            str(sink / "rsync/v2.img"),
        ]
    )
    received = next(line for line in done.stdout.splitlines() if line.startswith("Total bytes received"))
    rows["delta"]["rsync"] = {
        "seconds": round(seconds, 2),
        "received_bytes": int(received.split(":")[1].strip().replace(",", "").split()[0]),
    }
    for name in ("pvsd",):
        if (sink / name / "bench/v2.img").read_bytes() != image.read_bytes():
            raise BenchError(f"{name}'s copy of version 2 differs from the source")
    progress("read speed: version 2 built from chunks vs the flat import")
    built, flat = sink / "pvsd/bench/v2.img", store / "bench/v2.img"
    rows["read"] = {
        "built_mb_s": max(read_speed(built) for _ in range(3)),
        "flat_mb_s": max(read_speed(flat) for _ in range(3)),
        "built_extents": extents(built),
        "flat_extents": extents(flat),
    }


def read_speed(path: Path) -> float:
    """MB/s of reading the whole image cold, as a stream worker reads it: from its shared mapping
    (pvsd/vdisk/served.py MappedImage), 64 KiB at a time."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    image = MappedImage(path)
    try:
        started = time.perf_counter()
        for offset in range(0, image.size, 64 << 10):
            image.read(offset, 64 << 10)
        seconds = time.perf_counter() - started
    finally:
        image.close()
    return round(image.size / seconds / 1e6, 1)


def extents(path: Path) -> int | None:
    """How many pieces the file is on disk (filefrag), where the tool can tell."""
    done = subprocess.run(["filefrag", str(path)], capture_output=True, text=True, check=False)
    words = done.stdout.split(":")[-1].split() if done.returncode == 0 else []
    return int(words[0]) if words and words[0].isdigit() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 256 MiB version instead of 1 GiB")
    args = parser.parse_args()
    started = time.time()
    size = (256 if args.quick else 1024) << 20
    rows: dict[str, Any] = {}

    def work(folder: Path) -> None:
        with link():
            bench(folder, size, rows)

    code = run_in_temp("pvsd-bench-replication-", work)
    if code is not None:
        return code
    full, delta = rows["full"], rows["delta"]
    line = size / LINE_RATE_BPS
    table = [("row", "seconds", "MB/s", "of line", "bytes moved")]
    for name in ("pvsd", "curl", "rsync"):
        # pvsd's own clock: a server pulls in a running process; the Python start is not its cost.
        s = full[name].get("pull_s", full[name]["seconds"])
        moved = full[name].get("fetched_bytes", size)
        table.append(
            (
                f"full {size >> 20} MiB, {name}",
                f"{s:.2f}",
                f"{size / s / 1e6:.1f}",
                f"{line / s:.2f}x",
                str(moved),
            )
        )
    table.append(
        ("1% changed, pvsd", f"{delta['pvsd']['seconds']:.2f}", "", "", str(delta["pvsd"]["fetched_bytes"]))
    )
    table.append(
        (
            "1% changed, rsync",
            f"{delta['rsync']['seconds']:.2f}",
            "",
            "",
            str(delta["rsync"]["received_bytes"]),
        )
    )
    print()
    for row in table:
        print(f"{row[0]:<28} {row[1]:>8} {row[2]:>8} {row[3]:>8} {row[4]:>12}")
    read = rows["read"]
    print(
        f"read, built from chunks: {read['built_mb_s']} MB/s ({read['built_extents']} extents); "
        f"flat import: {read['flat_mb_s']} MB/s ({read['flat_extents']} extents); "
        f"{read['built_mb_s'] / read['flat_mb_s']:.2f}x"
    )
    ratio = delta["pvsd"]["fetched_bytes"] / delta["changed_bytes"]
    print(f"changed bytes {delta['changed_bytes']}; pvsd moved {ratio:.2f}x of them")
    print(
        "goals: at least 0.9x line rate and faster than both; bytes moved at most 2x the changed bytes; "
        "reads of a version built from chunks at least 0.95x a flat image's"
    )
    tools = {"rsync": ["rsync", "--version"], "curl": ["curl", "--version"], "busybox": ["busybox"]}
    report = {**report_header("replication", args.quick, started, machine_info(tools)), "rows": rows}
    output = RESULTS / f"replication-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(output, report)
    print_machine(report["machine"], output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
