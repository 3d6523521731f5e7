"""OER through pycrate, cross-decoded with asn1tools both ways, byte for byte."""

from __future__ import annotations

import pytest

from corridor.mobility.v2x.encoding import (
    EncodingError,
    compile_subset,
    decode_certificate,
    decode_data,
    encode_data,
)
from corridor.mobility.v2x.messages import SignerKind, sign_message
from corridor.mobility.v2x.signing import Scheme

from .conftest import NOW

CODEC = compile_subset()


@pytest.mark.parametrize("scheme", list(Scheme))
@pytest.mark.parametrize("signer", list(SignerKind))
def test_pycrate_bytes_decode_in_asn1tools_and_back(pki, scheme, signer) -> None:
    _, ticket = pki[scheme]
    encoded = sign_message(b"cam-payload" * 8, psid=36, ticket=ticket, generation_unix_s=NOW,
                           signer=signer, location=(488566000, 23522000, 4000))
    other = CODEC.decode("Ieee1609Dot2Data", encoded)
    assert CODEC.encode("Ieee1609Dot2Data", other) == encoded
    signed = other["content"][1]
    assert signed["tbsData"]["payload"]["data"]["content"] == ("unsecuredData",
                                                                b"cam-payload" * 8)
    expected_kind = {Scheme.ecdsa: "ecdsaNistP256Signature",
                     Scheme.ml_dsa_44: "mlDsa44Signature",
                     Scheme.hybrid: "ecdsaNistP256WithMlDsa44Signature"}[scheme]
    assert signed["signature"][0] == expected_kind
    # and what asn1tools encodes, pycrate decodes to the same value and the same bytes
    again = CODEC.encode("Ieee1609Dot2Data", other)
    assert encode_data(decode_data(again)) == encoded


def test_asn1tools_encoding_of_a_hand_built_value_decodes_in_pycrate() -> None:
    value = {"protocolVersion": 3, "content": ("signedData", {
        "hashId": "sha256",
        "tbsData": {"payload": {"data": {"protocolVersion": 3,
                                         "content": ("unsecuredData", b"\x01\x02")}},
                    "headerInfo": {"psid": 137, "generationTime": 123456789}},
        "signer": ("digest", bytes(range(8))),
        "signature": ("ecdsaNistP256WithMlDsa44Signature", {
            "ecdsaNistP256Signature": {"rSig": ("x-only", b"\x07" * 32), "sSig": b"\x09" * 32},
            "altSignatureValue": b"\x05" * 2420})})}
    encoded = CODEC.encode("Ieee1609Dot2Data", value)
    decoded = decode_data(encoded)
    assert decoded["content"][1]["signature"] == value["content"][1]["signature"]
    assert decoded["content"][1]["tbsData"]["headerInfo"]["psid"] == 137
    assert encode_data(decoded) == encoded


def test_ecdsa_cam_with_digest_signer_has_the_published_envelope(pki) -> None:
    # vanetza's 179-byte test CAM carries 86 bytes of GN + BTP + CAM: 93 bytes of envelope
    _, ticket = pki[Scheme.ecdsa]
    encoded = sign_message(bytes(86), psid=36, ticket=ticket, generation_unix_s=NOW)
    assert len(encoded) == 179


def test_ml_dsa_signature_and_key_have_their_fips_204_sizes(pki) -> None:
    _, ticket = pki[Scheme.ml_dsa_44]
    cert = decode_certificate(ticket.encoded)
    key = cert["toBeSigned"]["verifyKeyIndicator"][1]
    assert key[0] == "mlDsa44" and len(key[1]) == 1312
    assert cert["signature"][0] == "mlDsa44Signature" and len(cert["signature"][1]) == 2420
    other = CODEC.decode("CertificateBase", ticket.encoded)
    assert CODEC.encode("CertificateBase", other) == ticket.encoded


def test_a_standard_decoder_still_parses_a_post_quantum_message(pki) -> None:
    # pycrate's shipped module knows nothing of the extension: it keeps it as an unknown
    # alternative, so a receiver that does not know it can skip, not crash.
    from pycrate_asn1dir import ITS_IEEE1609_2

    _, ticket = pki[Scheme.hybrid]
    encoded = sign_message(b"x", psid=36, ticket=ticket, generation_unix_s=NOW)
    data = ITS_IEEE1609_2.Ieee1609Dot2.Ieee1609Dot2Data
    data.from_oer(encoded)
    # class 2 (context), primitive flag 0, tag 17
    assert data.get_val()["content"][1]["signature"][0] == "_ext_2017"


@pytest.mark.parametrize("bad", [b"", b"\x03", b"\x02\x80\x01x", b"\x03\x80\x05abc"])
def test_malformed_bytes_are_an_encoding_error(bad: bytes) -> None:
    with pytest.raises(EncodingError):
        decode_data(bad)


def test_garbage_after_a_valid_header_leaves_the_codec_usable(pki) -> None:
    # pycrate leaves its shared types in a parent cycle after some malformed inputs; the
    # codec must undo that, or the next decode never returns.
    _, ticket = pki[Scheme.ecdsa]
    good = sign_message(b"x", psid=36, ticket=ticket, generation_unix_s=NOW)
    for bad in (b"\x03\x81garbage", good[:40], good[:-3]):
        with pytest.raises(EncodingError):
            decode_data(bad)
        assert decode_data(good)["content"][0] == "signedData"


def test_trailing_bytes_are_refused(pki) -> None:
    _, ticket = pki[Scheme.ecdsa]
    encoded = sign_message(b"x", psid=36, ticket=ticket, generation_unix_s=NOW)
    with pytest.raises(EncodingError):
        decode_data(encoded + b"\x00")


def test_a_wrong_size_ml_dsa_signature_is_refused_on_encoding() -> None:
    value = {"protocolVersion": 3, "content": ("signedData", {
        "hashId": "sha256",
        "tbsData": {"payload": {"data": {"protocolVersion": 3,
                                         "content": ("unsecuredData", b"")}},
                    "headerInfo": {"psid": 36}},
        "signer": ("self", 0), "signature": ("mlDsa44Signature", b"\x00" * 2419)})}
    with pytest.raises(EncodingError, match="2420"):
        encode_data(value)
