"""Login and vDisk streaming: the wire protocol (docs/protocol.md), signed tickets, the login
decision, the login service, the I/O worker processes, and the target's client."""

from pvsd.stream.client import StreamClient, StreamError
from pvsd.stream.flow import Flow
from pvsd.stream.service import StreamService
from pvsd.stream.ticket import Claims, TicketError, TicketProblem, issue_ticket, verify_ticket

__all__ = [
    "Claims",
    "Flow",
    "StreamClient",
    "StreamError",
    "StreamService",
    "TicketError",
    "TicketProblem",
    "issue_ticket",
    "verify_ticket",
]
