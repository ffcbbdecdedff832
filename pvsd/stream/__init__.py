"""Login and vDisk streaming, the server side: the wire protocol (docs/protocol.md), signed
tickets, the login decision and placement, the login service and the I/O worker processes."""

from pvsd.stream.service import StreamService
from pvsd.stream.session import StreamServer
from pvsd.stream.ticket import Claims, TicketError, issue_ticket, verify_ticket
from pvsd.stream.wire import ErrorCode, StreamRefusal

__all__ = [
    "Claims",
    "ErrorCode",
    "StreamRefusal",
    "StreamServer",
    "StreamService",
    "TicketError",
    "issue_ticket",
    "verify_ticket",
]
