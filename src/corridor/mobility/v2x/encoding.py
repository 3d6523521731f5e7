"""Canonical OER of IEEE 1609.2 ``Ieee1609Dot2Data`` and certificates, through pycrate.

This module owns the wire format: every byte Corridor's V2X code puts on the air comes
from pycrate's compiled 1609.2 modules (``pycrate_asn1dir.ITS_IEEE1609_2``, the 2016
edition with its amendment and the ETSI TS 103 097 extension module), never from
hand-packed bytes, and every byte received goes back through them.

Values are pycrate's Python values (SEQUENCE: dict, CHOICE: ``(name, value)``, OCTET
STRING: bytes, NULL: 0, ENUMERATED: its name). Corridor's post-quantum alternatives
(docs/v2x.md: not part of any standard) are extension alternatives of the extensible
``Signature`` and ``PublicVerificationKey`` CHOICEs. pycrate's standard modules do not
know them and carry them as unknown extensions (``_ext_<class><pc><tag>``, the open
type's bytes); this module names them on the way in and out, and builds their content
(a fixed-size OCTET STRING, or a SEQUENCE of a standard ECDSA part and that OCTET STRING)
with pycrate too. ``ieee1609dot2_subset.asn`` beside this file declares them in ASN.1
so that a second library (asn1tools) decodes the same bytes; the tests check both ways.

pycrate's type objects are process-wide and keep the last value: callers in threads must
serialise their calls (Corridor's RSU verifier runs one per process).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from corridor.errors import CorridorError

ML_DSA_44_SIGNATURE_BYTES = 2420
ML_DSA_44_PUBLIC_KEY_BYTES = 1312

# CORRIDOR EXTENSION tags (context class) in Signature and PublicVerificationKey.
SIGNATURE_EXTENSIONS = {"mlDsa44Signature": 16, "ecdsaNistP256WithMlDsa44Signature": 17}
KEY_EXTENSIONS = {"mlDsa44": 16, "ecdsaNistP256WithMlDsa44": 17}
ASN1_SUBSET_FILE = "ieee1609dot2_subset.asn"


class EncodingError(CorridorError):
    """Bytes that are not a valid 1609.2 structure, or a value that cannot be encoded."""


def _fullname_without_cycles(self: Any) -> str:
    names = [self._name]
    seen = {id(self)}
    obj = self._parent
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        names.append(obj._name)
        obj = obj._parent
    return ".".join(reversed(names))


def _modules() -> Any:
    from pycrate_asn1dir import ITS_IEEE1609_2
    from pycrate_asn1rt.asnobj import ASN1Obj

    # pycrate 0.8.1 bug: decoding a recursive type (Ieee1609Dot2Data inside
    # SignedDataPayload) re-parents the shared type objects into a cycle, and the message
    # of an unknown extension (built eagerly, even with logging off) walks the parents with
    # ``fullname`` forever: one crafted packet would hang an RSU. This ``fullname`` stops
    # at the first object it has already named.
    ASN1Obj.fullname = _fullname_without_cycles
    return ITS_IEEE1609_2


def _ext_ident(tag: int) -> str:
    return f"_ext_20{tag}"  # class 2 (context-specific), primitive flag 0, tag number


def _types() -> dict[str, Any]:
    mod = _modules()
    return {"data": mod.Ieee1609Dot2.Ieee1609Dot2Data,
            "tbs_data": mod.Ieee1609Dot2.ToBeSignedData,
            "certificate": mod.Ieee1609Dot2.CertificateBase,
            "tbs_certificate": mod.Ieee1609Dot2.ToBeSignedCertificate,
            "ecdsa_signature": mod.Ieee1609Dot2BaseTypes.EcdsaP256Signature,
            "point": mod.Ieee1609Dot2BaseTypes.EccP256CurvePoint,
            "symmetric_key": mod.Ieee1609Dot2BaseTypes.SymmetricEncryptionKey}


_TYPES: dict[str, Any] = {}
_PARENTS: list[tuple[Any, Any]] = []


def _type(name: str) -> Any:
    if not _TYPES:
        _TYPES.update(_types())
        mod = _modules()
        _PARENTS.extend((obj, obj._parent) for module in (mod.Ieee1609Dot2,
                                                          mod.Ieee1609Dot2BaseTypes)
                        for obj in module._all_)
    return _TYPES[name]


def _restore_parents() -> None:
    # pycrate's decoders re-parent a component while they decode it and do not always undo
    # that (not when the bytes are malformed); 1609.2's recursive types (Ieee1609Dot2Data
    # inside SignedDataPayload) then leave the shared type objects in a parent cycle, and
    # pycrate's error path (which names the component) loops forever. Every call starts
    # from the parents the module was built with, and a failure puts them back too.
    for obj, parent in _PARENTS:
        obj._parent = parent


def _oer(type_name: str, value: Any) -> bytes:
    obj = _type(type_name)
    _restore_parents()
    try:
        obj.set_val(value)
        return bytes(obj.to_oer())
    except Exception as exc:  # pycrate raises its own classes and plain ones alike
        _restore_parents()
        raise EncodingError(f"cannot encode {type_name}: {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None


def _from_oer(type_name: str, data: bytes, *, check_canonical: bool = True) -> Any:
    from pycrate_core.charpy import Charpy

    obj = _type(type_name)
    _restore_parents()
    try:
        char = Charpy(data)
        obj.from_oer(char)
        value = obj.get_val()
        if char.len_bit():
            raise EncodingError(f"{type_name}: {char.len_bit() // 8} bytes after the end")
        if check_canonical and bytes(obj.to_oer()) != data:
            raise EncodingError(f"{type_name}: not the canonical OER of its value")
    except EncodingError:
        raise
    except Exception as exc:
        _restore_parents()
        raise EncodingError(f"not a 1609.2 {type_name}: {type(exc).__name__}") from None
    return value


# --- Corridor's extension alternatives -------------------------------------------------

def _fixed(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise EncodingError(f"{what} must be {size} bytes")
    return value


def _signature_out(sig: tuple[str, Any]) -> tuple[str, Any]:
    name, value = sig
    if name == "mlDsa44Signature":
        return _ext_ident(16), _fixed(value, ML_DSA_44_SIGNATURE_BYTES, name)
    if name == "ecdsaNistP256WithMlDsa44Signature":
        content = (_oer("ecdsa_signature", value["ecdsaNistP256Signature"])
                   + _fixed(value["altSignatureValue"], ML_DSA_44_SIGNATURE_BYTES,
                            "altSignatureValue"))
        return _ext_ident(17), content
    return sig


def _signature_in(sig: tuple[str, Any]) -> tuple[str, Any]:
    name, value = sig
    if name == _ext_ident(16):
        return "mlDsa44Signature", _fixed(value, ML_DSA_44_SIGNATURE_BYTES, "mlDsa44Signature")
    if name == _ext_ident(17):
        if len(value) <= ML_DSA_44_SIGNATURE_BYTES:
            raise EncodingError("ecdsaNistP256WithMlDsa44Signature is too short")
        classical = _from_oer("ecdsa_signature", value[:-ML_DSA_44_SIGNATURE_BYTES])
        return "ecdsaNistP256WithMlDsa44Signature", {
            "ecdsaNistP256Signature": classical,
            "altSignatureValue": value[-ML_DSA_44_SIGNATURE_BYTES:]}
    return sig


def _key_out(key: tuple[str, Any]) -> tuple[str, Any]:
    name, value = key
    if name == "mlDsa44":
        return _ext_ident(16), _fixed(value, ML_DSA_44_PUBLIC_KEY_BYTES, name)
    if name == "ecdsaNistP256WithMlDsa44":
        content = (_oer("point", value["ecdsaNistP256"])
                   + _fixed(value["altVerificationKey"], ML_DSA_44_PUBLIC_KEY_BYTES,
                            "altVerificationKey"))
        return _ext_ident(17), content
    return key


def _key_in(key: tuple[str, Any]) -> tuple[str, Any]:
    name, value = key
    if name == _ext_ident(16):
        return "mlDsa44", _fixed(value, ML_DSA_44_PUBLIC_KEY_BYTES, "mlDsa44")
    if name == _ext_ident(17):
        if len(value) <= ML_DSA_44_PUBLIC_KEY_BYTES:
            raise EncodingError("ecdsaNistP256WithMlDsa44 is too short")
        point = _from_oer("point", value[:-ML_DSA_44_PUBLIC_KEY_BYTES])
        return "ecdsaNistP256WithMlDsa44", {
            "ecdsaNistP256": point, "altVerificationKey": value[-ML_DSA_44_PUBLIC_KEY_BYTES:]}
    return key


def _map_certificate(cert: dict[str, Any], sig_map: Any, key_map: Any) -> dict[str, Any]:
    cert = dict(cert)
    if "signature" in cert:
        cert["signature"] = sig_map(cert["signature"])
    tbs = dict(cert["toBeSigned"])
    indicator = tbs["verifyKeyIndicator"]
    if indicator[0] == "verificationKey":
        tbs["verifyKeyIndicator"] = ("verificationKey", key_map(indicator[1]))
    cert["toBeSigned"] = tbs
    return cert


def _map_data(data: dict[str, Any], sig_map: Any, key_map: Any) -> dict[str, Any]:
    data = dict(data)
    kind, content = data["content"]
    if kind == "signedData":
        content = dict(content)
        content["signature"] = sig_map(content["signature"])
        signer = content["signer"]
        if signer[0] == "certificate":
            content["signer"] = ("certificate", [_map_certificate(c, sig_map, key_map)
                                                 for c in signer[1]])
        tbs = dict(content["tbsData"])
        payload = dict(tbs["payload"])
        if "data" in payload:
            payload["data"] = _map_data(payload["data"], sig_map, key_map)
        tbs["payload"] = payload
        content["tbsData"] = tbs
        data["content"] = (kind, content)
    return data


# --- public entry points ---------------------------------------------------------------

def encode_data(value: dict[str, Any]) -> bytes:
    """The canonical OER of an ``Ieee1609Dot2Data`` value."""
    return _oer("data", _map_data(value, _signature_out, _key_out))


def decode_data(data: bytes, *, check_canonical: bool = True) -> dict[str, Any]:
    """The value of an OER ``Ieee1609Dot2Data``; :class:`EncodingError` if malformed or
    followed by other bytes. ``check_canonical=False`` skips re-encoding the whole message
    to compare: a verifier that hashes its own re-encoding of what is signed (as
    :class:`~corridor.mobility.v2x.verifier.RsuVerifier` does) gets the same guarantee
    for the signed parts without it."""
    return _map_data(_from_oer("data", data, check_canonical=check_canonical),
                     _signature_in, _key_in)


def encode_tbs_data(value: dict[str, Any]) -> bytes:
    """The OER of ``ToBeSignedData``: the 1609.2 "data input" that a signature covers."""
    payload = value["payload"]
    if "data" in payload:
        value = {**value, "payload": {**payload, "data": _map_data(payload["data"],
                                                                  _signature_out, _key_out)}}
    return _oer("tbs_data", value)


def encode_certificate(value: dict[str, Any]) -> bytes:
    """The canonical OER of a ``CertificateBase`` value."""
    return _oer("certificate", _map_certificate(value, _signature_out, _key_out))


def decode_certificate(data: bytes) -> dict[str, Any]:
    """The value of an OER certificate; :class:`EncodingError` if malformed."""
    return _map_certificate(_from_oer("certificate", data), _signature_in, _key_in)


def encode_tbs_certificate(value: dict[str, Any]) -> bytes:
    """The OER of ``ToBeSignedCertificate``, the part an issuer signs."""
    tbs = dict(value)
    indicator = tbs["verifyKeyIndicator"]
    if indicator[0] == "verificationKey":
        tbs["verifyKeyIndicator"] = ("verificationKey", _key_out(indicator[1]))
    return _oer("tbs_certificate", tbs)


def encode_symmetric_key(key: bytes) -> bytes:
    """The OER of ``SymmetricEncryptionKey`` (aes128Ccm), as 1609.2 hashes it for the
    ``pskRecipInfo`` identifier."""
    return _oer("symmetric_key", ("aes128Ccm", key))


def asn1_subset_text() -> str:
    """The ASN.1 of the 1609.2 subset with Corridor's extensions (for asn1tools)."""
    return resources.files(__package__).joinpath(ASN1_SUBSET_FILE).read_text()


def compile_subset() -> Any:
    """asn1tools' OER codec for :func:`asn1_subset_text` (the second library)."""
    import asn1tools

    return asn1tools.compile_string(asn1_subset_text(), "oer")
