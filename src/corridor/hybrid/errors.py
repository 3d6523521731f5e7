"""The named errors of a hybrid session (handshake, confirmation, policy, QKD key).

Every error carries a short snake_case ``reason`` (what an audit entry and an ABORT
message say) and a one-line message naming what is wrong: field names, lengths, SAE IDs,
key IDs, policy names. None ever carries key material, a shared secret or message bytes.
"""

from __future__ import annotations

from corridor.errors import CorridorError


class HybridSessionError(CorridorError):
    """Base class: a hybrid handshake or re-key failed; no key was returned."""

    reason = "session_failed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(message)


class MalformedMessage(HybridSessionError):
    """A handshake message does not parse: ``field`` and its ``length``, never its bytes."""

    reason = "malformed_message"

    def __init__(self, message_type: str, field: str, length: int | None, allowed: str) -> None:
        self.message_type = message_type
        self.field = field
        self.length = length
        where = f"{message_type}.{field}"
        got = "missing" if length is None else f"{length} bytes"
        super().__init__(f"malformed {message_type} message: {where} is {got}: {allowed}")


class PolicyMismatch(HybridSessionError):
    """The initiator declared a policy other than the responder's for this pair (a
    downgrade attempt, or two configurations that disagree)."""

    reason = "policy_mismatch"

    def __init__(self, initiator_sae_id: str, responder_sae_id: str, declared: str,
                 configured: str) -> None:
        self.declared = declared
        self.configured = configured
        super().__init__(
            f"policy mismatch for SAE pair ({initiator_sae_id!r}, {responder_sae_id!r}): the "
            f"initiator declared {declared!r}, this side's corridor file says {configured!r}; "
            "refused (a downgrade is never accepted: make both configurations agree)")


class UnknownPeer(HybridSessionError):
    """The peer is not an SAE this side has a hybrid policy for."""

    reason = "unknown_peer"


class ConfirmationFailed(HybridSessionError):
    """The peer's key confirmation MAC did not verify: the two sides derived different
    keys (a tampered message, a different QKD key, a wrong KEM key)."""

    reason = "confirmation_failed"

    def __init__(self, role: str, session_id: str, generation: int) -> None:
        super().__init__(
            f"key confirmation from the {role} failed (session {session_id}, generation "
            f"{generation}): the two sides derived different keys; nothing was kept")


class QkdKeyUnavailable(HybridSessionError):
    """The policy refused the session because the QKD key is missing."""

    reason = "qkd_key_unavailable"

    def __init__(self, policy: str, missing_reason: str, detail: str = "") -> None:
        self.policy = policy
        self.missing_reason = missing_reason
        text = (f"no QKD key ({missing_reason}) and policy {policy!r} refuses to proceed "
                "without one")
        super().__init__(f"{text}: {detail}" if detail else text)


class PqcUnavailable(HybridSessionError):
    """The policy refused the session because ML-KEM + X25519 cannot run."""

    reason = "pqc_unavailable"

    def __init__(self, policy: str, missing_reason: str) -> None:
        self.policy = policy
        self.missing_reason = missing_reason
        super().__init__(f"no post-quantum key exchange ({missing_reason}) and policy "
                         f"{policy!r} refuses to proceed without one")


class QkdKeyInvalid(HybridSessionError):
    """The KME delivered a QKD key of the wrong size, or for another key ID: a fault,
    never a fallback."""

    reason = "qkd_key_invalid"


class SessionAborted(HybridSessionError):
    """The peer aborted the handshake and said why (its reason code)."""

    reason = "peer_aborted"

    def __init__(self, peer_reason: str) -> None:
        self.peer_reason = peer_reason
        super().__init__(f"the peer aborted the handshake: {peer_reason}")


class TransportError(HybridSessionError):
    """The byte transport failed: closed, timed out, or a frame over the size limit."""

    reason = "transport_failed"


__all__ = ["ConfirmationFailed", "HybridSessionError", "MalformedMessage", "PolicyMismatch",
           "PqcUnavailable", "QkdKeyInvalid", "QkdKeyUnavailable", "SessionAborted",
           "TransportError", "UnknownPeer"]
