"""The in-process classical channel and the payload helpers of corridor.distill.channel."""

from __future__ import annotations

import numpy as np
import pytest

from corridor.distill.channel import (
    LARGE_PAYLOAD_BYTES,
    in_process_pair,
    join_buffers,
    receive_view,
)
from corridor.errors import ProtocolAbort


@pytest.mark.parametrize("sizes", [(0,), (3, 5), (LARGE_PAYLOAD_BYTES - 1, 1),
                                   (LARGE_PAYLOAD_BYTES, 7), (100_000, 0, 9)])
def test_join_buffers_concatenates_and_large_payloads_are_read_only_views(
        sizes: tuple[int, ...]) -> None:
    gen = np.random.default_rng(sum(sizes))
    parts = [gen.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    joined = join_buffers([parts[0], *(memoryview(p) for p in parts[1:])])
    assert bytes(joined) == b"".join(parts)
    if sum(sizes) < LARGE_PAYLOAD_BYTES:
        assert isinstance(joined, bytes)
    else:
        assert isinstance(joined, memoryview) and joined.readonly and joined.format == "B"


def test_queue_passes_read_only_views_on_and_copies_anything_writable() -> None:
    alice, bob = in_process_pair()
    whole = bytes(range(256)) * 4
    view = memoryview(whole)[10:20]
    alice.send("a", view)
    assert bob.recv("a") == whole[10:20]
    writable = bytearray(b"abc")
    alice.send("b", writable)
    writable[0] = 0x7A
    assert bob.recv("b") == b"abc"
    buffer = join_buffers([bytes(LARGE_PAYLOAD_BYTES)])
    alice.send("c", buffer)
    got = bob.recv_view("c")
    assert got.obj is buffer.obj and got.readonly
    alice.send("d", np.arange(4, dtype=np.int64).data.toreadonly())   # not bytes: copied
    assert bob.recv("d") == np.arange(4, dtype=np.int64).tobytes()
    assert alice.stats.bytes_sent == bob.stats.bytes_received


def test_receive_view_works_on_any_endpoint_and_checks_the_type() -> None:
    alice, bob = in_process_pair()

    class BytesOnly:
        """An endpoint with only recv (as test wrappers and other transports have)."""

        def recv(self, kind: str, timeout_s: float = 1.0) -> bytes:
            return bob.recv(kind, timeout_s)

    alice.send("x", b"payload")
    view = receive_view(BytesOnly(), "x")  # type: ignore[arg-type]
    assert bytes(view) == b"payload" and view.readonly
    alice.send("y", b"other")
    with pytest.raises(ProtocolAbort) as info:
        receive_view(bob, "x")
    assert info.value.reason == "unexpected_message"
