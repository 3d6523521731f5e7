"""Why a fleet command (or acknowledgement) was refused: the reason codes and the error.

Every refusal names one reason from :data:`REASONS`; the refusing party audits it
(``fleet_command_refused``) and counts it. A :class:`FleetRefusal` message names the
reason and public identifiers (command ID, sender, vehicle, sequence), never a key, a
plaintext parameter or message bytes.
"""

from __future__ import annotations

from corridor.errors import CorridorError

MALFORMED = "malformed"
"""The bytes do not parse as the documented wire format (docs/fleet.md)."""
TAMPERED = "tampered"
"""The AES-256-GCM tag does not verify: changed in transit, or the wrong key."""
UNKNOWN_SESSION = "unknown_session"
"""Back end to depot: no established hybrid session with that ID and generation."""
MISADDRESSED = "misaddressed"
"""Addressed to another depot or vehicle than the one that received it."""
UNKNOWN_SENDER = "unknown_sender"
"""The sender (or acknowledging vehicle) has no registered public keys."""
BAD_SIGNATURE = "bad_signature"
"""The ML-DSA-44 or the Ed25519 signature does not verify (both must)."""
UNAUTHORISED = "unauthorised"
"""The role policy does not let this sender send this command to this vehicle."""
REPLAYED = "replayed"
"""This command ID was already accepted (or refused after its signature checked)."""
REORDERED = "reordered"
"""Its sequence number is not above the last one accepted from this sender."""
EXPIRED = "expired"
"""Its ``expires_at`` has passed."""
NOT_YET_VALID = "not_yet_valid"
"""Its ``issued_at`` lies further in the future than the allowed clock skew."""
LIFETIME_TOO_LONG = "lifetime_too_long"
"""``expires_at - issued_at`` exceeds the policy's ``max_lifetime_s``."""

REASONS = (MALFORMED, TAMPERED, UNKNOWN_SESSION, MISADDRESSED, UNKNOWN_SENDER,
           BAD_SIGNATURE, UNAUTHORISED, REPLAYED, REORDERED, EXPIRED, NOT_YET_VALID,
           LIFETIME_TOO_LONG)


class FleetError(CorridorError):
    """Base class of the fleet command errors."""


class FleetRefusal(FleetError):
    """A command or acknowledgement was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.detail = detail
        # The parsed command, when the refusal came after parsing (for a refused ack).
        self.command: object | None = None
        super().__init__(f"{reason}: {detail}")


class FleetTransportError(FleetError):
    """The MQTT broker could not be reached or did not take a message in time."""


__all__ = ["BAD_SIGNATURE", "EXPIRED", "LIFETIME_TOO_LONG", "MALFORMED", "MISADDRESSED",
           "NOT_YET_VALID", "REASONS", "REORDERED", "REPLAYED", "TAMPERED", "UNAUTHORISED",
           "UNKNOWN_SENDER", "UNKNOWN_SESSION", "FleetError", "FleetRefusal",
           "FleetTransportError"]
