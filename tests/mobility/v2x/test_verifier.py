"""The RSU verifier: genuine messages pass, every attack is refused with its reason and
counted, and repeated certificates come from the cache."""

from __future__ import annotations

import pytest

from corridor.errors import ParameterError
from corridor.mobility.v2x.attacks import run_attacks, tamper_payload
from corridor.mobility.v2x.certificates import PSID_CAM, PSID_SPAT, Authority
from corridor.mobility.v2x.messages import SignerKind, sign_message
from corridor.mobility.v2x.signing import Scheme, SigningKey
from corridor.mobility.v2x.verifier import REASONS, Refused, RsuVerifier

from .conftest import NOW

BIG = 16384


def _verifier(pki, scheme, **kwargs) -> RsuVerifier:
    authority, _ = pki[scheme]
    return RsuVerifier([authority.encoded], max_message_bytes=kwargs.pop("max_bytes", BIG),
                       **kwargs)


def _refused(verifier: RsuVerifier, data: bytes, reason: str, now: float = NOW) -> None:
    with pytest.raises(Refused) as info:
        verifier.verify(data, now_unix_s=now)
    assert info.value.reason == reason
    assert verifier.counts[reason] >= 1


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_genuine_message_passes_with_certificate_then_digest(pki, scheme) -> None:
    _, ticket = pki[scheme]
    verifier = _verifier(pki, scheme)
    first = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                         signer=SignerKind.certificate)
    second = sign_message(b"b", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW)
    assert verifier.verify(first, now_unix_s=NOW + 0.05).payload == b"a"
    accepted = verifier.verify(second, now_unix_s=NOW + 0.05)
    assert accepted.payload == b"b" and accepted.signer_digest == ticket.digest
    assert verifier.counts["accepted"] == 2


@pytest.mark.parametrize("scheme", list(Scheme))
def test_replayed_message_is_refused_as_duplicate(pki, scheme) -> None:
    _, ticket = pki[scheme]
    verifier = _verifier(pki, scheme)
    data = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    verifier.verify(data, now_unix_s=NOW)
    _refused(verifier, data, "replay_duplicate", NOW + 0.5)


def test_a_message_outside_the_time_window_is_refused_as_stale(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    verifier = _verifier(pki, Scheme.ecdsa, window_s=2.0)
    data = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW - 2.5,
                        signer=SignerKind.certificate)
    _refused(verifier, data, "replay_stale")
    future = sign_message(b"b", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW + 2.5,
                          signer=SignerKind.certificate)
    _refused(verifier, future, "replay_stale")
    assert verifier.counts["replay_stale"] == 2


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_forged_signature_is_refused(pki, scheme) -> None:
    _, ticket = pki[scheme]
    forged = type(ticket)(ticket.encoded, ticket.value, SigningKey.generate(scheme),
                          ticket.digest)
    data = sign_message(b"a", psid=PSID_CAM, ticket=forged, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, scheme), data, "bad_signature")


def test_a_hybrid_with_only_one_valid_half_is_refused(pki) -> None:
    from corridor.mobility.v2x.encoding import decode_data, encode_data

    _, ticket = pki[Scheme.hybrid]
    verifier = _verifier(pki, Scheme.hybrid)
    for half in ("ecdsaNistP256Signature", "altSignatureValue"):
        data = sign_message(half.encode(), psid=PSID_CAM, ticket=ticket,
                            generation_unix_s=NOW, signer=SignerKind.certificate)
        other = decode_data(sign_message(b"other", psid=PSID_CAM, ticket=ticket,
                                         generation_unix_s=NOW))
        value = decode_data(data)
        value["content"][1]["signature"][1][half] = other["content"][1]["signature"][1][half]
        _refused(verifier, encode_data(value), "bad_signature")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_certificate_from_an_untrusted_issuer_is_refused(pki, scheme) -> None:
    rogue = Authority(scheme, start_unix_s=NOW - 60)
    ticket = rogue.issue(scheme, psids=(PSID_CAM,), start_unix_s=NOW - 60)
    data = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, scheme), data, "wrong_certificate")


def test_a_certificate_whose_issuer_signature_is_wrong_is_refused(pki) -> None:
    authority, _ = pki[Scheme.ecdsa]
    ticket = authority.issue(Scheme.ecdsa, psids=(PSID_CAM,), start_unix_s=NOW - 60)
    value = dict(ticket.value)
    value["toBeSigned"] = {**value["toBeSigned"], "crlSeries": 7}  # altered after signing
    from corridor.mobility.v2x.certificates import Ticket, hashed_id8
    from corridor.mobility.v2x.encoding import encode_certificate

    encoded = encode_certificate(value)
    altered = Ticket(encoded, value, ticket.key, hashed_id8(encoded))
    data = sign_message(b"a", psid=PSID_CAM, ticket=altered, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, Scheme.ecdsa), data, "wrong_certificate")


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_tampered_payload_is_refused(pki, scheme) -> None:
    _, ticket = pki[scheme]
    data = sign_message(b"payload", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, scheme), tamper_payload(data), "bad_signature")


def test_an_expired_certificate_is_refused(pki) -> None:
    authority, _ = pki[Scheme.ecdsa]
    expired = authority.issue(Scheme.ecdsa, psids=(PSID_CAM,), start_unix_s=NOW - 7200,
                              validity_hours=1)
    data = sign_message(b"a", psid=PSID_CAM, ticket=expired, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, Scheme.ecdsa), data, "expired_certificate")


def test_a_ticket_outlives_an_expired_authority_only_on_paper() -> None:
    authority = Authority(Scheme.ecdsa, start_unix_s=NOW - 7200, validity_hours=1)
    ticket = authority.issue(Scheme.ecdsa, psids=(PSID_CAM,), start_unix_s=NOW - 60)
    data = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(RsuVerifier([authority.encoded]), data, "expired_certificate")


def test_an_oversize_message_is_refused_before_decoding(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    verifier = _verifier(pki, Scheme.ecdsa, max_bytes=1400)
    data = sign_message(bytes(1400), psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(verifier, data, "oversize")
    _refused(verifier, b"\xff" * 1401, "oversize")


def test_a_psid_outside_the_certificate_is_refused(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    data = sign_message(b"a", psid=PSID_SPAT, ticket=ticket, generation_unix_s=NOW,
                        signer=SignerKind.certificate)
    _refused(_verifier(pki, Scheme.ecdsa), data, "not_permitted")


def test_an_unknown_digest_signer_and_garbage_are_refused(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    verifier = _verifier(pki, Scheme.ecdsa)
    data = sign_message(b"a", psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW)
    _refused(verifier, data, "unknown_signer")
    _refused(verifier, b"\x03\x81garbage", "malformed")


def test_the_certificate_cache_skips_repeated_issuer_checks(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    cached = _verifier(pki, Scheme.ecdsa)
    uncached = _verifier(pki, Scheme.ecdsa, use_certificate_cache=False)
    for i in range(3):
        data = sign_message(bytes([i]), psid=PSID_CAM, ticket=ticket, generation_unix_s=NOW,
                            signer=SignerKind.certificate)
        cached.verify(data, now_unix_s=NOW)
        uncached.verify(data, now_unix_s=NOW)
    assert cached.cache_hits == 2 and uncached.cache_hits == 0


@pytest.mark.parametrize("scheme", list(Scheme))
def test_every_staged_attack_is_refused_and_counted(scheme) -> None:
    results, verifier = run_attacks(scheme, now_unix_s=NOW)
    assert results[0].attack == "genuine" and not results[0].refused
    reasons = {r.attack: r.reason for r in results[1:]}
    assert all(r.refused for r in results[1:])
    assert reasons == {"replay (duplicate)": "replay_duplicate",
                       "replay (stale generation time)": "replay_stale",
                       "forged signature": "bad_signature",
                       "wrong certificate": "wrong_certificate",
                       "tampered payload": "bad_signature",
                       "expired certificate": "expired_certificate",
                       "oversize message": "oversize"}
    assert set(verifier.counts) <= {"accepted", *REASONS}
    assert sum(verifier.counts.values()) == len(results)


def test_bad_verifier_settings_name_the_field() -> None:
    with pytest.raises(ParameterError, match="max_message_bytes"):
        RsuVerifier([], max_message_bytes=0)
    with pytest.raises(ParameterError, match="authorities"):
        RsuVerifier([b"\x00\x01"])
