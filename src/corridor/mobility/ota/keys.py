"""Role keys: Ed25519, ML-DSA-65, and the hybrid key whose one signature is both.

TUF's threshold counts keys, not schemes: a role with an Ed25519 key and an ML-DSA-65
key and threshold 1 accepts either signature alone. So that a role needs a classical
**and** a post-quantum signature, this module registers a key type with securesystemslib
(``KEY_FOR_TYPE_AND_SCHEME``): :class:`HybridKey`, keytype
``hybrid-ed25519-ml-dsa-65``, whose ``keyval`` holds both public keys and whose
signature is the Ed25519 signature (64 bytes) followed by the ML-DSA-65 signature
(securesystemslib's ``ml-dsa-65/1`` scheme, 3,309 bytes); it verifies only when both
do. A threshold of *n* hybrid keys then means *n* key holders, each with both
signatures, and the stock ``tuf.ngclient`` enforces it on every role (docs/ota.md).

:func:`new_signer` makes a signer of any of the three schemes (the benchmarks compare
them); :func:`write_signer` and :func:`load_signer` keep one in a key file (PKCS#8 PEM
inside JSON, mode 0600). Importing this module registers the key type.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import (
    KEY_FOR_TYPE_AND_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)
from securesystemslib.signer._utils import compute_default_keyid

from corridor.errors import ParameterError

KEY_TYPE_HYBRID = "hybrid-ed25519-ml-dsa-65"
SCHEME_HYBRID = "ed25519+ml-dsa-65/1"
ED25519 = "ed25519"
MLDSA65 = "ml-dsa-65"
HYBRID = "hybrid"
SCHEMES = (ED25519, MLDSA65, HYBRID)
ED25519_SIGNATURE_BYTES = 64


def _component_keys(keyval: dict[str, Any]) -> tuple[SSlibKey, SSlibKey]:
    ed = ("ed25519", "ed25519", {"public": keyval[ED25519]})
    ml = ("ml-dsa", "ml-dsa-65/1", {"public": keyval[MLDSA65]})
    return (SSlibKey(compute_default_keyid(*ed), *ed), SSlibKey(compute_default_keyid(*ml), *ml))


class HybridKey(Key):
    """An Ed25519 public key and an ML-DSA-65 public key that verify as one."""

    def __init__(self, keyid: str, keytype: str, scheme: str, keyval: dict[str, Any],
                 unrecognized_fields: dict[str, Any] | None = None) -> None:
        if keytype != KEY_TYPE_HYBRID or scheme != SCHEME_HYBRID:
            raise ValueError(f"unsupported hybrid key {keytype}/{scheme}")
        if set(keyval) != {ED25519, MLDSA65}:
            raise ValueError(f"a hybrid keyval holds {ED25519} and {MLDSA65}")
        super().__init__(keyid, keytype, scheme, keyval, unrecognized_fields)
        self._ed25519, self._mldsa = _component_keys(keyval)

    @classmethod
    def from_dict(cls, keyid: str, key_dict: dict[str, Any]) -> HybridKey:
        keytype, scheme, keyval = cls._from_dict(key_dict)
        return cls(keyid, keytype, scheme, keyval, key_dict)

    @classmethod
    def of(cls, ed25519: Key, mldsa65: Key) -> HybridKey:
        """The hybrid key of two component public keys (keyid: the default hash)."""
        keyval = {ED25519: ed25519.keyval["public"], MLDSA65: mldsa65.keyval["public"]}
        return cls(compute_default_keyid(KEY_TYPE_HYBRID, SCHEME_HYBRID, keyval),
                   KEY_TYPE_HYBRID, SCHEME_HYBRID, keyval)

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict()

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        try:
            raw = bytes.fromhex(signature.signature)
        except ValueError:
            raise UnverifiedSignatureError(f"hybrid signature of {self.keyid} is not hex") \
                from None
        if len(raw) <= ED25519_SIGNATURE_BYTES:
            raise UnverifiedSignatureError(f"hybrid signature of {self.keyid} too short")
        # Both must verify: a failure of either raises, whichever it is.
        self._ed25519.verify_signature(
            Signature(self._ed25519.keyid, raw[:ED25519_SIGNATURE_BYTES].hex()), data)
        self._mldsa.verify_signature(
            Signature(self._mldsa.keyid, raw[ED25519_SIGNATURE_BYTES:].hex()), data)


KEY_FOR_TYPE_AND_SCHEME[(KEY_TYPE_HYBRID, SCHEME_HYBRID)] = HybridKey


class HybridSigner(Signer):
    """Signs with an Ed25519 and an ML-DSA-65 private key; the signature is the pair."""

    def __init__(self, ed25519: CryptoSigner, mldsa65: CryptoSigner) -> None:
        self.ed25519 = ed25519
        self.mldsa65 = mldsa65
        self._public = HybridKey.of(ed25519.public_key, mldsa65.public_key)

    @property
    def public_key(self) -> HybridKey:
        return self._public

    def sign(self, payload: bytes) -> Signature:
        ed = bytes.fromhex(self.ed25519.sign(payload).signature)
        ml = bytes.fromhex(self.mldsa65.sign(payload).signature)
        return Signature(self._public.keyid, (ed + ml).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> Signer:
        """``file:PATH``: a key file written by :func:`write_signer`."""
        scheme, _, path = priv_key_uri.partition(":")
        if scheme != "file":
            raise ValueError(f"HybridSigner loads file:PATH URIs, not {scheme}:")
        signer = load_signer(Path(path))
        if signer.public_key != public_key:
            raise ValueError("the key file does not hold the private key of public_key")
        return signer

    def __repr__(self) -> str:
        return f"HybridSigner({self._public.keyid[:16]}..., keys not shown)"


def new_signer(scheme: str = HYBRID) -> Signer:
    """A fresh signer: ``ed25519``, ``ml-dsa-65`` or ``hybrid`` (both, as one key)."""
    if scheme == ED25519:
        return CryptoSigner.generate_ed25519()
    if scheme == MLDSA65:
        return CryptoSigner.generate_mldsa()
    if scheme == HYBRID:
        return HybridSigner(CryptoSigner.generate_ed25519(), CryptoSigner.generate_mldsa())
    raise ParameterError("scheme", scheme, f"one of {list(SCHEMES)}")


def _pem(signer: CryptoSigner) -> str:
    return signer.private_bytes.decode()


def _crypto_signer(pem: str) -> CryptoSigner:
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    return CryptoSigner(private)


def signer_scheme(signer: Signer) -> str:
    """``ed25519``, ``ml-dsa-65`` or ``hybrid``."""
    if isinstance(signer, HybridSigner):
        return HYBRID
    return ED25519 if signer.public_key.keytype == ED25519 else MLDSA65


def write_signer(path: Path, signer: Signer) -> None:
    """Keep ``signer`` in ``path`` (JSON of PKCS#8 PEMs, created with mode 0600)."""
    if isinstance(signer, HybridSigner):
        data = {"scheme": HYBRID, ED25519: _pem(signer.ed25519), MLDSA65: _pem(signer.mldsa65)}
    elif isinstance(signer, CryptoSigner):
        data = {"scheme": signer_scheme(signer), "pem": _pem(signer)}
    else:
        raise TypeError(f"cannot write a {type(signer).__name__} to a key file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)


def load_signer(path: Path) -> Signer:
    """The signer kept in ``path`` by :func:`write_signer`."""
    try:
        data = json.loads(path.read_text())
        if data["scheme"] == HYBRID:
            return HybridSigner(_crypto_signer(data[ED25519]), _crypto_signer(data[MLDSA65]))
        if data["scheme"] in (ED25519, MLDSA65):
            return _crypto_signer(data["pem"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise ParameterError("key file", str(path), "a readable OTA key file (corridor ota init)")


__all__ = ["ED25519", "HYBRID", "KEY_TYPE_HYBRID", "MLDSA65", "SCHEMES", "SCHEME_HYBRID",
           "HybridKey", "HybridSigner", "load_signer", "new_signer", "signer_scheme",
           "write_signer"]
