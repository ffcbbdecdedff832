"""Login and vDisk streaming: tickets so far; the wire protocol, login server and I/O workers follow."""

from pvsd.stream.ticket import Claims, TicketError, TicketProblem, issue_ticket, verify_ticket

__all__ = ["Claims", "TicketError", "TicketProblem", "issue_ticket", "verify_ticket"]
