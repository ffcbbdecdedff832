"""The TFTP service inside a real `pvsd serve`, fetched by real clients: tftpy, atftp, tftp-hpa, curl."""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import tftpy
from support.net import free_port
from support.pvsd import ServeProcess, pvsd, pvsd_env, serve, wait_for
from support.tftp import Address, exchange, fetch, wait_until_serving

from pvsd.tftp.codec import Ack, Data, Error, ErrorCode, OptionAck, ReadRequest, WriteRequest, decode, encode

HOST = "127.0.0.1"
FILES = {
    "big40m": 40 << 20,  # 81,920 blocks at blksize 512: crosses the block number rollover
    "four-mib": 4 << 20,
    "empty": 0,
    "exact512": 512 * 16,
    "exact1468": 1468 * 10,
}
TEXT = b"#!ipxe\r\necho line one\nline two\rend\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha256(path.read_bytes())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tftproot")
    rng = random.Random(2026)
    for name, size in FILES.items():
        (root / name).write_bytes(rng.randbytes(size))
    (root / "boot").mkdir()
    (root / "boot" / "script.txt").write_bytes(TEXT)
    return root


@contextmanager
def tftp_server(folder: Path, root: Path, **keys: str) -> Iterator[tuple[ServeProcess, Address]]:
    """A `pvsd serve` whose TFTP service listens on a free port of 127.0.0.1."""
    port = free_port(HOST, socket.SOCK_DGRAM)
    env = pvsd_env(
        f"sqlite:///{folder}/farm.db",
        tftp__root=str(root),
        tftp__port=str(port),
        tftp__bind=HOST,
        farm__heartbeat_interval="0.5",
        farm__dead_after="3",
        **keys,
    )
    assert pvsd(env, "farm", "init").returncode == 0
    with serve(env, "pvs1", "127.0.0.11", folder) as process:
        wait_until_serving((HOST, port))
        yield process, (HOST, port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[tuple[ServeProcess, Address]]:
    with tftp_server(tmp_path_factory.mktemp("server"), root) as running:
        yield running


def assert_alive(server: tuple[ServeProcess, Address]) -> None:
    process, address = server
    assert process.process.poll() is None, process.log_text()[-2000:]
    content, _ = fetch(address, "exact512")
    assert len(content) == 512 * 16


# -- real clients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["big40m", "empty", "exact512", "exact1468", "boot/script.txt"])
def test_tftpy(server: tuple[ServeProcess, Address], root: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    client = tftpy.TftpClient(HOST, server[1][1], options={"blksize": 512} if name == "big40m" else {})
    client.download(name, str(out))
    assert file_sha(out) == file_sha(root / name)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("big40m", []),
        ("exact1468", ["blksize 1468", "tsize 0"]),
        ("exact512", []),
        ("empty", ["tsize 0"]),
        ("four-mib", ["blksize 1468", "windowsize 16"]),
        ("four-mib", ["blksize 8192", "windowsize 4", "timeout 2"]),
    ],
)
def test_atftp(
    server: tuple[ServeProcess, Address], root: Path, tmp_path: Path, name: str, options: list[str]
) -> None:
    out = tmp_path / "out"
    command = ["atftp", "-g", "-r", name, "-l", str(out)]
    for option in options:
        command += ["--option", option]
    result = subprocess.run([*command, HOST, str(server[1][1])], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert file_sha(out) == file_sha(root / name)


@pytest.mark.parametrize("name", ["big40m", "exact512", "empty"])
def test_tftp_hpa(server: tuple[ServeProcess, Address], root: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        ["tftp", "-m", "octet", HOST, str(server[1][1]), "-c", "get", name, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Error" not in result.stdout + result.stderr, (
        result.stdout + result.stderr
    )
    assert file_sha(out) == file_sha(root / name)


def test_tftp_hpa_netascii(server: tuple[ServeProcess, Address], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        ["tftp", "-m", "netascii", HOST, str(server[1][1]), "-c", "get", "boot/script.txt", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == TEXT  # the client turns netascii back into the original bytes


def test_netascii_on_the_wire(server: tuple[ServeProcess, Address]) -> None:
    content, _ = fetch(server[1], "boot/script.txt", mode="netascii")
    assert content == TEXT.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# No zero-byte file here: curl 7.88 fails on one with any server, in.tftpd included
# ("getpeername() failed with errno 107"); tftpy, atftp and tftp-hpa cover it.
@pytest.mark.parametrize(
    ("name", "blksize"), [("big40m", 512), ("four-mib", 1468), ("exact1468", 1468), ("exact512", 8192)]
)
def test_curl(server: tuple[ServeProcess, Address], root: Path, name: str, blksize: int) -> None:
    result = subprocess.run(
        ["curl", "-sS", "--tftp-blksize", str(blksize), f"tftp://{HOST}:{server[1][1]}/{name}"],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sha256(result.stdout) == file_sha(root / name)


def test_200_clients_at_once(server: tuple[ServeProcess, Address], root: Path) -> None:
    expected = file_sha(root / "four-mib")
    url = f"tftp://{HOST}:{server[1][1]}/four-mib"
    # One address each, as 200 targets have: one address gets at most [tftp] max_per_client transfers.
    processes = [
        subprocess.Popen(
            ["curl", "-sS", "--interface", f"127.0.1.{index + 1}", "--tftp-blksize", "1468", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for index in range(200)
    ]
    try:
        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(lambda p: p.communicate(timeout=240), processes))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert [p.returncode for p in processes] == [0] * 200, [r[1] for r in results if r[1]][:3]
    assert {sha256(out) for out, _ in results} == {expected}


# -- refusals and bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("../etc/passwd", ErrorCode.ACCESS_VIOLATION, "parent directory"),
        ("/../etc/passwd", ErrorCode.ACCESS_VIOLATION, "parent directory"),
        ("/etc/passwd", ErrorCode.FILE_NOT_FOUND, "no such file"),  # a leading slash names the root
        ("boot\\script.txt", ErrorCode.ACCESS_VIOLATION, "backslash"),
        ("boot", ErrorCode.ACCESS_VIOLATION, "not a regular file"),
        ("nothing-here", ErrorCode.FILE_NOT_FOUND, "no such file"),
    ],
)
def test_unsafe_requests_get_an_error_and_a_logged_reason(
    server: tuple[ServeProcess, Address], name: str, code: int, reason: str
) -> None:
    request = encode(ReadRequest(name, "octet"))
    reply, _ = exchange(server[1], request)
    assert isinstance(reply, Error) and reply.code == code
    # The reason, cut so that the reply is no larger than the request (no amplification).
    assert reason.startswith(reply.message) or reply.message.startswith(reason)
    assert len(encode(reply)) <= len(request)
    wait_for(lambda: any(e.get("reason", "").startswith(reason) for e in server[0].log_events()), timeout=5)


@pytest.mark.parametrize("client", ["tftp-hpa", "atftp"])
def test_a_leading_slash_names_the_root_as_firmware_asks(
    server: tuple[ServeProcess, Address], root: Path, tmp_path: Path, client: str
) -> None:
    out = tmp_path / "script.txt"
    host, port = server[1]
    if client == "tftp-hpa":
        command = ["tftp", "-m", "binary", host, str(port), "-c", "get", "/boot/script.txt", str(out)]
    else:
        command = ["atftp", "-g", "-r", "/boot/script.txt", "-l", str(out), host, str(port)]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done
    assert out.read_bytes() == TEXT
    content, _ = fetch(server[1], "/pvs.bootstrap")  # generated files too
    assert b"pvsd-bootstrap" in content


IPXE = Path("/usr/lib/ipxe")


def proxy_dhcp_on_free_ports() -> dict[str, str]:
    """Proxy DHCP on, on free ports of 127.0.0.1: its offers are what the boot files are checked for."""
    return {
        "dhcp__enabled": "true",
        "dhcp__bind": HOST,
        "dhcp__port": str(free_port(HOST, socket.SOCK_DGRAM)),
        "dhcp__pxe_port": str(free_port(HOST, socket.SOCK_DGRAM)),
    }


def test_the_offered_ipxe_binaries_are_served_out_of_the_box(tmp_path: Path) -> None:
    """The default root lacks them: they come from the installed iPXE package (Debian's ipxe)."""
    empty = tmp_path / "root"
    empty.mkdir()
    dhcp = proxy_dhcp_on_free_ports()
    with tftp_server(tmp_path, empty, **dhcp) as (process, address):
        for name in ("undionly.kpxe", "/snponly.efi", "ipxe.efi"):
            content, _ = fetch(address, name, options=(("blksize", "1468"),))
            assert content == (IPXE / name.lstrip("/")).read_bytes()
        assert not [e for e in process.log_events() if e["event"] == "offered boot file cannot be served"]


def test_an_offered_boot_file_that_cannot_be_served_is_logged_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "root"
    empty.mkdir()
    dhcp = {**proxy_dhcp_on_free_ports(), "dhcp__bootfiles__uefi_arm64": "arm.efi"}
    with tftp_server(tmp_path, empty, tftp__ipxe_dir="", **dhcp) as (process, _):
        problems = {
            e["key"]: e["problem"]
            for e in process.log_events()
            if e["event"] == "offered boot file cannot be served" and e["level"] == "error"
        }
    assert set(problems) == {"dhcp.bootfiles.bios", "dhcp.bootfiles.uefi_x64", "dhcp.bootfiles.uefi_arm64"}
    assert "undionly.kpxe" in problems["dhcp.bootfiles.bios"]
    env = pvsd_env(f"sqlite:///{tmp_path}/farm.db", tftp__root=str(empty), tftp__ipxe_dir="", **dhcp)
    result = pvsd(env, "config", "check")
    assert result.returncode == 1 and "dhcp.bootfiles.bios: undionly.kpxe is offered" in result.stdout


def test_symlinks_out_of_the_root_are_refused(tmp_path: Path, root: Path) -> None:
    own_root = tmp_path / "root"
    shutil.copytree(root / "boot", own_root)
    (own_root / "passwd").symlink_to("/etc/passwd")
    with tftp_server(tmp_path, own_root) as (process, address):
        reply, _ = exchange(address, encode(ReadRequest("passwd", "octet")))
        assert isinstance(reply, Error) and reply.code == ErrorCode.ACCESS_VIOLATION
        assert "symlink points outside the TFTP root".startswith(reply.message)
        wait_for(lambda: any("outside" in e.get("reason", "") for e in process.log_events()), timeout=5)


def test_write_requests_are_refused_with_error_2(server: tuple[ServeProcess, Address], root: Path) -> None:
    reply, _ = exchange(server[1], encode(WriteRequest("new-file", "octet")))
    assert isinstance(reply, Error) and reply.code == ErrorCode.ACCESS_VIOLATION
    assert not (root / "new-file").exists()
    result = subprocess.run(
        ["tftp", HOST, str(server[1][1]), "-c", "put", "/etc/hostname", "new-file"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Error code 2" in result.stdout + result.stderr
    assert not (root / "new-file").exists()


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\x00\x01",
        b"\x00\x01no-terminator",
        b"\x00\x01file\x00octet\x00blksize\x00",  # an option with no value
        b"\x00\x07whatever",
        b"\xff\xff" + b"x" * 100,
        b"\x00\x01" + b"A" * 65_000,  # oversized and unterminated
        b"\x00\x04\x00\x01",  # an ACK for no transfer
        b"\x00\x03\x00\x01data",
    ],
)
def test_malformed_datagrams_do_not_hurt(server: tuple[ServeProcess, Address], datagram: bytes) -> None:
    """None is answered: a malformed request too is dropped (and counted), so that garbage with a
    spoofed source cannot be reflected at anyone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(datagram, server[1])
        try:
            reply = decode(sock.recv(65536))
        except TimeoutError:
            reply = None
    assert reply is None
    assert_alive(server)


def test_unsupported_mode_is_error_4(server: tuple[ServeProcess, Address]) -> None:
    reply, _ = exchange(server[1], encode(ReadRequest("exact512", "mail")))
    assert isinstance(reply, Error) and reply.code == ErrorCode.ILLEGAL_OPERATION


def test_ten_thousand_random_datagrams_then_a_valid_transfer(
    server: tuple[ServeProcess, Address], root: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        for index in range(10_000):
            size = rng.choice([0, 1, 2, 3, 4, 5, 20, 100, 600, 1500])
            head = rng.choice([b"", b"\x00\x01", b"\x00\x02", b"\x00\x04", b"\x00\x05", b"\x00\x06"])
            sock.sendto(head + rng.randbytes(size), server[1])
            if index % 500 == 0:
                time.sleep(0.01)  # a flood, not a socket-buffer overflow test
    assert_alive(server)
    out = tmp_path / "out"
    tftpy.TftpClient(HOST, server[1][1]).download("exact1468", str(out))
    assert file_sha(out) == file_sha(root / "exact1468")


# -- limits, single-port mode, the logged summary -------------------------------------------------------


def test_requests_over_max_transfers_get_error_3(tmp_path: Path, root: Path) -> None:
    sockets: list[socket.socket] = []
    # One process: with several, the limit is shared out and a request may land on an idle one.
    with tftp_server(tmp_path, root, tftp__max_transfers="2", tftp__workers="1") as (_, address):
        for _ in range(2):  # two transfers that the client never acknowledges
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(3)
            sock.sendto(encode(ReadRequest("four-mib", "octet")), address)
            sock.recvfrom(65536)
            sockets.append(sock)
        reply, _ = exchange(address, encode(ReadRequest("exact512", "octet")))
        assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL and "busy" in reply.message
        for sock in sockets:
            sock.close()  # the server's next resend hits a closed port and ends the transfer
        wait_for(lambda: _fetches(address), timeout=15, interval=0.5)


def _fetches(address: Address) -> bool:
    try:
        return len(fetch(address, "exact512", timeout=1)[0]) == 512 * 16
    except (RuntimeError, OSError):
        return False


def test_single_port_mode_answers_from_the_service_port(tmp_path: Path, root: Path) -> None:
    with tftp_server(tmp_path, root, tftp__single_port="true") as (_, address):
        content, source = fetch(address, "four-mib", (("blksize", "1468"),))
        assert source == address
        assert sha256(content) == file_sha(root / "four-mib")
        result = subprocess.run(
            ["curl", "-sS", "--tftp-blksize", "1468", f"tftp://{HOST}:{address[1]}/big40m"],
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0 and sha256(result.stdout) == file_sha(root / "big40m")
        out = tmp_path / "out"
        atftp = ["atftp", "-g", "-r", "four-mib", "-l", str(out), "--option", "windowsize 8"]
        assert (
            subprocess.run([*atftp, HOST, str(address[1])], capture_output=True, timeout=60).returncode == 0
        )
        assert file_sha(out) == file_sha(root / "four-mib")


def test_each_transfer_is_logged_with_its_figures(server: tuple[ServeProcess, Address]) -> None:
    fetch(server[1], "exact1468", (("blksize", "1000"),))

    def logged() -> list[dict[str, object]]:
        return [
            e
            for e in server[0].log_events()
            if e.get("event") == "TFTP transfer complete"
            and e.get("file") == "exact1468"
            and e["blksize"] == 1000
        ]

    wait_for(lambda: bool(logged()), timeout=5)
    event = logged()[0]
    for key in ("peer", "bytes", "blksize", "windowsize", "retransmits", "duration_s"):
        assert key in event
    assert event["bytes"] == 1468 * 10 and event["windowsize"] == 1 and event["retransmits"] == 0


def test_a_client_that_stops_acking_is_abandoned(tmp_path: Path, root: Path) -> None:
    server = tftp_server(tmp_path, root, tftp__timeout="0.2", tftp__abandon_after="1.5")
    with server as (process, address), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(encode(ReadRequest("four-mib", "octet", (("tsize", "0"),))), address)
        reply, source = sock.recvfrom(65536)
        assert isinstance(decode(reply), OptionAck)
        sock.sendto(encode(Ack(0)), source)
        # The first block acknowledged too: from here abandon_after applies, not first_block_timeout.
        reply, source = sock.recvfrom(65536)
        assert decode(reply) == Data(1, decode(reply).data)  # type: ignore[union-attr]
        sock.sendto(encode(Ack(1)), source)
        wait_for(lambda: any(e.get("outcome") == "abandoned" for e in process.log_events()), timeout=10)
        resends = 0
        with_error = False
        sock.settimeout(0.1)
        while True:
            try:
                packet = decode(sock.recv(65536))
            except TimeoutError:
                break
            resends += 1
            with_error = with_error or isinstance(packet, Error)
        assert with_error and resends >= 3


def test_sigterm_ends_the_server_cleanly_during_transfers(tmp_path: Path, root: Path) -> None:
    with tftp_server(tmp_path, root) as (process, address), ExitStack() as clients:
        for _ in range(3):
            sock = clients.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.settimeout(5)
            sock.sendto(encode(ReadRequest("big40m", "octet")), address)
            for block in (1, 2, 3):  # each transfer is under way: three blocks received and acknowledged
                data, port = sock.recvfrom(65536)
                packet = decode(data)
                assert isinstance(packet, Data) and packet.block == block, packet
                sock.sendto(encode(Ack(block)), port)
        process.signal(signal.SIGTERM)
        assert process.wait() == 0
    closed = [e for e in process.log_events() if e.get("event") == "TFTP service closed"]
    assert sum(e["transfers_cut_short"] for e in closed) == 3, process.log_text()[-3000:]


def test_tftp_port_in_use_is_a_clear_error(tmp_path: Path, root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        env = pvsd_env(
            f"sqlite:///{tmp_path}/farm.db", tftp__port=str(port), tftp__bind=HOST, tftp__root=str(root)
        )
        assert pvsd(env, "farm", "init").returncode == 0
        with serve(env, "pvs1", "127.0.0.11", tmp_path) as process:
            assert process.wait() == 1
            assert "cannot listen for TFTP" in process.log_text()
        states = pvsd(env, "server", "list", "--json")
        assert '"state": "stopped"' in states.stdout


# -- worker processes ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def test_workers_share_the_clients_and_all_serve_the_bootstrap(tmp_path: Path, root: Path) -> None:
    with tftp_server(tmp_path, root, tftp__workers="3") as (process, address):
        assert len(_children(process.process.pid)) >= 2  # the resource tracker may add one more
        bootstraps = {fetch(address, "pvs.bootstrap")[0] for _ in range(30)}
        assert len(bootstraps) == 1 and b'"served_by": "pvs1"' in bootstraps.pop()
        wait_for(
            lambda: (
                {e.get("worker") for e in process.log_events() if e.get("file") == "pvs.bootstrap"}
                >= {None, 1, 2}
            ),
            timeout=10,
        )


def test_workers_exit_when_the_main_process_is_killed(tmp_path: Path, root: Path) -> None:
    with tftp_server(tmp_path, root, tftp__workers="2") as (process, address):
        children = _children(process.process.pid)
        assert children
        process.signal(signal.SIGKILL)
        process.wait()

        def all_gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in children)

        wait_for(all_gone, timeout=10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(address)  # the port is free again: nothing serves TFTP behind a dead pvsd


# -- a hostile client (issue 11) -------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _pvsd_processes(process: ServeProcess) -> list[int]:
    """The main pvsd process and its children: the TFTP workers (and multiprocessing's tracker)."""
    return [process.process.pid, *_children(process.process.pid)]


def _send_long_names(address: Address, names: Iterator[str], sockets: list[socket.socket]) -> list[bytes]:
    """Each name in a read request from the sockets in turn (their ports spread over the processes),
    waiting for each answer so that none is lost to a full socket buffer; the answers."""
    answers = []
    for index, name in enumerate(names):
        sock = sockets[index % len(sockets)]
        sock.sendto(encode(ReadRequest(name, "octet")), address)
        try:
            answers.append(sock.recv(65536))
        except TimeoutError:
            continue
    return answers


def test_thousands_of_long_unique_names_leave_every_process_s_memory_where_it_was(
    tmp_path: Path, root: Path
) -> None:
    """The hostile tryout: 3,000 unique 60 kB names grew a worker from 32 to 152 MB and the main
    process from 33 to 140 MB (refusal counters keyed by the reason, which held the name)."""
    with tftp_server(tmp_path, root, tftp__workers="2") as (process, address), ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(8)]
        for sock in sockets:
            sock.bind((HOST, 0))
            sock.settimeout(1.0)
        # Warm up every code path first (and let a stats report reach the main process).
        _send_long_names(address, (f"warm{i:04d}" + "W" * 60_000 for i in range(200)), sockets)
        time.sleep(2.5)
        pids = _pvsd_processes(process)
        assert len(pids) >= 2
        before = {pid: _rss_kib(pid) for pid in pids}
        started = time.monotonic()
        answers = _send_long_names(address, (f"{i:05d}" + "A" * 60_000 for i in range(3000)), sockets)
        assert time.monotonic() - started < 120
        assert len(answers) >= 2900
        time.sleep(2.5)  # a stats report from each worker, after the flood
        after = {pid: _rss_kib(pid) for pid in pids}
        print({pid: (before[pid] // 1024, after[pid] // 1024) for pid in pids}, "MiB before, after")
        grown = {pid: (after[pid] - before[pid]) // 1024 for pid in pids}
        assert all(mib <= 8 for mib in grown.values()), grown
        assert process.process.poll() is None
    for answer in answers:
        packet = decode(answer)
        assert isinstance(packet, Error) and len(answer) < 100 and str(root) not in packet.message
    events = process.log_events()
    assert not [e for e in events if "worker died" in e["event"]]
    refused = [e for e in events if e["event"] == "TFTP request refused"]
    assert refused and all(len(e["file"]) <= 131 for e in refused)


def test_one_oversized_request_is_no_worker_s_death(tmp_path: Path, root: Path) -> None:
    """The hostile tryout: one 65 kB request made the main process log "TFTP worker died" while
    the worker lived (the stats message with the name in it did not fit the pipe)."""
    with tftp_server(tmp_path, root, tftp__workers="2") as (process, address), ExitStack() as stack:
        workers = _children(process.process.pid)
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(8)]
        for index, sock in enumerate(sockets):  # eight ports: some reach the worker
            sock.bind((HOST, 0))
            sock.settimeout(1.0)
            sock.sendto(encode(ReadRequest(f"{index}" + "L" * 65_400, "octet")), address)
            sock.recv(65536)
        time.sleep(5)  # two stats reports
        assert all(Path(f"/proc/{pid}").exists() for pid in workers)
        served = {e.get("worker") for e in process.log_events() if e["event"] == "TFTP request refused"}
        assert 1 in served  # the worker did refuse one
        assert not [e for e in process.log_events() if "worker died" in e["event"]]
        assert_alive((process, address))


def test_a_flood_of_unacknowledged_requests_cannot_lock_out_the_bootstrap(tmp_path: Path, root: Path) -> None:
    """The hostile tryout: 600 tiny RRQs never acknowledged took every transfer slot, and for about
    35 s everyone, pvs.bootstrap included, got "server busy"."""
    with tftp_server(tmp_path, root) as (process, address), ExitStack() as stack:
        sent = [0]

        def flood(source: str, count: int) -> None:
            for _ in range(count):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sock.bind((source, 0))
                sock.sendto(encode(ReadRequest("exact512", "octet")), address)
                sent[0] += 1
                if sent[0] % 100 == 0:
                    time.sleep(0.02)  # a flood, not a test of the service socket's buffer

        flood("127.0.0.2", 600)  # many ports of one address
        for host in range(150):  # and 600 more from 150 addresses: more than max_transfers in all
            flood(f"127.0.2.{host + 1}", 4)
        out = tmp_path / "pvs.bootstrap"
        tftpy.TftpClient(HOST, address[1]).download("pvs.bootstrap", str(out), timeout=1)
        assert b"pvsd-bootstrap" in out.read_bytes()
        for _ in range(4):  # an ordinary file is busy for now (each of these lands on some process)
            reply, _ = exchange(address, encode(ReadRequest("exact1468", "octet")))
            assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL
        # first_block_timeout frees the slots: ordinary files are served again within seconds
        wait_for(lambda: _fetches(address), timeout=10, interval=0.5)
    events = process.log_events()
    assert any(e["event"] == "TFTP transfer not acknowledged" for e in events)
    assert any(e.get("reason") == "too many transfers from this client" for e in events)
