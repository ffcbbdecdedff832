"""Network helpers shared by every protocol: MAC addresses, the bounded reader, UDP endpoints."""

from pvsd.net.mac import format_mac, parse_mac
from pvsd.net.reader import DecodeError, ProtocolError, Reader

__all__ = ["DecodeError", "ProtocolError", "Reader", "format_mac", "parse_mac"]
