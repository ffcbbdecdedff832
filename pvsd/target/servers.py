"""Where a target finds its login servers: a list given by hand, or pvs.bootstrap over TFTP."""

from __future__ import annotations

import json
import tempfile
import urllib.parse
from pathlib import Path

from pvsd.errors import BadInput, Failure

__all__ = ["DEFAULT_LOGIN_PORT", "fetch_bootstrap", "parse_servers", "servers_from_bootstrap"]

DEFAULT_LOGIN_PORT = 6910
Address = tuple[str, int]


def parse_servers(text: str) -> list[Address]:
    """`HOST[:PORT],...` -> addresses, in order."""
    servers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = item.partition(":")
        try:
            number = int(port) if port else DEFAULT_LOGIN_PORT
        except ValueError:
            raise BadInput(f"bad server {item!r}: the port must be a number") from None
        if not host or not 1 <= number <= 65535:
            raise BadInput(f"bad server {item!r}: use HOST or HOST:PORT")
        servers.append((host, number))
    if not servers:
        raise BadInput("no server given: use --servers HOST[:PORT],...")
    return servers


def servers_from_bootstrap(content: bytes) -> list[Address]:
    try:
        document = json.loads(content)
        servers = [
            (str(s["address"]), int(s.get("login_port", DEFAULT_LOGIN_PORT))) for s in document["servers"]
        ]
    except (ValueError, KeyError, TypeError) as error:
        raise Failure(f"pvs.bootstrap is not a pvsd bootstrap document: {error}") from None
    if not servers:
        raise Failure("pvs.bootstrap lists no server: is any pvsd alive?")
    return servers


def fetch_bootstrap(url: str, timeout: float = 5.0) -> list[Address]:
    """Download `tftp://HOST[:PORT]/FILE` with tftpy and read its server list."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "tftp" or not parsed.hostname:
        raise BadInput(f"bad bootstrap URL {url!r}: use tftp://HOST[:PORT]/pvs.bootstrap")
    import logging

    import tftpy

    logging.getLogger("tftpy").setLevel(logging.WARNING)
    client = tftpy.TftpClient(parsed.hostname, parsed.port or 69)
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "pvs.bootstrap"
        try:
            client.download(
                parsed.path.lstrip("/") or "pvs.bootstrap", str(target), timeout=int(max(1, timeout))
            )
            return servers_from_bootstrap(target.read_bytes())
        except (tftpy.TftpException, OSError) as error:
            raise Failure(f"cannot download {url}: {error}") from None
