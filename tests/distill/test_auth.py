"""Wegman-Carter authentication: every alteration, replay, reorder or reflection aborts."""

from __future__ import annotations

import threading

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill.auth import (
    HASH_KEY_BYTES,
    PAD_BYTES,
    TAG_BYTES,
    WIRE_KIND,
    AuthenticatedChannel,
    AuthenticationKeyPool,
    poly1305_forgery_bound,
)
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelStats, QueueEndpoint, in_process_pair
from corridor.errors import AuthenticationFailure, ParameterError, ProtocolAbort
from corridor.randomness import RandomSource

HEADER_BYTES = 19


class Capture:
    """A raw endpoint whose outgoing frames the test holds back and delivers by hand."""

    def __init__(self, inner: QueueEndpoint) -> None:
        self.inner = inner
        self.frames: list[bytes] = []
        self.stats = ChannelStats()

    def send(self, kind: str, payload: bytes) -> None:
        assert kind == WIRE_KIND
        self.frames.append(bytes(payload))

    def deliver(self, frame: bytes) -> None:
        self.inner.send(WIRE_KIND, frame)

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        return self.inner.recv(kind, timeout_s)

    def close(self) -> None:
        self.inner.close()


def _secret(n_bytes: int = 4096, seed: int = 1) -> bytes:
    return RandomSource.seeded(seed).bytes(n_bytes)


def _pair(secret: bytes | None = None, bob_secret: bytes | None = None, pads_per_epoch: int = 1,
          ) -> tuple[AuthenticatedChannel, AuthenticatedChannel, Capture, Capture]:
    secret = _secret() if secret is None else secret
    raw_alice, raw_bob = in_process_pair()
    cap_alice, cap_bob = Capture(raw_alice), Capture(raw_bob)
    alice = AuthenticatedChannel(cap_alice, AuthenticationKeyPool(secret), "alice", pads_per_epoch)
    bob = AuthenticatedChannel(cap_bob, AuthenticationKeyPool(bob_secret or secret), "bob",
                               pads_per_epoch)
    return alice, bob, cap_alice, cap_bob


def _plain_pair(pads_per_epoch: int = 1) -> tuple[AuthenticatedChannel, AuthenticatedChannel]:
    secret = _secret()
    raw_alice, raw_bob = in_process_pair()
    return (AuthenticatedChannel(raw_alice, AuthenticationKeyPool(secret), "alice", pads_per_epoch),
            AuthenticatedChannel(raw_bob, AuthenticationKeyPool(secret), "bob", pads_per_epoch))


@pytest.mark.parametrize("pads_per_epoch", [1, 3])
def test_round_trip_with_crossing_messages(pads_per_epoch: int) -> None:
    alice, bob = _plain_pair(pads_per_epoch)
    alice.send("bases", b"\x01\x02")
    bob.send("bases", b"\x03")  # crosses Alice's message: pads must still line up
    assert bob.recv("bases", 1) == b"\x01\x02"
    assert alice.recv("bases", 1) == b"\x03"
    for i in range(5):
        alice.send("parity", bytes([i]) * i)
    for i in range(5):
        assert bob.recv("parity", 1) == bytes([i]) * i
    bob.send("done", b"")
    assert alice.recv("done", 1) == b""
    assert alice.stats.messages_sent == 6 and bob.stats.messages_received == 6


def test_alice_and_bob_in_threads() -> None:
    alice, bob = _plain_pair()
    received: list[bytes] = []

    def bob_side() -> None:
        for _ in range(50):
            received.append(bob.recv("ping", 5))
            bob.send("pong", b"ok")

    worker = threading.Thread(target=bob_side)
    worker.start()
    for i in range(50):
        alice.send("ping", i.to_bytes(2, "big"))
        assert alice.recv("pong", 5) == b"ok"
    worker.join()
    assert received == [i.to_bytes(2, "big") for i in range(50)]


def test_tag_is_poly1305_with_session_key_and_fresh_pad() -> None:
    secret = _secret()
    alice, bob, cap_alice, _ = _pair(secret)
    alice.send("k", b"payload")
    frame = cap_alice.frames[0]
    r = secret[:HASH_KEY_BYTES]
    pad = secret[HASH_KEY_BYTES:HASH_KEY_BYTES + PAD_BYTES]  # epoch 0, alice->bob, seq 0
    assert frame[-TAG_BYTES:] == Poly1305.generate_tag(r + pad, frame[:-TAG_BYTES])
    cap_alice.deliver(frame)
    assert bob.recv("k", 1) == b"payload"


def test_every_single_bit_flip_is_caught() -> None:
    template_alice, _, cap_alice, _ = _pair()
    template_alice.send("cascade", b"parities")
    frame = cap_alice.frames[0]
    for bit in range(8 * len(frame)):
        alice, bob, cap_alice, _ = _pair()
        alice.send("cascade", b"parities")
        assert cap_alice.frames[0] == frame
        altered = bytearray(frame)
        altered[bit // 8] ^= 1 << (bit % 8)
        cap_alice.deliver(bytes(altered))
        with pytest.raises(AuthenticationFailure):
            bob.recv("cascade", 1)


@pytest.mark.parametrize("region", ["payload", "tag", "type", "sequence"])
def test_tampering_names_the_failure(region: str) -> None:
    alice, bob, cap_alice, _ = _pair()
    alice.send("sift", b"0123456789")
    frame = bytearray(cap_alice.frames[0])
    position = {"payload": HEADER_BYTES + 4 + 3, "tag": len(frame) - 1,
                "type": HEADER_BYTES + 1, "sequence": HEADER_BYTES - 2}[region]
    frame[position] ^= 0x10
    cap_alice.deliver(bytes(frame))
    with pytest.raises(AuthenticationFailure) as info:
        bob.recv("sift", 1)
    assert info.value.reason == "authentication_failed"
    # The channel is dead afterwards: fail closed.
    cap_alice.deliver(cap_alice.frames[0])
    with pytest.raises(AuthenticationFailure, match="earlier failure"):
        bob.recv("sift", 1)
    with pytest.raises(AuthenticationFailure):
        bob.send("reply", b"")


def test_replay_is_caught() -> None:
    alice, bob, cap_alice, _ = _pair()
    alice.send("m", b"once")
    cap_alice.deliver(cap_alice.frames[0])
    assert bob.recv("m", 1) == b"once"
    cap_alice.deliver(cap_alice.frames[0])
    with pytest.raises(AuthenticationFailure, match="replayed"):
        bob.recv("m", 1)


def test_reorder_and_drop_are_caught() -> None:
    alice, bob, cap_alice, _ = _pair()
    alice.send("m", b"first")
    alice.send("m", b"second")
    cap_alice.deliver(cap_alice.frames[1])
    with pytest.raises(AuthenticationFailure, match="out of order"):
        bob.recv("m", 1)


def test_reflection_is_caught() -> None:
    alice, _, cap_alice, cap_bob = _pair()
    alice.send("m", b"to bob")
    # Put Alice's own frame into Alice's inbox, as an attacker bouncing it back would.
    cap_bob.deliver(cap_alice.frames[0])
    with pytest.raises(AuthenticationFailure, match="reflected"):
        alice.recv("m", 1)


@pytest.mark.parametrize("keep", [0, 5, HEADER_BYTES + TAG_BYTES - 1, HEADER_BYTES + TAG_BYTES,
                                  -1, -TAG_BYTES])
def test_truncation_is_caught(keep: int) -> None:
    alice, bob, cap_alice, _ = _pair()
    alice.send("m", b"a longer payload than the tag")
    cap_alice.deliver(cap_alice.frames[0][:keep])
    with pytest.raises(AuthenticationFailure):
        bob.recv("m", 1)


def test_wrong_pre_shared_key_is_caught() -> None:
    alice, bob, cap_alice, _ = _pair(_secret(seed=1), bob_secret=_secret(seed=2))
    alice.send("m", b"x")
    cap_alice.deliver(cap_alice.frames[0])
    with pytest.raises(AuthenticationFailure, match="tag mismatch"):
        bob.recv("m", 1)


def test_pools_out_of_step_are_named() -> None:
    secret = _secret()
    raw_alice, raw_bob = in_process_pair()
    bob_pool = AuthenticationKeyPool(secret)
    bob_pool.skip_to(32)
    alice = AuthenticatedChannel(raw_alice, AuthenticationKeyPool(secret), "alice")
    bob = AuthenticatedChannel(raw_bob, bob_pool, "bob")
    alice.send("m", b"x")
    with pytest.raises(AuthenticationFailure, match="out of step"):
        bob.recv("m", 1)


def test_authentic_message_of_the_wrong_type_aborts() -> None:
    alice, bob = _plain_pair()
    alice.send("estimate", b"x")
    with pytest.raises(ProtocolAbort) as info:
        bob.recv("sift", 1)
    assert info.value.reason == "unexpected_message"


def test_pool_exhaustion_fails_closed() -> None:
    secret = _secret(HASH_KEY_BYTES + 2 * PAD_BYTES)  # the hash key and exactly one epoch
    alice, bob = (AuthenticatedChannel(end, AuthenticationKeyPool(secret), role)
                  for end, role in zip(in_process_pair(), ("alice", "bob"), strict=True))
    alice.send("m", b"1")
    assert bob.recv("m", 1) == b"1"
    bob.send("m", b"2")
    assert alice.recv("m", 1) == b"2"
    with pytest.raises(ProtocolAbort) as info:
        alice.send("m", b"3")
    assert info.value.reason == "authentication_key_exhausted"
    with pytest.raises(AuthenticationFailure):
        alice.send("m", b"3")
    with pytest.raises(ProtocolAbort, match="authentication_key_exhausted"):
        AuthenticatedChannel(in_process_pair()[0], AuthenticationKeyPool(b"short"), "alice")


@pytest.mark.parametrize(("pads_per_epoch", "alice_sends", "bob_sends", "epochs"), [
    (1, 0, 0, 0), (1, 1, 1, 1), (1, 3, 1, 3), (1, 2, 5, 5), (4, 3, 1, 1), (4, 4, 1, 1),
    (4, 5, 0, 2),
])
def test_bits_consumed_are_exact(pads_per_epoch: int, alice_sends: int, bob_sends: int,
                                 epochs: int) -> None:
    secret = _secret()
    raw_alice, raw_bob = in_process_pair()
    pool_alice, pool_bob = AuthenticationKeyPool(secret), AuthenticationKeyPool(secret)
    alice = AuthenticatedChannel(raw_alice, pool_alice, "alice", pads_per_epoch)
    bob = AuthenticatedChannel(raw_bob, pool_bob, "bob", pads_per_epoch)
    for i in range(alice_sends):
        alice.send("m", bytes([i]))
    for i in range(bob_sends):
        bob.send("m", bytes([i]))
    for _ in range(alice_sends):
        bob.recv("m", 1)
    for _ in range(bob_sends):
        alice.recv("m", 1)
    expected_bits = 8 * (HASH_KEY_BYTES + epochs * 2 * pads_per_epoch * PAD_BYTES)
    for channel, pool in ((alice, pool_alice), (bob, pool_bob)):
        assert channel.auth_bits_consumed == expected_bits
        assert pool.consumed_bits == expected_bits
        assert pool.available_bits == 8 * len(secret) - expected_bits


def test_forgery_bound_accumulates_per_received_message() -> None:
    alice, bob = _plain_pair()
    payloads = [b"", b"x" * 13, b"y" * 1000]
    for payload in payloads:
        alice.send("msg", payload)
        bob.recv("msg", 1)
    expected = sum(poly1305_forgery_bound(HEADER_BYTES + 3 + len(p)) for p in payloads)
    assert bob.forgery_probability_bound == pytest.approx(expected, rel=1e-12)
    assert alice.forgery_probability_bound == 0.0
    assert poly1305_forgery_bound(16) == 8 / 2**106


@settings(max_examples=40, deadline=None)
@given(messages=st.lists(st.tuples(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1,
                                           max_size=20),
                                   st.binary(max_size=3000)), min_size=1, max_size=6))
def test_property_random_payloads_round_trip(messages: list[tuple[str, bytes]]) -> None:
    alice, bob = _plain_pair()
    for kind, payload in messages:
        alice.send(kind, payload)
    for kind, payload in messages:
        assert bob.recv(kind, 1) == payload
    for kind, payload in messages:
        bob.send(kind, payload[::-1])
        assert alice.recv(kind, 1) == payload[::-1]


def test_pool_behaviour_and_secrecy() -> None:
    secret = bytes(range(64))
    pool = AuthenticationKeyPool(secret)
    assert pool.available_bits == 512 and pool.consumed_bits == 0
    assert pool.take(10) == secret[:10]
    pool.replenish(b"\xaa" * 6)
    assert pool.take(60) == secret[10:] + b"\xaa" * 6
    assert pool.available_bits == 0 and pool.consumed_bits == 8 * 70
    with pytest.raises(ProtocolAbort, match="authentication_key_exhausted"):
        pool.take(1)
    for shown in (repr(pool), str(pool)):
        assert "\\x" not in shown and "aa" not in shown
    with pytest.raises(ParameterError, match="n_bytes"):
        pool.take(0)
    with pytest.raises(ParameterError, match="position_bytes"):
        pool.skip_to(3)
    with pytest.raises(ParameterError, match="secret"):
        AuthenticationKeyPool("text")  # type: ignore[arg-type]


def test_channel_never_shows_key_material() -> None:
    secret = b"\x5a" * 512
    raw_alice, _ = in_process_pair()
    alice = AuthenticatedChannel(raw_alice, AuthenticationKeyPool(secret), "alice")
    assert "5a" not in repr(alice).lower() and "Z" not in repr(alice)


def test_bad_arguments_name_the_field() -> None:
    raw_alice, _ = in_process_pair()
    pool = AuthenticationKeyPool(_secret())
    with pytest.raises(ParameterError, match="role"):
        AuthenticatedChannel(raw_alice, pool, "eve")
    with pytest.raises(ParameterError, match="pads_per_epoch"):
        AuthenticatedChannel(raw_alice, pool, "alice", pads_per_epoch=0)
    alice = AuthenticatedChannel(raw_alice, pool, "alice")
    with pytest.raises(ParameterError, match="kind"):
        alice.send("", b"")
    with pytest.raises(ParameterError, match="kind"):
        alice.send("é", b"")


def test_closed_channel_refuses_use() -> None:
    alice, _ = _plain_pair()
    alice.close()
    with pytest.raises(ProtocolAbort) as info:
        alice.send("m", b"")
    assert info.value.reason == "channel_closed"


def test_large_payloads_are_tagged_over_the_whole_frame_and_received_as_views() -> None:
    secret = _secret()
    alice, bob, cap_alice, _ = _pair(secret)
    payload = RandomSource.seeded(4).bytes(300_000)
    alice.send("sift.bob", memoryview(payload))
    frame = cap_alice.frames[0]
    r = secret[:HASH_KEY_BYTES]
    pad = secret[HASH_KEY_BYTES:HASH_KEY_BYTES + PAD_BYTES]
    assert frame[-TAG_BYTES:] == Poly1305.generate_tag(r + pad, frame[:-TAG_BYTES])
    assert frame[HEADER_BYTES + len("sift.bob"):-TAG_BYTES] == payload
    cap_alice.deliver(frame)
    view = bob.recv_view("sift.bob", 1)
    assert view.readonly and bytes(view) == payload
    alice.send("sift.bob", payload)
    altered = bytearray(cap_alice.frames[1])
    altered[len(altered) // 3] ^= 0x10   # inside the payload
    cap_alice.deliver(bytes(altered))
    with pytest.raises(AuthenticationFailure, match="tag mismatch"):
        bob.recv_view("sift.bob", 1)
