"""Guests that boot from a disk: a small Linux on ext4, and a bare BIOS boot sector.

Issue 6 asks for proof that a real OS boots from a vDisk that pvsd streams. The streaming side
is pvsd's; this module builds what runs on the other end and reads what it says:

- `build_initramfs` + `build_rootfs` + `boot_guest`: Debian's own kernel (`linux-image-amd64`)
  with an initramfs of `busybox-static` that loads the virtio and ext4 modules, mounts
  `/dev/vda` and switch_roots into it. The root file system holds a seeded random payload; its
  `/init.sh` prints the payload's SHA-256 (every block read through the disk), writes 16 MiB
  derived from it, syncs, drops the page cache, and prints the written file's SHA-256 (every
  block written and read back through the disk). The test knows both sums in advance. It
  remounts its root read-only before the done marker, so nothing writes during the power-off
  (see `STOP_WRITES_SH`).
- `build_boot_sector_disk` + `boot_bios`: a 512-byte boot sector (nasm) that reads sectors
  through the firmware's INT 13h, as a legacy PXE/BDM client does before any OS driver exists,
  and prints an order-sensitive checksum on the serial port.

Everything is built from local packages and a seed: no downloads, no root needed to build (the
initramfs cpio is written here in Python, so device nodes need no mknod; ext4 comes from
`mke2fs -d`, so nothing is mounted). A missing tool raises `GuestToolMissing` naming the
Debian package, so a test fails with a useful message instead of skipping.

Verified timings on the 2-core TCG machine are in the module's test, tests/e2e/test_guest_image.py.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gzip
import hashlib
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pvsd.boot.cpio import CpioWriter
from pvsd.boot.linux_image import module_order

BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"

DONE_MARKER = "PVSD-GUEST-DONE"
FAIL_MARKER = "PVSD-GUEST-FAIL"
BIOS_DONE_MARKER = "PVSD-BIOS-DONE"
BIOS_FAIL_MARKER = "PVSD-BIOS-ERROR"

# Load order matters: busybox insmod does not resolve dependencies (DESIGN.md section 5).
# crc32c_generic: ext4 and jbd2 ask the crypto API for "crc32c" (metadata_csum, on by default in
# mke2fs here) and nothing in the initramfs could modprobe it on demand. crc32c_intel is not
# enough on its own: TCG's default CPU has no SSE4.2.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
)

# Lines a guest kernel prints when the disk under it failed a request.
IO_ERROR_RE = re.compile(r"I/O error|blk_update_request|Buffer I/O error|EXT4-fs error")

WRITE_OFFSET_MIB = 8
# What /init.sh pipes the written data through: every byte + 1 (mod 256), so the written file
# matches no run of blocks already on the disk.
_ROTATE = bytes((i + 1) % 256 for i in range(256))


class GuestToolMissing(RuntimeError):
    """A program or file the guest builders need is not installed; the message names the package."""


# -- tools -------------------------------------------------------------------------------------


def kernel() -> Path:
    """Debian's kernel, the newest /boot/vmlinuz-* whose modules are installed.

    The host kernel is no use (it may be a VM's own build without modules); `linux-image-amd64`
    gives a kernel and a matching /lib/modules tree with virtio and ext4 as modules.
    """
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / version / "modules.dep").is_file():
            found.append(image)
    if not found:
        raise GuestToolMissing(
            "no /boot/vmlinuz-* with modules under /lib/modules: install the Debian package linux-image-amd64"
        )
    newest = max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
    if not os.access(newest, os.R_OK):
        raise GuestToolMissing(f"{newest} is not readable (Debian makes it 0600): run as root")
    return newest


def _modules_dir(vmlinuz: Path) -> Path:
    return Path("/lib/modules") / vmlinuz.name.removeprefix("vmlinuz-")


def _is_static_elf(path: Path) -> bool:
    """True when the ELF file has no PT_INTERP, i.e. runs without a dynamic loader."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit only
            return False
        phoff = struct.unpack_from("<Q", header, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def require_guest_tools(bios: bool = False) -> None:
    """Fail early, naming the Debian package, when something the guests need is missing.

    With `bios=True` only what the boot-sector guest needs is checked (QEMU and nasm).
    """
    needs = [(QEMU, "qemu-system-x86")]
    needs += [("nasm", "nasm")] if bios else [("mke2fs", "e2fsprogs")]
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in needs if shutil.which(tool) is None]
    if not bios and not (BUSYBOX.is_file() and _is_static_elf(BUSYBOX)):
        missing.append(f"a static {BUSYBOX} (Debian package busybox-static)")
    if missing:
        raise GuestToolMissing("missing: " + ", ".join(missing))
    if not bios:
        modules = _modules_dir(kernel())
        absent = [name for name in MODULES if _find_module(modules, name) is None]
        if absent:
            raise GuestToolMissing(f"modules {absent} not under {modules} (Debian package linux-image-amd64)")


# -- initramfs ---------------------------------------------------------------------------------


def _find_module(modules: Path, name: str) -> Path | None:
    """The module file for `name` per modules.dep (plain, .xz or .zst), or None if built in."""
    for line in (modules / "modules.dep").read_text().splitlines():
        path = line.split(":", 1)[0]
        base = Path(path).name.split(".ko", 1)[0]
        if base.replace("-", "_") == name:
            return modules / path
    return None


def _module_bytes(path: Path) -> bytes:
    """The module as busybox insmod needs it: uncompressed (it cannot read .ko.xz)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def _applets() -> list[str]:
    """Paths like usr/bin/sha256sum for every applet of the host's busybox-static."""
    out = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True).stdout
    return [line for line in out.split() if line and line != "bin/busybox"]


_INIT = """#!/bin/busybox sh
# pvsd test initramfs: load virtio + ext4, mount /dev/vda, switch_root into it.
fail() {{ echo "{fail} initramfs: $*"; sync; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST-INIT: initramfs up"
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "GUEST-INIT: insmod $m failed"
done
n=0
while [ ! -b /dev/vda ]; do
    n=$((n + 1))
    [ $n -gt 300 ] && fail "no /dev/vda after 30 s"
    sleep 0.1
done
mount -t ext4 -o rw /dev/vda /newroot || fail "mount /dev/vda failed"
[ -x /newroot/init.sh ] || fail "no /init.sh on /dev/vda"
mount --move /dev /newroot/dev || fail "mount --move /dev failed"
umount /proc /sys
echo "GUEST-INIT: switch_root"
exec switch_root /newroot /init.sh
fail "switch_root failed"
"""


def build_initramfs(out: Path) -> Path:
    """A gzip'd newc cpio: busybox-static, the virtio + ext4 modules, and an /init that mounts
    /dev/vda as ext4 and switch_roots into its /init.sh. Returns `out`.

    Built in Python so /dev/console exists without mknod (the kernel opens it for init's
    stdout before anything else runs; without it the guest is mute).
    """
    require_guest_tools()
    modules = _modules_dir(kernel())
    archive = CpioWriter()
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "lib",
        "lib/modules",
    ):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    archive.chardev("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _applets():
        archive.symlink(applet, "/bin/busybox")
    loaded = []
    for name in MODULES:
        path = _find_module(modules, name)
        if path is None:  # built into this kernel: nothing to load
            continue
        archive.file(f"lib/modules/{name}.ko", _module_bytes(path))
        loaded.append(name)
    init = _INIT.format(fail=FAIL_MARKER, modules=" ".join(loaded))
    archive.file("init", init.encode(), 0o755)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(archive.finish(), compresslevel=1))
    return out


# -- root file system --------------------------------------------------------------------------


@dataclass(frozen=True)
class RootImage:
    """An ext4 image and the sums its /init.sh must print when it boots from it."""

    path: Path
    payload_sha256: str
    write_size: int
    expected_write_sha256: str


_INIT_SH = """#!/bin/busybox sh
# pvsd test guest: read the payload, write and read back a derived file, report, power off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
echo "GUEST-INIT: root is /dev/vda"
set -- $(sha256sum /data/random.bin)
echo "PAYLOAD-SHA256 $1"
dd if=/data/random.bin bs=1M skip={skip} count={count} 2>/dev/null \\
    | tr '\\000-\\377' '\\001-\\377\\000' > /data/written.bin
sync
echo 3 > /proc/sys/vm/drop_caches
set -- $(sha256sum /data/written.bin)
echo "WRITTEN-SHA256 $1"
dmesg | grep -E '{io_re}' | sed 's/^/GUEST-KERNEL: /'
{stop_writes}echo "{done}"
poweroff -f
"""

# How a guest stops writing before it says it is done and powers off: `sync` alone is not enough.
# ext4lazyinit zeroes the inode tables in the background for seconds after a mount (starting at
# a random delay of up to 5 s), and the guest kernel (Debian's 6.1, with the CVE-2025-38064 fix
# "virtio: break and reset virtio devices on device_shutdown()") breaks every virtqueue during
# `poweroff -f`: a zeroing issued then fails in the guest itself, never reaching QEMU, as an
# "I/O error ... op 0x9:(WRITE_ZEROES)" and one for the fallback WRITE of zero pages at the same
# sector, after the done marker. A read-only remount waits for a zeroing in progress, stops
# lazyinit and writes everything back, so nothing writes to the disk after it; if it fails the
# guest says so, rather than leave the race in.
STOP_WRITES_SH = """sync
mount -o remount,ro / || echo "{fail} remount read-only failed"
"""


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def build_rootfs(
    out: Path,
    size: int = 256 << 20,
    payload_size: int = 64 << 20,
    seed: int = 1,
    *,
    init_sh: str | None = None,
    linux: bool = False,
) -> RootImage:
    """An ext4 image (whole disk, no partition table) made with `mke2fs -d`, so no mount.

    Holds busybox-static, /data/random.bin (`payload_size` bytes from `seed`) and /init.sh. The
    guest writes 16 MiB: payload bytes from 8 MiB on, each byte + 1, so the expected sum of what
    it reads back is known here and matches nothing that was on the disk before. `init_sh`
    replaces that /init.sh, for tests of the guest itself.
    """
    require_guest_tools()
    write_size = 16 << 20
    if payload_size < (WRITE_OFFSET_MIB << 20) + write_size:
        raise ValueError(f"payload_size must be at least {(WRITE_OFFSET_MIB << 20) + write_size}")
    payload = _payload(payload_size, seed)
    window = payload[WRITE_OFFSET_MIB << 20 : (WRITE_OFFSET_MIB << 20) + write_size]
    expected_write = hashlib.sha256(window.translate(_ROTATE)).hexdigest()
    with tempfile.TemporaryDirectory(prefix="pvsd-rootfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "data"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        for applet in _applets():
            (root / applet).symlink_to("/bin/busybox")
        (root / "data/random.bin").write_bytes(payload)
        script = init_sh or _INIT_SH.format(
            skip=WRITE_OFFSET_MIB,
            count=write_size >> 20,
            io_re=IO_ERROR_RE.pattern,
            stop_writes=STOP_WRITES_SH.format(fail=FAIL_MARKER),
            done=DONE_MARKER,
        )
        (root / "init.sh").write_text(script)
        (root / "init.sh").chmod(0o755)
        if linux:
            _add_linux_boot(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        subprocess.run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "pvsd-guest",
                "-d",
                str(root),
                str(out),
                f"{size // 1024}k",
            ],
            check=True,
            capture_output=True,
        )
    return RootImage(out, hashlib.sha256(payload).hexdigest(), write_size, expected_write)


# What the diskless chain needs of the image's own /lib/modules (pvsd's overlay loads them), and
# what a distribution image has besides: the guest's kernel finds its modules where Debian puts them.
DISKLESS_MODULES = ("virtio_pci", "virtio_net", "e1000", "nbd", "crc32c_generic", "ext4")


def _add_linux_boot(root: Path) -> None:
    """The layout of a distribution image: /boot/vmlinuz-VERSION, /lib/modules/VERSION (a subset
    of Debian's, indexed by `depmod -b`) and /sbin/init (here the test's /init.sh)."""
    vmlinuz = kernel()
    version = vmlinuz.name.removeprefix("vmlinuz-")
    (root / "boot").mkdir(exist_ok=True)
    shutil.copy2(vmlinuz, root / "boot" / vmlinuz.name)
    source = _modules_dir(vmlinuz)
    target = root / "lib" / "modules" / version
    order, _ = module_order(
        (source / "modules.dep").read_text(),
        (source / "modules.builtin").read_text(),
        (*DISKLESS_MODULES, *MODULES),
    )
    for relative in map(Path, order):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / relative, target / relative)
    for index in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (source / index).exists():
            shutil.copy2(source / index, target / index)
    subprocess.run(["depmod", "-b", str(root), version], check=True, capture_output=True)
    (root / "sbin" / "init").unlink(missing_ok=True)
    (root / "sbin" / "init").symlink_to("/init.sh")


def image_file_sha256(image: Path, inner: str) -> str:
    """SHA-256 of a file inside an ext4 image, read with debugfs (e2fsprogs), no mount.

    Tells whether what the guest wrote really reached the disk behind the drive.
    """
    out = subprocess.run(
        ["debugfs", "-R", f"cat {inner}", str(image)], check=True, capture_output=True
    ).stdout
    return hashlib.sha256(out).hexdigest()


# -- running QEMU ------------------------------------------------------------------------------


@dataclass
class GuestRun:
    """What one boot printed. `seconds` is from QEMU's start to the end marker (or timeout)."""

    console: str
    seconds: float
    payload_sha256: str | None = None
    written_sha256: str | None = None
    io_errors: list[str] = field(default_factory=list)
    done: bool = False
    failure: str | None = None

    def problems(self, image: RootImage) -> list[str]:
        """Everything that differs from a clean boot of `image`; empty means it all worked."""
        found = []
        if not self.done:
            found.append(f"no {DONE_MARKER} after {self.seconds:.1f} s ({self.failure or 'timeout'})")
        if self.payload_sha256 != image.payload_sha256:
            found.append(f"payload sum {self.payload_sha256} != {image.payload_sha256}")
        if self.written_sha256 != image.expected_write_sha256:
            found.append(f"written sum {self.written_sha256} != {image.expected_write_sha256}")
        found += [f"I/O error: {line}" for line in self.io_errors]
        return found


def _accel() -> list[str]:
    """TCG unless PVSD_QEMU_ACCEL says otherwise (e.g. "kvm").

    /dev/kvm exists on these machines but a guest under it hangs with no output (verified: 120 s
    of silence, spinning in the host kernel), while TCG boots the Linux guest in about 8 s. The
    lab (pvsd/lab/qemu.py) uses TCG too.
    """
    return ["-accel", os.environ.get("PVSD_QEMU_ACCEL", "tcg")]


def _run_qemu(
    args: list[str],
    timeout: float,
    stop: tuple[str, ...],
    grace: float = 0,
    on_line: Callable[[str], None] | None = None,
) -> tuple[str, float, str | None]:
    """Run QEMU until a line contains one of `stop` or `timeout`; always kill it after.

    After the stop line QEMU gets `grace` seconds to exit by itself (a guest's poweroff).
    `on_line` sees each console line as it comes (from the reader thread), e.g. to kill a server
    at a given point of the boot.

    Returns the console text, the seconds to the stop line (or to the end), and that line.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    hit: list[tuple[str, float]] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
            if not hit and any(m in line for m in stop):
                hit.append((line, time.monotonic() - start))
                seen.set()
        seen.set()  # EOF: QEMU is gone

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen.wait(timeout)
        if hit and grace:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)
    if hit:
        return "\n".join(lines), hit[0][1], hit[0][0]
    return "\n".join(lines), time.monotonic() - start, None


@functools.cache
def _default_initramfs() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="pvsd-initramfs-"))
    atexit.register(shutil.rmtree, tmp, True)
    return build_initramfs(tmp / "initramfs.gz")


def boot_guest(
    drive: str,
    timeout: float = 120,
    extra: Sequence[str] = (),
    *,
    initrd: Path | None = None,
    append: str = "",
    memory_mib: int = 512,
    namespace: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> GuestRun:
    """Boot Debian's kernel with our initramfs on a virtio disk and read what the guest says.

    `drive` is the start of QEMU's -drive value: `file=/path/disk.img` or
    `file=nbd://127.0.0.1:PORT/EXPORT` (add `,cache=none` and the like there);
    `,format=raw,if=virtio` is appended; there is no NIC (`-net none`), so no option ROM to
    wait for. `extra` goes to QEMU as is. Without `initrd` one is
    built once per process. With `namespace`, QEMU runs inside that network namespace. QEMU
    is killed at the end whatever happened.
    """
    args = [
        *(["ip", "netns", "exec", namespace] if namespace else []),
        QEMU,
        "-nographic",
        "-no-reboot",
        "-m",
        str(memory_mib),
        *_accel(),
        "-kernel",
        str(kernel()),
        "-initrd",
        str(initrd or _default_initramfs()),
        "-append",
        f"console=ttyS0 quiet panic=-1 {append}".strip(),
        "-drive",
        f"{drive},format=raw,if=virtio",
        "-net",
        "none",
        *extra,
    ]
    return guest_run(*_run_qemu(args, timeout, (DONE_MARKER, FAIL_MARKER), grace=5, on_line=on_line), timeout)


def guest_run(console: str, seconds: float, line: str | None, timeout: float) -> GuestRun:
    """What a guest run printed, read for the markers and sums of `_INIT_SH`."""
    run = GuestRun(console=console, seconds=seconds)
    run.done = line is not None and DONE_MARKER in line
    if line is not None and FAIL_MARKER in line:
        run.failure = line
    elif line is None:
        run.failure = f"timeout after {timeout:.0f} s or QEMU exited"
    for text in console.splitlines():
        if m := re.search(r"PAYLOAD-SHA256 ([0-9a-f]{64})", text):
            run.payload_sha256 = m.group(1)
        elif m := re.search(r"WRITTEN-SHA256 ([0-9a-f]{64})", text):
            run.written_sha256 = m.group(1)
        elif IO_ERROR_RE.search(text):
            run.io_errors.append(text)
    return run


# -- legacy BIOS boot sector -------------------------------------------------------------------

_BOOT_ASM = r"""
; pvsd test boot sector: read SECTORS sectors after sector 0 through INT 13h AH=42h, CHUNK at a
; time, fold every little-endian dword d into sum = rol(sum, 1) + d, and print the sum in hex on
; COM1 (0x3F8), which is QEMU -nographic's stdout. Order-sensitive, so a sector served from the
; wrong place changes the sum.
bits 16
org 0x7c00
CHUNK equ 32
BUFSEG equ 0x1000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    cld
    mov [drive], dl
    mov si, msg_start
    call puts
    mov ah, 0x41            ; are the INT 13h extensions there?
    mov bx, 0x55aa
    mov dl, [drive]
    int 0x13
    jc no_ext
    cmp bx, 0xaa55
    jne no_ext

next:
    mov cx, [left]
    test cx, cx
    jz done
    cmp cx, CHUNK
    jbe .sized
    mov cx, CHUNK
.sized:
    mov [chunk], cx
    mov [dap_count], cx
    mov word [dap_off], 0
    mov word [dap_seg], BUFSEG
    mov eax, [lba]
    mov [dap_lba], eax
    mov dword [dap_lba + 4], 0
    mov si, dap
    mov ah, 0x42
    mov dl, [drive]
    int 0x13
    jc read_error
    push es
    mov ax, BUFSEG
    mov es, ax
    mov cx, [chunk]
    shl cx, 7               ; 128 dwords per sector
    xor di, di
    mov eax, [sum]
.fold:
    rol eax, 1
    add eax, [es:di]
    add di, 4
    loop .fold
    pop es
    mov [sum], eax
    movzx ecx, word [chunk]
    add [lba], ecx
    sub [left], cx
    jmp next

done:
    mov si, msg_sum
    call puts
    mov eax, [sum]
    mov cx, 8
.hex:
    rol eax, 4
    push eax
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 'a' - '0' - 10
.digit:
    call putc
    pop eax
    loop .hex
    mov si, msg_done
    call puts
    jmp halt

no_ext:
    mov ah, 0xff
read_error:
    mov [err], ah
    mov si, msg_err
    call puts
    mov al, [err]
    shr al, 4
    call nibble
    mov al, [err]
    call nibble
    mov si, msg_crlf
    call puts
halt:
    cli
    hlt
    jmp halt

nibble:                     ; print the low nibble of al
    and al, 0x0f
    add al, '0'
    cmp al, '9'
    jbe putc
    add al, 'a' - '0' - 10
putc:                       ; al -> COM1, waiting for the transmitter
    push dx
    push ax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, 0x3f8
    out dx, al
    pop dx
    ret

puts:                       ; ds:si, zero-terminated
    lodsb
    test al, al
    jz .end
    call putc
    jmp puts
.end:
    ret

msg_start: db "PVSD-BIOS-START", 13, 10, 0
msg_sum:   db "PVSD-BIOS-SUM ", 0
msg_done:  db 13, 10, "PVSD-BIOS-DONE", 13, 10, 0
msg_err:   db "PVSD-BIOS-ERROR ", 0
msg_crlf:  db 13, 10, 0

align 4
sum:   dd 0
lba:   dd 1
left:  dw SECTORS
chunk: dw 0
drive: db 0
err:   db 0
align 4
dap:       db 0x10, 0
dap_count: dw 0
dap_off:   dw 0
dap_seg:   dw 0
dap_lba:   dd 0, 0

times 510 - ($ - $$) db 0
dw 0xaa55
"""


@dataclass(frozen=True)
class BiosDisk:
    """A raw disk: our boot sector, then `sectors` seeded random sectors, padded to `size`."""

    path: Path
    sectors: int
    expected_checksum: str


def expected_bios_checksum(image: Path, sectors: int) -> str:
    """The boot sector's checksum of sectors 1..`sectors`, as the 8 hex digits it prints."""
    with image.open("rb") as f:
        f.seek(512)
        data = f.read(sectors * 512)
    total = 0
    for (dword,) in struct.iter_unpack("<I", data):
        total = ((((total << 1) | (total >> 31)) & 0xFFFFFFFF) + dword) & 0xFFFFFFFF
    return f"{total:08x}"


def build_boot_sector_disk(out: Path, sectors: int = 384, seed: int = 1, size: int = 1 << 20) -> BiosDisk:
    """Assemble the boot sector with nasm and write the disk image; see `_BOOT_ASM`."""
    require_guest_tools(bios=True)
    if not 1 <= sectors <= 0xFFFF or (sectors + 1) * 512 > size or size % 512:
        raise ValueError(f"{sectors} sectors do not fit a {size}-byte disk")
    with tempfile.TemporaryDirectory(prefix="pvsd-bootsector-") as tmp:
        asm, binary = Path(tmp) / "boot.asm", Path(tmp) / "boot.bin"
        asm.write_text(_BOOT_ASM)
        subprocess.run(
            ["nasm", "-f", "bin", f"-DSECTORS={sectors}", "-o", str(binary), str(asm)],
            check=True,
            capture_output=True,
        )
        boot = binary.read_bytes()
    if len(boot) != 512 or boot[510:] != b"\x55\xaa":
        raise RuntimeError(f"boot sector assembled to {len(boot)} bytes")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        f.write(boot)
        f.write(random.Random(seed).randbytes(sectors * 512))
        f.truncate(size)
    return BiosDisk(out, sectors, expected_bios_checksum(out, sectors))


@dataclass
class BiosRun:
    """What the boot sector printed on COM1."""

    console: str
    seconds: float
    checksum: str | None = None
    done: bool = False
    error: str | None = None


def boot_bios(drive: str, timeout: float = 60, interface: str = "ide", extra: Sequence[str] = ()) -> BiosRun:
    """Boot SeaBIOS from `drive` (as for `boot_guest`; `,format=raw,if=<interface>` appended).

    SeaBIOS boots virtio-blk too, so `interface="virtio"` works as well as IDE. QEMU is killed
    once the boot sector reports, since it then just halts.
    """
    args = [
        QEMU,
        "-nographic",
        "-no-reboot",
        "-m",
        "64",
        *_accel(),
        "-drive",
        f"{drive},format=raw,if={interface}",
        "-boot",
        "c",
        "-net",
        "none",
        *extra,
    ]
    console, seconds, line = _run_qemu(args, timeout, (BIOS_DONE_MARKER, BIOS_FAIL_MARKER))
    run = BiosRun(console=console, seconds=seconds)
    if m := re.search(r"PVSD-BIOS-SUM ([0-9a-f]{8})", console):
        run.checksum = m.group(1)
    run.done = line is not None and BIOS_DONE_MARKER in line
    if m := re.search(r"PVSD-BIOS-ERROR (\w+)", console):
        run.error = f"INT 13h error {m.group(1)}"
    elif line is None:
        run.error = f"timeout after {timeout:.0f} s or QEMU exited"
    return run
