"""The stream client's receive path, without a socket: one datagram, or a coalesced UDP_GRO burst of
them, of any bytes and any segment size, feeds the flow or is ignored, and never raises."""

from __future__ import annotations

import struct

from hypothesis import example, given
from hypothesis import strategies as st

from pvsd.config import TargetConfig
from pvsd.log import get_logger
from pvsd.stream.wire import data_burst
from pvsd.target.client import SOL_UDP, UDP_GRO, StreamClient, gro_segment
from pvsd.target.flow import Flow

SESSION = 42
SIZE = 64 << 10


def client() -> StreamClient:
    target = StreamClient("52:54:00:00:00:01", [("127.0.0.1", 6910)], TargetConfig(), get_logger("test"))
    target.session = SESSION
    target.flow = Flow(disk_size=SIZE, sector_size=512, max_payload=1024, max_burst=4096, window=4)
    return target


def test_a_coalesced_burst_completes_a_read() -> None:
    target = client()
    assert target.flow is not None
    handle = target.flow.read(0, 4096)
    (out,) = target.flow.poll(0.0)
    data = bytes(range(256)) * 16
    burst = b"".join(data_burst(out.request_id, SESSION, 0, data, 1024))
    assert target.received(burst, 1024 + 26, target.flow, 0.001)
    (completion,) = target.flow.completions()
    assert completion.handle == handle and completion.data == data


def test_the_gro_segment_size_comes_from_the_control_message() -> None:
    assert gro_segment([(SOL_UDP, UDP_GRO, struct.pack("=i", 1050))]) == 1050
    assert gro_segment([(SOL_UDP, UDP_GRO, struct.pack("=H", 1050))]) == 1050
    assert gro_segment([(SOL_UDP, UDP_GRO, b"\x01")]) is None
    assert gro_segment([(0, 0, b"")]) is None


@given(st.binary(max_size=600), st.one_of(st.none(), st.integers(-5, 700)))
@example(b"x" * 42, 40)  # a last segment of two bytes: shorter than a header
@example(b"\x50\x56\x01\x06" + bytes(36) + b"\x50\x56", 40)
def test_any_receive_is_taken_or_ignored_never_an_exception(blob: bytes, segment: int | None) -> None:
    target = client()
    assert target.flow is not None
    target.flow.read(0, 4096)
    target.flow.poll(0.0)
    target.received(blob, segment, target.flow, 0.001)


@given(st.integers(1, 4096 // 512), st.integers(0, 30), st.integers(1, 1100))
def test_a_real_burst_with_a_torn_tail_is_taken_or_ignored(sectors: int, cut: int, segment: int) -> None:
    target = client()
    assert target.flow is not None
    target.flow.read(0, sectors * 512)
    (out,) = target.flow.poll(0.0)
    burst = b"".join(data_burst(out.request_id, SESSION, 0, bytes(sectors * 512), 512))
    target.received(burst[: max(0, len(burst) - cut)], segment, target.flow, 0.001)
