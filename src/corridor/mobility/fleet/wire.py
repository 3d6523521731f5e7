"""The fleet wire format: deterministic, length-prefixed encodings of every message.

This module owns the bytes (docs/fleet.md, "Wire format"). Every message starts with a
4-byte ASCII magic naming its type and version, then its fields in a fixed order, each
field a 4-byte big-endian length and its bytes (integers are fixed-width big-endian
inside their field; text is UTF-8). One value has exactly one encoding, so a signature
over the bytes is a signature over the value; decoding refuses trailing bytes, missing
fields, wrong widths and over-long fields (:class:`~corridor.mobility.fleet.errors.FleetRefusal`
with reason ``malformed``, naming the field and its length, never its bytes). No pickle,
no self-describing format: nothing in a message chooses how it is parsed except the magic.

=======  ===================================================================================
magic    fields
=======  ===================================================================================
``FC01`` command: command_id (16), sender_id, depot_id, vehicle_id, sequence (u64),
         command_type, issued_at_ms (u64), expires_at_ms (u64), params (nested: pairs of
         name, value, names sorted and unique)
``FS01`` signed command: command (``FC01`` bytes), ML-DSA-44 signature (2420), Ed25519
         signature (64)
``FA01`` acknowledgement: command_id (16), vehicle_id, sender_id, sequence (u64), status
         (``executed`` or ``refused``), reason, result (nested pairs), acked_at_ms (u64)
``FT01`` signed acknowledgement: ack (``FA01`` bytes), ML-DSA-44 signature, Ed25519 signature
``FN01`` depot notice (inside ``FB01`` d2b only): command_id (16), reason, detail: the
         depot refused the command and did not forward it
``FB01`` back end <-> depot envelope: direction (``b2d`` or ``d2b``), backend_sae_id,
         depot_sae_id, session_id (16), generation (u32), nonce (12), ciphertext
``FV01`` depot -> vehicle envelope: depot_id, vehicle_id, ML-KEM-768 ciphertext (1088),
         nonce (12), ciphertext
``FW01`` vehicle -> depot acknowledgement envelope: vehicle_id, depot_id, ack_handle (16,
         derived from the command's KEM secret, not its ID), nonce (12), ciphertext
=======  ===================================================================================

The envelope fields before the ciphertext are the AES-GCM associated data (bound, not
secret); everything a command says is inside the ciphertext.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from corridor.mobility.fleet.errors import MALFORMED, FleetRefusal

COMMAND_ID_BYTES = 16
ACK_HANDLE_BYTES = 16
SESSION_ID_BYTES = 16
NONCE_BYTES = 12
MLDSA44_SIGNATURE_BYTES = 2420
ED25519_SIGNATURE_BYTES = 64
MLKEM768_CIPHERTEXT_BYTES = 1088
MAX_ID_BYTES = 128
MAX_PARAM_VALUE_BYTES = 4096
MAX_PARAMS = 32
MAX_MESSAGE_BYTES = 65_536

MAGIC_COMMAND = b"FC01"
MAGIC_SIGNED_COMMAND = b"FS01"
MAGIC_ACK = b"FA01"
MAGIC_SIGNED_ACK = b"FT01"
MAGIC_DEPOT_NOTICE = b"FN01"
MAGIC_BACKEND_ENVELOPE = b"FB01"
MAGIC_VEHICLE_ENVELOPE = b"FV01"
MAGIC_ACK_ENVELOPE = b"FW01"

DIRECTION_TO_DEPOT = "b2d"
DIRECTION_TO_BACKEND = "d2b"
ACK_EXECUTED = "executed"
ACK_REFUSED = "refused"

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def lp(data: bytes) -> bytes:
    """``data`` prefixed with its 4-byte big-endian length."""
    return _U32.pack(len(data)) + data


def check_fleet_id(field_name: str, value: str) -> str:
    """``value`` if it is a valid fleet identifier (sender, vehicle, depot, SAE ID)."""
    from corridor.errors import ParameterError

    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ParameterError(field_name, value, "1 to 128 characters from A-Z a-z 0-9 . _ : @ -, "
                             "starting with a letter or digit")
    return value


def _encode_pairs(pairs: tuple[tuple[str, str], ...]) -> bytes:
    return b"".join(lp(name.encode()) + lp(value.encode()) for name, value in pairs)


class _Reader:
    """Reads the fields of one message; every failure names message, field and length."""

    def __init__(self, data: bytes, message: str, magic: bytes) -> None:
        if not isinstance(data, bytes | bytearray) or len(data) > MAX_MESSAGE_BYTES:
            raise FleetRefusal(MALFORMED, f"{message} is {len(data)} bytes: at most "
                               f"{MAX_MESSAGE_BYTES}")
        if bytes(data[:4]) != magic:
            raise FleetRefusal(MALFORMED, f"{message}.magic is not {magic.decode()}")
        self.data = bytes(data)
        self.offset = 4
        self.message = message

    def take(self, name: str, *, exact: int | None = None, high: int = MAX_MESSAGE_BYTES,
             low: int = 0) -> bytes:
        where = f"{self.message}.{name}"
        if self.offset + 4 > len(self.data):
            raise FleetRefusal(MALFORMED, f"{where} is missing")
        (length,) = _U32.unpack_from(self.data, self.offset)
        start = self.offset + 4
        if start + length > len(self.data):
            raise FleetRefusal(MALFORMED, f"{where} announces {length} bytes, "
                               f"{len(self.data) - start} left")
        if exact is not None and length != exact:
            raise FleetRefusal(MALFORMED, f"{where} is {length} bytes: must be {exact}")
        if not low <= length <= high:
            raise FleetRefusal(MALFORMED, f"{where} is {length} bytes: {low} to {high} allowed")
        self.offset = start + length
        return self.data[start:self.offset]

    def u64(self, name: str) -> int:
        return int(_U64.unpack(self.take(name, exact=8))[0])

    def u32(self, name: str) -> int:
        return int(_U32.unpack(self.take(name, exact=4))[0])

    def text(self, name: str, pattern: re.Pattern[str] | None = _ID, *, low: int = 1,
             high: int = MAX_ID_BYTES) -> str:
        raw = self.take(name, low=low, high=high)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FleetRefusal(MALFORMED, f"{self.message}.{name} is not UTF-8") from None
        if pattern is not None and not pattern.fullmatch(value):
            raise FleetRefusal(MALFORMED, f"{self.message}.{name} ({len(raw)} bytes) is not "
                               "an allowed identifier")
        return value

    def pairs(self, name: str) -> tuple[tuple[str, str], ...]:
        nested = _Reader(b"PPPP" + self.take(name), f"{self.message}.{name}", b"PPPP")
        out: list[tuple[str, str]] = []
        while nested.offset < len(nested.data):
            if len(out) >= MAX_PARAMS:
                raise FleetRefusal(MALFORMED, f"{self.message}.{name} has more than "
                                   f"{MAX_PARAMS} entries")
            key = nested.text("name", _NAME, high=32)
            value = nested.text("value", None, low=0, high=MAX_PARAM_VALUE_BYTES)
            out.append((key, value))
        names = [key for key, _ in out]
        if names != sorted(set(names)):
            raise FleetRefusal(MALFORMED, f"{self.message}.{name} names are not sorted and "
                               "unique")
        return tuple(out)

    def end(self) -> None:
        if self.offset != len(self.data):
            raise FleetRefusal(MALFORMED, f"{self.message} has {len(self.data) - self.offset} "
                               "trailing bytes")


def _pairs_valid(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    ordered = tuple(sorted(pairs))
    names = [name for name, _ in ordered]
    if len(set(names)) != len(names) or any(not _NAME.fullmatch(n) for n in names):
        raise ValueError("parameter names must be unique and match [a-z][a-z0-9_-]{0,31}")
    return ordered


@dataclass(frozen=True)
class Command:
    """One command, as signed (``FC01``)."""

    command_id: bytes
    sender_id: str
    depot_id: str
    vehicle_id: str
    sequence: int
    command_type: str
    issued_at_ms: int
    expires_at_ms: int
    params: tuple[tuple[str, str], ...] = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", _pairs_valid(self.params))

    def encode(self) -> bytes:
        return MAGIC_COMMAND + b"".join(lp(part) for part in (
            self.command_id, self.sender_id.encode(), self.depot_id.encode(),
            self.vehicle_id.encode(), _U64.pack(self.sequence), self.command_type.encode(),
            _U64.pack(self.issued_at_ms), _U64.pack(self.expires_at_ms),
            _encode_pairs(self.params)))

    @classmethod
    def decode(cls, data: bytes) -> Command:
        r = _Reader(data, "command", MAGIC_COMMAND)
        command = cls(r.take("command_id", exact=COMMAND_ID_BYTES), r.text("sender_id"),
                      r.text("depot_id"), r.text("vehicle_id"), r.u64("sequence"),
                      r.text("command_type", _NAME, high=32), r.u64("issued_at_ms"),
                      r.u64("expires_at_ms"), r.pairs("params"))
        r.end()
        return command

    @property
    def label(self) -> str:
        """Public identifiers for messages and audit entries (no parameters)."""
        return (f"command {self.command_id.hex()} ({self.command_type}, sender "
                f"{self.sender_id}, vehicle {self.vehicle_id}, sequence {self.sequence})")


@dataclass(frozen=True)
class Signed:
    """A signed body (``FS01`` command or ``FT01`` acknowledgement)."""

    body: bytes = field(repr=False)
    mldsa_signature: bytes = field(repr=False)
    ed25519_signature: bytes = field(repr=False)

    def encode(self, magic: bytes) -> bytes:
        return magic + lp(self.body) + lp(self.mldsa_signature) + lp(self.ed25519_signature)

    @classmethod
    def decode(cls, data: bytes, magic: bytes, message: str) -> Signed:
        r = _Reader(data, message, magic)
        signed = cls(r.take("body", low=1), r.take("mldsa_signature",
                                                   exact=MLDSA44_SIGNATURE_BYTES),
                     r.take("ed25519_signature", exact=ED25519_SIGNATURE_BYTES))
        r.end()
        return signed


@dataclass(frozen=True)
class Ack:
    """A vehicle's acknowledgement of one command (``FA01``)."""

    command_id: bytes
    vehicle_id: str
    sender_id: str
    sequence: int
    status: str
    reason: str
    result: tuple[tuple[str, str], ...]
    acked_at_ms: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", _pairs_valid(self.result))

    def encode(self) -> bytes:
        return MAGIC_ACK + b"".join(lp(part) for part in (
            self.command_id, self.vehicle_id.encode(), self.sender_id.encode(),
            _U64.pack(self.sequence), self.status.encode(), self.reason.encode(),
            _encode_pairs(self.result), _U64.pack(self.acked_at_ms)))

    @classmethod
    def decode(cls, data: bytes) -> Ack:
        r = _Reader(data, "ack", MAGIC_ACK)
        ack = cls(r.take("command_id", exact=COMMAND_ID_BYTES), r.text("vehicle_id"),
                  r.text("sender_id"), r.u64("sequence"), r.text("status", _NAME, high=32),
                  r.text("reason", None, low=0, high=64), r.pairs("result"),
                  r.u64("acked_at_ms"))
        r.end()
        if ack.status not in (ACK_EXECUTED, ACK_REFUSED):
            raise FleetRefusal(MALFORMED, f"ack.status {ack.status!r} is not executed or "
                               "refused")
        return ack


@dataclass(frozen=True)
class DepotNotice:
    """The depot refused a command (``FN01``); authentic because only the depot and the
    back end hold the session key it travels under."""

    command_id: bytes
    reason: str
    detail: str

    def encode(self) -> bytes:
        return MAGIC_DEPOT_NOTICE + b"".join(lp(part) for part in (
            self.command_id, self.reason.encode(), self.detail.encode()))

    @classmethod
    def decode(cls, data: bytes) -> DepotNotice:
        r = _Reader(data, "depot notice", MAGIC_DEPOT_NOTICE)
        notice = cls(r.take("command_id", exact=COMMAND_ID_BYTES),
                     r.text("reason", _NAME, high=32), r.text("detail", None, low=0, high=1024))
        r.end()
        return notice


@dataclass(frozen=True)
class BackendEnvelope:
    """The back end <-> depot leg (``FB01``), sealed under the hybrid session key."""

    direction: str
    backend_sae_id: str
    depot_sae_id: str
    session_id: bytes
    generation: int
    nonce: bytes
    ciphertext: bytes = field(repr=False)

    def header(self) -> bytes:
        """Everything before the ciphertext: the AES-GCM associated data."""
        return MAGIC_BACKEND_ENVELOPE + b"".join(lp(part) for part in (
            self.direction.encode(), self.backend_sae_id.encode(), self.depot_sae_id.encode(),
            self.session_id, _U32.pack(self.generation), self.nonce))

    def encode(self) -> bytes:
        return self.header() + lp(self.ciphertext)

    @classmethod
    def decode(cls, data: bytes) -> BackendEnvelope:
        r = _Reader(data, "backend envelope", MAGIC_BACKEND_ENVELOPE)
        envelope = cls(r.text("direction", _NAME, high=8), r.text("backend_sae_id"),
                       r.text("depot_sae_id"), r.take("session_id", exact=SESSION_ID_BYTES),
                       r.u32("generation"), r.take("nonce", exact=NONCE_BYTES),
                       r.take("ciphertext", low=16))
        r.end()
        if envelope.direction not in (DIRECTION_TO_DEPOT, DIRECTION_TO_BACKEND):
            raise FleetRefusal(MALFORMED, "backend envelope.direction is not b2d or d2b")
        return envelope


@dataclass(frozen=True)
class VehicleEnvelope:
    """The depot -> vehicle leg (``FV01``): one ML-KEM-768 encapsulation per command."""

    depot_id: str
    vehicle_id: str
    kem_ciphertext: bytes = field(repr=False)
    nonce: bytes
    ciphertext: bytes = field(repr=False)

    def header(self) -> bytes:
        return MAGIC_VEHICLE_ENVELOPE + b"".join(lp(part) for part in (
            self.depot_id.encode(), self.vehicle_id.encode(), self.kem_ciphertext, self.nonce))

    def encode(self) -> bytes:
        return self.header() + lp(self.ciphertext)

    @classmethod
    def decode(cls, data: bytes) -> VehicleEnvelope:
        r = _Reader(data, "vehicle envelope", MAGIC_VEHICLE_ENVELOPE)
        envelope = cls(r.text("depot_id"), r.text("vehicle_id"),
                       r.take("kem_ciphertext", exact=MLKEM768_CIPHERTEXT_BYTES),
                       r.take("nonce", exact=NONCE_BYTES), r.take("ciphertext", low=16))
        r.end()
        return envelope


@dataclass(frozen=True)
class AckEnvelope:
    """The vehicle -> depot acknowledgement (``FW01``), sealed under the command's ack key."""

    vehicle_id: str
    depot_id: str
    ack_handle: bytes
    nonce: bytes
    ciphertext: bytes = field(repr=False)

    def header(self) -> bytes:
        return MAGIC_ACK_ENVELOPE + b"".join(lp(part) for part in (
            self.vehicle_id.encode(), self.depot_id.encode(), self.ack_handle, self.nonce))

    def encode(self) -> bytes:
        return self.header() + lp(self.ciphertext)

    @classmethod
    def decode(cls, data: bytes) -> AckEnvelope:
        r = _Reader(data, "ack envelope", MAGIC_ACK_ENVELOPE)
        envelope = cls(r.text("vehicle_id"), r.text("depot_id"),
                       r.take("ack_handle", exact=ACK_HANDLE_BYTES),
                       r.take("nonce", exact=NONCE_BYTES), r.take("ciphertext", low=16))
        r.end()
        return envelope


__all__ = ["ACK_EXECUTED", "ACK_REFUSED", "COMMAND_ID_BYTES", "DIRECTION_TO_BACKEND",
           "DIRECTION_TO_DEPOT", "MAGIC_DEPOT_NOTICE", "MAGIC_SIGNED_ACK",
           "MAGIC_SIGNED_COMMAND", "NONCE_BYTES", "Ack", "AckEnvelope", "BackendEnvelope",
           "Command", "DepotNotice", "Signed", "VehicleEnvelope", "check_fleet_id", "lp"]
