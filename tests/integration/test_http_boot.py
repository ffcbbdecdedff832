"""/boot/ over HTTP from a running `pvsd serve`, checked with curl: the generated scripts and the
TFTP folders' files, HEAD, Range (206, suffix, 416), ETag with If-None-Match (304), and errors."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
from pathlib import Path

from support import needs
from support.net import free_port
from support.pvsd import pvsd, pvsd_env, serve, wait_for

HOST = "127.0.0.31"


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-s", "-S", "--max-time", "10", *args], capture_output=True, timeout=20)


def headers_of(*args: str) -> tuple[int, dict[str, str]]:
    done = curl("-D", "-", "-o", "/dev/null", *args)
    lines = done.stdout.decode().splitlines()
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)
    }
    return status, headers


def test_boot_files_over_http_with_ranges_and_etags(farm_url: str, tmp_path: Path) -> None:
    needs.tools(("curl", "curl"))
    root = tmp_path / "tftp"
    root.mkdir()
    payload = bytes(range(256)) * 4096  # 1 MiB
    (root / "big.bin").write_bytes(payload)
    port = free_port(HOST, socket.SOCK_STREAM)
    env = pvsd_env(
        farm_url,
        api__enabled="true",
        api__port=str(port),
        tftp__root=str(root),
        tftp__port=str(free_port(HOST)),
    )
    assert pvsd(env, "farm", "init", "--name", "lab").returncode == 0
    assert pvsd(env, "device", "add", "52:54:00:12:34:56", "--name", "vm1").returncode == 0
    base = f"http://{HOST}:{port}/boot/"
    with serve(env, "pvs1", HOST, tmp_path) as server:
        wait_for(lambda: curl(base + "pvs.ipxe").returncode == 0, timeout=20)

        script = curl(base + "pvs.ipxe").stdout.decode()
        assert script.startswith("#!ipxe") and "pvsd bootstrap: pvs1" in script
        device = curl(base + "pvsd/device/52-54-00-12-34-56.ipxe").stdout.decode()
        assert "pvsd device: vm1 52:54:00:12:34:56" in device and "no vDisk is assigned" in device
        unknown = curl(base + "pvsd/device/52-54-00-99-99-99.ipxe").stdout.decode()
        assert "this MAC is not registered" in unknown

        status, headers = headers_of(base + "pvs.ipxe")
        etag = headers["etag"]
        assert status == 200 and re.fullmatch(r'"[0-9a-f]{32}"', etag)
        assert headers_of("-H", f"If-None-Match: {etag}", base + "pvs.ipxe")[0] == 304
        assert curl("-r", "0-6", base + "pvs.ipxe").stdout == b"#!ipxe\n"
        status, headers = headers_of("-r", "0-6", base + "pvs.ipxe")
        assert status == 206 and headers["content-range"] == f"bytes 0-6/{len(script)}"

        # files from the TFTP folders, streamed from disk
        assert hashlib.sha256(curl(base + "big.bin").stdout).digest() == hashlib.sha256(payload).digest()
        status, headers = headers_of("-I", base + "big.bin")
        assert status == 200 and headers["content-length"] == str(len(payload)) and "etag" in headers
        assert headers_of("-H", f"If-None-Match: {headers['etag']}", base + "big.bin")[0] == 304
        assert curl("-r", "1000-1999", base + "big.bin").stdout == payload[1000:2000]
        assert curl("-r", "-100", base + "big.bin").stdout == payload[-100:]
        assert headers_of("-r", f"{len(payload) + 10}-", base + "big.bin")[0] == 416
        assert headers_of(base + "ipxe.efi")[0] == 200  # Debian's iPXE, from [tftp] ipxe_dir

        assert headers_of(base + "no-such-file")[0] == 404
        assert headers_of(base + "../../etc/passwd")[0] == 404
        assert headers_of("-X", "POST", "-d", "x", base + "pvs.ipxe")[0] == 405
        assert "boot file served" in server.log_text()
        assert "Traceback" not in server.log_text()
