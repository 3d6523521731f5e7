"""Why an update was refused: the reason codes of the Uptane attacks, and the error.

Every refusal on the vehicle names one reason from :data:`REASONS` (docs/ota.md lists
which attack each one stops). An :class:`OtaRefusal` message names the reason and public
facts (role, target path, versions, sizes), never a key or image bytes.
"""

from __future__ import annotations

from corridor.errors import CorridorError

ROLLBACK = "rollback"
"""Metadata older than what the vehicle already trusts, or an image older than installed."""
FREEZE = "freeze"
"""Expired metadata (a frozen mirror replaying a stale timestamp): indefinite freeze."""
MIX_AND_MATCH = "mix_and_match"
"""Metadata files from different repository states (versions the snapshot does not name)."""
BAD_SIGNATURE = "bad_signature"
"""A role's threshold of signatures does not verify (each key: Ed25519 and ML-DSA-65)."""
ARBITRARY_SOFTWARE = "arbitrary_software"
"""Image bytes whose length or hashes differ from what both repositories signed."""
NOT_IN_IMAGE_REPO = "not_in_image_repo"
"""The director names an image the image repository does not sign (director key alone)."""
IMAGE_MISMATCH = "image_mismatch"
"""Director and image repository sign different hashes or lengths for one image."""
MIXED_BUNDLE = "mixed_bundle"
"""An ECU was handed an image that is not the one its bundle names for it."""
PARTIAL_BUNDLE = "partial_bundle"
"""Part of the bundle could not be fetched or verified: nothing of it is installed."""
SLOW_RETRIEVAL = "slow_retrieval"
"""A download did not finish within its time limit (a server trickling bytes)."""
ENDLESS_DATA = "endless_data"
"""A download grew past its size limit (a server sending without end)."""
KEY_UNWRAP_FAILED = "key_unwrap_failed"
"""The campaign key does not unwrap under this vehicle's ML-KEM-768 key."""
DECRYPT_FAILED = "decrypt_failed"
"""The image does not decrypt (AES-256-GCM tag) or its plaintext hash differs."""
WRONG_ECU = "wrong_ecu"
"""The bundle names an ECU or hardware this vehicle does not have."""
INSTALL_FAILED = "install_failed"
"""The image did not boot in the new slot: the previous version was restored."""
REPOSITORY_ERROR = "repository_error"
"""The repository could not be reached or served malformed metadata."""

REASONS = (ROLLBACK, FREEZE, MIX_AND_MATCH, BAD_SIGNATURE, ARBITRARY_SOFTWARE,
           NOT_IN_IMAGE_REPO, IMAGE_MISMATCH, MIXED_BUNDLE, PARTIAL_BUNDLE, SLOW_RETRIEVAL,
           ENDLESS_DATA, KEY_UNWRAP_FAILED, DECRYPT_FAILED, WRONG_ECU, INSTALL_FAILED,
           REPOSITORY_ERROR)


class OtaError(CorridorError):
    """Base class of the OTA errors."""


class OtaRefusal(OtaError):
    """An update was refused; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


__all__ = ["ARBITRARY_SOFTWARE", "BAD_SIGNATURE", "DECRYPT_FAILED", "ENDLESS_DATA", "FREEZE",
           "IMAGE_MISMATCH", "INSTALL_FAILED", "KEY_UNWRAP_FAILED", "MIXED_BUNDLE",
           "MIX_AND_MATCH", "NOT_IN_IMAGE_REPO", "PARTIAL_BUNDLE", "REASONS",
           "REPOSITORY_ERROR", "ROLLBACK", "SLOW_RETRIEVAL", "WRONG_ECU", "OtaError",
           "OtaRefusal"]
