"""The wire format of the hybrid session protocol (docs/hybrid-session.md, "Messages").

Every message is ``version (1 byte) || type (1 byte) || field || field || ...`` where each
field is a 4-byte big-endian length followed by that many bytes (the convention of
ETSI TS 103 744's reference code, so the whole protocol has one length rule). Fields come
in a fixed order per type; a message with a field missing, too long, too short, or with
bytes after its last field does not parse (:class:`~corridor.hybrid.errors.MalformedMessage`
naming the field and its length, never its bytes).

=========  ======  =====================================================================
message    type    fields, in order
=========  ======  =====================================================================
HELLO      1       session_id (16), generation (4, uint32), initiator SAE ID,
                   responder SAE ID, policy, suite, key_ID (or empty), qkd_missing
                   (reason code, or empty), pk1, pk2
REPLY      2       session_id, generation, key_ID used (or empty), qkd_missing (the
                   responder's reason, or empty), ct1, ct2
CONFIRM    3       session_id, generation, role (``initiator``/``responder``), mac (32)
ABORT      4       session_id, generation, reason code
=========  ======  =====================================================================

HELLO is MA and REPLY is MB of CatKDF: the exact bytes sent are what both sides bind.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any

from corridor.hybrid.errors import MalformedMessage

VERSION = 1
TYPE_HELLO = 1
TYPE_REPLY = 2
TYPE_CONFIRM = 3
TYPE_ABORT = 4
_TYPE_NAMES = {TYPE_HELLO: "HELLO", TYPE_REPLY: "REPLY", TYPE_CONFIRM: "CONFIRM",
               TYPE_ABORT: "ABORT"}

SESSION_ID_BYTES = 16
MAC_BYTES = 32
MAX_ID_BYTES = 128
MAX_KEY_ID_BYTES = 64
MAX_NAME_BYTES = 32
MAX_KEM_FIELD_BYTES = 4096
ROLE_INITIATOR = "initiator"
ROLE_RESPONDER = "responder"

_LENGTH = struct.Struct(">I")
_GENERATION = struct.Struct(">I")
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ID = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")


def lp(data: bytes) -> bytes:
    """``data`` prefixed with its 4-byte big-endian length."""
    return _LENGTH.pack(len(data)) + data


@dataclass(frozen=True)
class Hello:
    """The initiator's message (MA): who, which policy, which QKD key, its public keys."""

    session_id: bytes
    generation: int
    initiator_sae_id: str
    responder_sae_id: str
    policy: str
    suite: str
    key_id: str
    qkd_missing: str
    pk1: bytes = field(repr=False)
    pk2: bytes = field(repr=False)

    def encode(self) -> bytes:
        return _encode(TYPE_HELLO, self.session_id, _GENERATION.pack(self.generation),
                       self.initiator_sae_id.encode(), self.responder_sae_id.encode(),
                       self.policy.encode(), self.suite.encode(), self.key_id.encode(),
                       self.qkd_missing.encode(), self.pk1, self.pk2)


@dataclass(frozen=True)
class Reply:
    """The responder's message (MB): which QKD key it used, its ciphertexts."""

    session_id: bytes
    generation: int
    key_id: str
    qkd_missing: str
    ct1: bytes = field(repr=False)
    ct2: bytes = field(repr=False)

    def encode(self) -> bytes:
        return _encode(TYPE_REPLY, self.session_id, _GENERATION.pack(self.generation),
                       self.key_id.encode(), self.qkd_missing.encode(), self.ct1, self.ct2)


@dataclass(frozen=True)
class Confirm:
    """One side's key confirmation MAC."""

    session_id: bytes
    generation: int
    role: str
    mac: bytes = field(repr=False)

    def encode(self) -> bytes:
        return _encode(TYPE_CONFIRM, self.session_id, _GENERATION.pack(self.generation),
                       self.role.encode(), self.mac)


@dataclass(frozen=True)
class Abort:
    """A side stops the handshake, saying why (a reason code, nothing else)."""

    session_id: bytes
    generation: int
    reason: str

    def encode(self) -> bytes:
        return _encode(TYPE_ABORT, self.session_id, _GENERATION.pack(self.generation),
                       self.reason.encode())


Message = Hello | Reply | Confirm | Abort


def _encode(message_type: int, *fields: bytes) -> bytes:
    parts = [bytes((VERSION, message_type))]
    for data in fields:
        parts += (_LENGTH.pack(len(data)), data)
    return b"".join(parts)


# A field as the reader checks it: (name, exact length or None, lowest, highest length,
# text pattern: None for raw bytes, _ANY_TEXT for UTF-8 text with no pattern).
_Field = tuple[str, int | None, int, int, re.Pattern[str] | None]
_ANY_TEXT = re.compile(r"(?s:.*)")
_HEAD: tuple[_Field, ...] = (("session_id", SESSION_ID_BYTES, 0, MAX_KEM_FIELD_BYTES, None),
                             ("generation", _GENERATION.size, 0, MAX_KEM_FIELD_BYTES, None))
_HELLO_NAMES: tuple[_Field, ...] = (
    ("initiator_sae_id", None, 1, MAX_ID_BYTES, _ID),
    ("responder_sae_id", None, 1, MAX_ID_BYTES, _ID),
    ("policy", None, 1, MAX_NAME_BYTES, _ANY_TEXT),
    ("suite", None, 1, MAX_NAME_BYTES, _ANY_TEXT),
    ("key_id", None, 0, MAX_KEY_ID_BYTES, _ID),
    ("qkd_missing", None, 0, 64, _REASON))
_HELLO_KEYS: tuple[_Field, ...] = (("pk1", None, 0, MAX_KEM_FIELD_BYTES, None),
                                   ("pk2", None, 0, MAX_KEM_FIELD_BYTES, None))
_REPLY_NAMES: tuple[_Field, ...] = (("key_id", None, 0, MAX_KEY_ID_BYTES, _ID),
                                    ("qkd_missing", None, 0, 64, _REASON))
_REPLY_KEYS: tuple[_Field, ...] = (("ct1", None, 0, MAX_KEM_FIELD_BYTES, None),
                                   ("ct2", None, 0, MAX_KEM_FIELD_BYTES, None))
_CONFIRM_ROLE: tuple[_Field, ...] = (("role", None, 1, MAX_NAME_BYTES, _ANY_TEXT),)
_CONFIRM_MAC: tuple[_Field, ...] = (("mac", MAC_BYTES, 0, MAX_KEM_FIELD_BYTES, None),)
_ABORT_REASON: tuple[_Field, ...] = (("reason", None, 1, 64, _REASON),)


class _Reader:
    """Reads fields in order, each checked before the next is read, so that the first
    field that is wrong is the one named."""

    def __init__(self, data: bytes, message_type: str) -> None:
        self.data = data
        self.offset = 2
        self.type = message_type

    def fields(self, specs: tuple[_Field, ...]) -> list[Any]:
        """The values of ``specs``' fields: bytes, or str for a text field."""
        data, offset, size = self.data, self.offset, len(self.data)
        values: list[Any] = []
        for name, exact, low, high, pattern in specs:
            if offset + 4 > size:
                raise MalformedMessage(self.type, name, None, "the message ends before it")
            (length,) = _LENGTH.unpack_from(data, offset)
            start = offset + 4
            offset = start + length
            if offset > size:
                raise MalformedMessage(self.type, name, length, "longer than the rest of "
                                       f"the message ({size - start} bytes)")
            if exact is not None and length != exact:
                raise MalformedMessage(self.type, name, length, f"must be {exact} bytes")
            if not low <= length <= high:
                raise MalformedMessage(self.type, name, length,
                                       f"must be {low} to {high} bytes")
            raw = data[start:offset]
            if pattern is None:
                values.append(raw)
                continue
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedMessage(self.type, name, length, "must be UTF-8") from None
            if value and pattern is not _ANY_TEXT and not pattern.fullmatch(value):
                raise MalformedMessage(self.type, name, length,
                                       f"must match {pattern.pattern}")
            values.append(value)
        self.offset = offset
        return values

    def end(self) -> None:
        if self.offset != len(self.data):
            raise MalformedMessage(self.type, "end", len(self.data) - self.offset,
                                   "no bytes may follow the last field")


def decode(data: bytes) -> Message:
    """Parse one message; :class:`MalformedMessage` naming the field that is wrong."""
    if len(data) < 2:
        raise MalformedMessage("message", "header", len(data), "must be 2 bytes or more")
    if data[0] != VERSION:
        raise MalformedMessage("message", "version", 1, f"version {data[0]} is not the "
                               f"supported version {VERSION}")
    name = _TYPE_NAMES.get(data[1])
    if name is None:
        raise MalformedMessage("message", "type", 1, f"type {data[1]} is not one of "
                               f"{sorted(_TYPE_NAMES)}")
    reader = _Reader(data, name)
    session_id, raw_generation = reader.fields(_HEAD)
    generation = int.from_bytes(raw_generation, "big")
    message: Message
    if data[1] == TYPE_HELLO:
        initiator, responder, policy, suite, key_id, missing = reader.fields(_HELLO_NAMES)
        _one_of(name, key_id, missing)
        message = Hello(session_id, generation, initiator, responder, policy, suite, key_id,
                        missing, *reader.fields(_HELLO_KEYS))
    elif data[1] == TYPE_REPLY:
        key_id, missing = reader.fields(_REPLY_NAMES)
        _one_of(name, key_id, missing)
        message = Reply(session_id, generation, key_id, missing, *reader.fields(_REPLY_KEYS))
    elif data[1] == TYPE_CONFIRM:
        (role,) = reader.fields(_CONFIRM_ROLE)
        if role not in (ROLE_INITIATOR, ROLE_RESPONDER):
            raise MalformedMessage(name, "role", len(role),
                                   f"must be {ROLE_INITIATOR} or {ROLE_RESPONDER}")
        message = Confirm(session_id, generation, role, *reader.fields(_CONFIRM_MAC))
    else:
        message = Abort(session_id, generation, *reader.fields(_ABORT_REASON))
    reader.end()
    return message


def _one_of(message_type: str, key_id: str, missing: str) -> None:
    if bool(key_id) == bool(missing):
        raise MalformedMessage(message_type, "qkd_missing", len(missing),
                               "exactly one of key_id and qkd_missing must be set")


__all__ = ["MAC_BYTES", "ROLE_INITIATOR", "ROLE_RESPONDER", "SESSION_ID_BYTES", "VERSION",
           "Abort", "Confirm", "Hello", "Message", "Reply", "decode", "lp"]
