"""The attacks an RSU must refuse, staged against a :class:`~.verifier.RsuVerifier`.

This module owns the attack catalogue that ``corridor v2x attacks`` runs and the docs
quote: each attack builds the bytes an attacker would send (a replayed message, one
outside the time window, a forged signature, a certificate from an untrusted issuer, a
tampered payload, an expired certificate, an oversize message), hands them to the
verifier, and records the reason it was refused with. The tests check each one
separately (tests/mobility/v2x/test_verifier.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from corridor.mobility.v2x.certificates import PSID_CAM, PSID_DENM, Authority
from corridor.mobility.v2x.encoding import decode_data, encode_data
from corridor.mobility.v2x.messages import SignerKind, sign_message
from corridor.mobility.v2x.signing import Scheme, SigningKey
from corridor.mobility.v2x.verifier import Refused, RsuVerifier


@dataclass(frozen=True)
class AttackResult:
    """One staged attack and what the verifier said."""

    attack: str
    refused: bool
    reason: str


def tamper_payload(encoded: bytes) -> bytes:
    """The same signed message with the last payload byte flipped, re-encoded."""
    value = decode_data(encoded)
    signed = value["content"][1]
    inner = signed["tbsData"]["payload"]["data"]
    payload = bytearray(inner["content"][1])
    payload[-1] ^= 0x01
    inner["content"] = ("unsecuredData", bytes(payload))
    return encode_data(value)


def run_attacks(scheme: Scheme, *, now_unix_s: float,
                max_message_bytes: int = 8192) -> tuple[list[AttackResult], RsuVerifier]:
    """Stage every attack once against a fresh verifier; one genuine message first."""
    authority = Authority(scheme, start_unix_s=now_unix_s - 60)
    ticket = authority.issue(scheme, psids=(PSID_CAM, PSID_DENM), start_unix_s=now_unix_s - 60)
    verifier = RsuVerifier([authority.encoded], max_message_bytes=max_message_bytes)
    payload = bytes(86)

    def signed(signer: SignerKind = SignerKind.certificate, t: float = now_unix_s,
               body: bytes = payload, tk: object = ticket) -> bytes:
        return sign_message(body, psid=PSID_CAM, ticket=tk,  # type: ignore[arg-type]
                            generation_unix_s=t, signer=signer)

    genuine = signed()
    rogue = Authority(scheme, start_unix_s=now_unix_s - 60)
    forged_ticket = type(ticket)(ticket.encoded, ticket.value, SigningKey.generate(scheme),
                                 ticket.digest)
    expired = authority.issue(scheme, psids=(PSID_CAM,), start_unix_s=now_unix_s - 3 * 3600,
                              validity_hours=1)
    attempts = [
        ("genuine", genuine),
        ("replay (duplicate)", genuine),
        ("replay (stale generation time)", signed(t=now_unix_s - 30)),
        ("forged signature", signed(tk=forged_ticket, body=b"\x02" * 86)),
        ("wrong certificate", signed(tk=rogue.issue(scheme, psids=(PSID_CAM,),
                                                    start_unix_s=now_unix_s - 60))),
        ("tampered payload", tamper_payload(signed(body=b"\x01" * 86))),
        ("expired certificate", signed(tk=expired)),
        ("oversize message", signed(body=bytes(max_message_bytes))),
    ]
    results = []
    for name, data in attempts:
        try:
            verifier.verify(data, now_unix_s=now_unix_s)
        except Refused as exc:
            results.append(AttackResult(name, True, exc.reason))
        else:
            results.append(AttackResult(name, False, "accepted"))
    return results, verifier
