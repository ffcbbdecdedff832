"""TFTP: the packet codec, the pure read-transfer state machine, where files come from, the
service and its worker processes."""

from pvsd.tftp.codec import ErrorCode, Opcode, Packet, ReadRequest, decode, encode
from pvsd.tftp.server import TftpServer, TftpStats
from pvsd.tftp.session import Limits, Outcome, ReadSession, Summary
from pvsd.tftp.sources import FileCache, SourceRegistry, resolve_path
from pvsd.tftp.workers import TftpWorkers

__all__ = [
    "ErrorCode",
    "FileCache",
    "Limits",
    "Opcode",
    "Outcome",
    "Packet",
    "ReadRequest",
    "ReadSession",
    "SourceRegistry",
    "Summary",
    "TftpServer",
    "TftpStats",
    "TftpWorkers",
    "decode",
    "encode",
    "resolve_path",
]
