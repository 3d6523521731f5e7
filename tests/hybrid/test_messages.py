"""The hybrid session's wire format (corridor.hybrid.messages): round trips, and which
field a broken message is refused for (the first one that is wrong, in order)."""

from __future__ import annotations

import struct

import pytest

from corridor.hybrid import messages
from corridor.hybrid.errors import MalformedMessage

SID = bytes(range(16))
HELLO = messages.Hello(SID, 7, "sae-a", "sae-b", "both-required", "xwing", "id-1", "",
                       b"p" * 40, b"q" * 3)
REPLY = messages.Reply(SID, 7, "", "pool_empty", b"c" * 30, b"")
CONFIRM = messages.Confirm(SID, 7, "responder", b"m" * 32)
ABORT = messages.Abort(SID, 7, "policy_mismatch")
FIELDS = {
    "HELLO": ("session_id", "generation", "initiator_sae_id", "responder_sae_id", "policy",
              "suite", "key_id", "qkd_missing", "pk1", "pk2"),
    "REPLY": ("session_id", "generation", "key_id", "qkd_missing", "ct1", "ct2"),
    "CONFIRM": ("session_id", "generation", "role", "mac"),
    "ABORT": ("session_id", "generation", "reason"),
}
CASES = [("HELLO", HELLO), ("REPLY", REPLY), ("CONFIRM", CONFIRM), ("ABORT", ABORT)]


def _field_starts(data: bytes) -> list[int]:
    starts, offset = [], 2
    while offset < len(data):
        starts.append(offset)
        offset += 4 + struct.unpack_from(">I", data, offset)[0]
    return starts


@pytest.mark.parametrize(("name", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_message_survives_a_round_trip(name: str, message: messages.Message) -> None:
    data = message.encode()
    assert data[:2] == bytes((messages.VERSION, {"HELLO": 1, "REPLY": 2, "CONFIRM": 3,
                                                 "ABORT": 4}[name]))
    assert messages.decode(data) == message
    assert len(_field_starts(data)) == len(FIELDS[name])


@pytest.mark.parametrize(("name", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_message_cut_anywhere_names_the_field_it_was_cut_in(
        name: str, message: messages.Message) -> None:
    data = message.encode()
    starts = _field_starts(data)
    for cut in range(2, len(data)):
        index = max(i for i, start in enumerate(starts) if start <= cut)
        in_prefix = cut - starts[index] < 4
        with pytest.raises(MalformedMessage) as info:
            messages.decode(data[:cut])
        assert (info.value.message_type, info.value.field) == (name, FIELDS[name][index]), cut
        assert (info.value.length is None) == in_prefix, cut


def test_the_first_wrong_field_is_the_one_named() -> None:
    data = messages.Hello(SID, 0, "sae a", "sae-b", "any", "xwing", "id-1", "", b"", b"")\
        .encode()
    # A bad initiator ID (a space) and a message cut in pk2: the ID is named.
    with pytest.raises(MalformedMessage, match=r"HELLO.initiator_sae_id is 5 bytes: must "
                       r"match"):
        messages.decode(data[:-2])
    # key_id and qkd_missing both set, and pk1 cut: the pair is named before pk1.
    both = messages.Hello(SID, 0, "sae-a", "sae-b", "any", "xwing", "id-1", "pool_empty",
                          b"x", b"").encode()
    with pytest.raises(MalformedMessage, match="exactly one of key_id and qkd_missing"):
        messages.decode(both[:-6])
    # An unknown CONFIRM role is named before a MAC of the wrong length.
    bad_role = messages.Confirm(SID, 0, "observer", b"m" * 31).encode()
    with pytest.raises(MalformedMessage, match=r"CONFIRM.role is 8 bytes: must be "
                       r"initiator or responder"):
        messages.decode(bad_role)


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("policy", b"\xff", "must be UTF-8"),
    ("suite", b"", "must be 1 to 32 bytes"),
    ("key_id", b"a\x00", "must match"),
    ("qkd_missing", b"Pool", "must match"),
    ("generation", b"\x00" * 5, "must be 4 bytes"),
    ("pk1", b"x" * (messages.MAX_KEM_FIELD_BYTES + 1), "must be 0 to 4096 bytes"),
])
def test_a_field_out_of_its_rule_is_named_with_its_length(field: str, value: bytes,
                                                         allowed: str) -> None:
    data = HELLO.encode()
    starts = [*_field_starts(data), len(data)]
    index = FIELDS["HELLO"].index(field)
    broken = (data[:starts[index]] + struct.pack(">I", len(value)) + value
              + data[starts[index + 1]:])
    with pytest.raises(MalformedMessage, match=allowed) as info:
        messages.decode(broken)
    assert (info.value.field, info.value.length) == (field, len(value))
    assert value.hex() not in str(info.value) or not value
