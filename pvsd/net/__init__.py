"""Network helpers shared by every protocol: MAC addresses, and later the bounded reader and UDP glue."""

from pvsd.net.mac import format_mac, parse_mac

__all__ = ["format_mac", "parse_mac"]
