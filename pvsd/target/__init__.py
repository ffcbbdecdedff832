"""The target side: the stream client and its pure flow engine, the agent that exports a streamed
vDisk over NBD (and the NBD codec), and finding the farm (PXE discovery, pvs.bootstrap)."""

from pvsd.target.client import StreamClient, StreamError
from pvsd.target.flow import Completion, Flow, Outgoing

__all__ = ["Completion", "Flow", "Outgoing", "StreamClient", "StreamError"]
