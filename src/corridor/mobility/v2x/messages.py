"""Signed V2X messages: the 1609.2 ``SignedData`` a vehicle or RSU puts on the air.

This module owns the sending side: :func:`sign_message` wraps an application payload
(a CAM, DENM, SPaT... as opaque bytes) in ``Ieee1609Dot2Data`` / ``SignedData`` with a
``HeaderInfo`` (PSID, generation time, optionally the generation location), signs it
with a :class:`~.certificates.Ticket` and names the signer by certificate digest or
by the whole certificate, as ETSI TS 103 097 does (a CAM carries the certificate about
once a second and the digest otherwise).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from corridor.errors import ParameterError
from corridor.mobility.v2x.certificates import Ticket, its_time64
from corridor.mobility.v2x.encoding import encode_data, encode_tbs_data
from corridor.mobility.v2x.signing import signature_input


class SignerKind(StrEnum):
    """How a signed message names its signer."""

    digest = "digest"
    certificate = "certificate"


def unsecured(payload: bytes) -> dict[str, Any]:
    """``Ieee1609Dot2Data`` carrying ``payload`` as ``unsecuredData``."""
    return {"protocolVersion": 3, "content": ("unsecuredData", payload)}


def sign_message(payload: bytes, *, psid: int, ticket: Ticket, generation_unix_s: float,
                 signer: SignerKind = SignerKind.digest,
                 location: tuple[int, int, int] | None = None) -> bytes:
    """The OER of a signed ``Ieee1609Dot2Data`` carrying ``payload``.

    ``location`` is (latitude, longitude in 1/10 micro-degree, elevation in 10 cm steps
    from -409.5 m, the 1609.2 encodings) for messages that carry a generation location
    (DENM)."""
    if not isinstance(payload, bytes):
        raise ParameterError("payload", type(payload).__name__, "bytes")
    if not 0 <= psid < 2**32:
        raise ParameterError("psid", psid, "an ITS-AID from 0 to 2**32-1")
    header: dict[str, Any] = {"psid": psid, "generationTime": its_time64(generation_unix_s)}
    if location is not None:
        header["generationLocation"] = {"latitude": location[0], "longitude": location[1],
                                        "elevation": location[2]}
    tbs = {"payload": {"data": unsecured(payload)}, "headerInfo": header}
    message = signature_input(encode_tbs_data(tbs), ticket.encoded)
    signer_value: tuple[str, Any] = ("digest", ticket.digest) if signer is SignerKind.digest \
        else ("certificate", [ticket.value])
    return encode_data({"protocolVersion": 3, "content": ("signedData", {
        "hashId": "sha256", "tbsData": tbs, "signer": signer_value,
        "signature": ticket.key.sign(message)})})
