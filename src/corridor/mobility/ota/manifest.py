"""The vehicle's manifest: what each ECU runs and how the last update ended, signed.

This module owns the manifest's encoding and its signature. A manifest is the JSON
object ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}`` (TUF's envelope); the
signature is the vehicle's hybrid key (:mod:`.keys`: Ed25519 and ML-DSA-65, both must
verify) over the canonical JSON of ``signed``::

    {"type": "vehicle_manifest", "vehicle_id", "reported_at",
     "director_targets_version", "result": installed | up_to_date | refused,
     "reason", "detail", "ecus": {ecu_id: {"hardware_id", "target", "version"}}}

The director (:mod:`.director`) accepts a manifest only under the key registered for
that vehicle, and only newer than the last one it accepted.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature, Signer

from corridor.mobility.ota.errors import BAD_SIGNATURE, REPOSITORY_ERROR, OtaRefusal

MANIFEST_TYPE = "vehicle_manifest"


def _canonical(signed: dict[str, Any]) -> bytes:
    data = encode_canonical(signed)
    assert isinstance(data, str)
    return data.encode()


def sign_manifest(signer: Signer, vehicle_id: str, ecus: dict[str, dict[str, Any]], *,
                  result: str, director_targets_version: int, reason: str | None = None,
                  detail: str | None = None) -> bytes:
    """The manifest's bytes."""
    signed = {"type": MANIFEST_TYPE, "vehicle_id": vehicle_id,
              "reported_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
              "director_targets_version": director_targets_version, "result": result,
              "reason": reason, "detail": detail, "ecus": ecus}
    signature = signer.sign(_canonical(signed))
    return json.dumps({"signed": signed, "signatures": [signature.to_dict()]}).encode()


def verify_manifest(data: bytes, vehicle_id: str, key: Key) -> dict[str, Any]:
    """The ``signed`` part, once its signature verifies under ``key`` and it names
    ``vehicle_id``; else :class:`OtaRefusal`."""
    try:
        envelope = json.loads(data)
        signed = envelope["signed"]
        signatures = [Signature.from_dict(dict(s)) for s in envelope["signatures"]]
        if signed["type"] != MANIFEST_TYPE or signed["vehicle_id"] != vehicle_id:
            raise ValueError("type or vehicle")
    except (ValueError, KeyError, TypeError):
        raise OtaRefusal(REPOSITORY_ERROR, f"manifest of {vehicle_id}: malformed") from None
    for signature in signatures:
        if signature.keyid != key.keyid:
            continue
        try:
            key.verify_signature(signature, _canonical(signed))
        except (UnverifiedSignatureError, VerificationError):
            break
        return dict(signed)
    raise OtaRefusal(BAD_SIGNATURE, f"manifest of {vehicle_id}: no valid signature of its key")


__all__ = ["MANIFEST_TYPE", "sign_manifest", "verify_manifest"]
