"""Reading an ext4 file system inside an image, at a byte offset, without mounting it: e2fsprogs'
`debugfs` (read-only, `IMAGE?offset=N`). Works unprivileged and on any image file.

Each call is one debugfs process with a time bound; reads of many files go in one process
(`read_many`). What debugfs says about a damaged file system becomes a BadInput naming it.
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pvsd.errors import BadInput, Failure

__all__ = ["Ext4Image"]

TIMEOUT_S = 60.0
MAX_LINKS = 16


class Ext4Image:
    def __init__(self, image: Path, offset: int = 0) -> None:
        # In /usr/sbin, which a user's PATH often lacks.
        found = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")
        if found is None:
            raise Failure("debugfs is missing: install Debian's e2fsprogs")
        self.debugfs = found
        self.image = image
        self.offset = offset
        self.spec = f"{image}?offset={offset}" if offset else str(image)

    def _run(self, commands: Sequence[str]) -> str:
        with tempfile.NamedTemporaryFile("w", prefix="pvsd-debugfs-", suffix=".cmds") as script:
            script.write("\n".join(commands) + "\n")
            script.flush()
            try:
                done = subprocess.run(
                    [self.debugfs, "-f", script.name, self.spec],
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise BadInput(
                    f"{self.image}: debugfs took over {TIMEOUT_S:.0f} s (a damaged file system?)"
                ) from None
        # debugfs exits 0 whatever its commands met; what went wrong is on stderr, one line per
        # failed command. A missing path is an answer (callers ask whether files exist); any
        # other complaint (bad magic, illegal block numbers, checksums) means a damaged file system.
        problems = [
            line.strip()
            for line in done.stderr.splitlines()
            if line.strip()
            and not line.startswith("debugfs ")
            and "File not found by ext2_lookup" not in line
        ]
        if problems or done.returncode != 0:
            detail = problems[0] if problems else f"debugfs exited with {done.returncode}"
            raise BadInput(
                f"{self.image} at byte {self.offset}: not a readable ext4 file system (debugfs: {detail})"
            )
        return done.stdout

    def check(self) -> None:
        """BadInput unless the file system opens and its root can be listed."""
        self.listdir("/")

    def listdir(self, path: str) -> list[str]:
        """The names in a directory (without . and ..); empty when it does not exist."""
        names = []
        for line in self._run([f"ls -p {path}"]).splitlines():
            parts = line.split("/")
            if len(parts) >= 6 and parts[0] == "" and parts[5] not in (".", ".."):
                names.append(parts[5])
        return names

    def _stat(self, path: str) -> tuple[str, str | None]:
        """(type, symlink target) of a path; type "" when it does not exist."""
        out = self._run([f"stat {path}"])
        kind = ""
        target = None
        for line in out.splitlines():
            if "Type:" in line:
                kind = line.split("Type:", 1)[1].split()[0]
            if line.strip().startswith("Fast link dest:"):
                target = line.split(":", 1)[1].strip().strip('"')
        if kind == "symlink" and target is None:
            target = self._read_raw(path).decode(errors="replace")
        return kind, target

    def readlink(self, path: str) -> str | None:
        """The target a symlink names, as written (absolute or relative); None for anything else."""
        kind, target = self._stat(posixpath.normpath("/" + path.lstrip("/")))
        return target if kind == "symlink" else None

    def resolve(self, path: str) -> str | None:
        """`path` with its symlinks followed (absolute or relative), or None if it does not exist."""
        current = posixpath.normpath("/" + path.lstrip("/"))
        for _ in range(MAX_LINKS):
            kind, target = self._stat(current)
            if not kind:
                return None
            if kind != "symlink" or target is None:
                return current
            base = "/" if target.startswith("/") else posixpath.dirname(current)
            current = posixpath.normpath(posixpath.join(base, target))
        raise BadInput(f"{self.image}: {path} is a loop of more than {MAX_LINKS} symlinks")

    def exists(self, path: str) -> bool:
        return self.resolve(path) is not None

    def _read_raw(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="pvsd-debugfs-") as folder:
            out = Path(folder) / "file"
            self._run([f"dump {path} {out}"])
            return out.read_bytes() if out.exists() else b""

    def read(self, path: str) -> bytes:
        resolved = self.resolve(path)
        if resolved is None:
            raise BadInput(f"{self.image}: no {path} in the file system")
        return self._read_raw(resolved)

    def read_many(self, paths: Sequence[str]) -> dict[str, bytes]:
        """Several regular files (no symlinks followed) in one debugfs run; missing ones are left out."""
        with tempfile.TemporaryDirectory(prefix="pvsd-debugfs-") as folder:
            outs = {path: Path(folder) / str(index) for index, path in enumerate(paths)}
            self._run([f"dump {path} {out}" for path, out in outs.items()])
            return {path: out.read_bytes() for path, out in outs.items() if out.exists()}

    def dump(self, path: str, destination: Path) -> None:
        """Copy a file (symlinks followed) out of the image to `destination`."""
        resolved = self.resolve(path)
        if resolved is None:
            raise BadInput(f"{self.image}: no {path} in the file system")
        destination.unlink(missing_ok=True)
        self._run([f"dump {resolved} {destination}"])
        if not destination.exists():
            raise BadInput(f"{self.image}: {path} could not be read out of the file system")
