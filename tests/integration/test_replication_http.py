"""/replication/ from a running `pvsd serve`, checked with curl: a verified version's chunk index
and chunks, each chunk's bytes matching its hash and the whole matching the image; no copy, a
copy that is not verified, and bad names each get a clear status and no bytes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

from support import needs
from support.net import free_port
from support.pvsd import pvsd, pvsd_env, serve, wait_for

HOST = "127.0.0.32"
SIZE = 9 << 20  # two whole 4 MiB chunks and a short one


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-s", "-S", "--max-time", "20", *args], capture_output=True, timeout=30)


def status(url: str) -> int:
    return int(curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout)


def test_a_verified_version_is_served_as_its_index_and_chunks(tmp_path: Path) -> None:
    needs.tools(("curl", "curl"))
    port = free_port(HOST, socket.SOCK_STREAM)
    env = pvsd_env(
        f"sqlite:///{tmp_path}/farm.db",
        api__enabled="true",
        api__port=str(port),
        tftp__enabled="false",
        server__store=str(tmp_path / "store"),
    )
    assert pvsd(env, "farm", "init", "--name", "lab").returncode == 0
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(SIZE))
    assert pvsd(env, "vdisk", "import", "lab", str(image), "--no-boot", "--quiet").returncode == 0
    base = f"http://{HOST}:{port}/replication/lab/1/"
    with serve(env, "pvs1", HOST, tmp_path):
        wait_for(lambda: curl(base + "index").returncode == 0, timeout=20)
        index = json.loads(curl(base + "index").stdout)
        assert index["format"] == "pvsd-chunks-1" and index["size"] == SIZE
        assert index["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert len(index["chunks"]) == 3
        whole = b""
        for number, expected in enumerate(index["chunks"]):
            chunk = curl(base + f"chunks/{number}").stdout
            assert hashlib.sha256(chunk).hexdigest() == expected
            whole += chunk
        assert whole == image.read_bytes()
        assert (tmp_path / "store/lab/v1.img.chunks").exists()  # kept for the next peer

        assert status(base + "chunks/3") == 404
        assert status(base + "chunks/x") == 400
        assert status(f"http://{HOST}:{port}/replication/lab/2/index") == 404
        assert status(f"http://{HOST}:{port}/replication/..%2Fetc/1/index") == 404
        # Touched after its verification: not served until verified again.
        stored = tmp_path / "store/lab/v1.img"
        os.utime(stored, ns=(stored.stat().st_atime_ns, stored.stat().st_mtime_ns + 1))
        assert status(base + "index") == 409
