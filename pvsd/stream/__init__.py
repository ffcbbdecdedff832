"""Login and vDisk streaming, the server side: the wire protocol (docs/protocol.md), signed
tickets, the login decision and placement, the login service and the I/O worker processes."""

from pvsd.stream.service import StreamService
from pvsd.stream.ticket import Claims, TicketError, TicketProblem, issue_ticket, verify_ticket

__all__ = [
    "Claims",
    "StreamService",
    "TicketError",
    "TicketProblem",
    "issue_ticket",
    "verify_ticket",
]
