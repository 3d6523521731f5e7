"""The algorithm catalogue: canonical names, what each algorithm does, its classical
security strength and how a quantum computer affects it.

Everything that turns a name found in an artefact (``prime256v1``, ``ecp384``,
``X25519MLKEM768``, ``diffie-hellman-group14-sha256``) into Corridor's canonical form
lives here, so that every scanner classifies alike.

Quantum vulnerability, one of :data:`VULNERABILITIES`:

- ``shor-broken``: public-key algorithms whose hardness is factoring or a discrete
  logarithm (RSA, DSA, DH, ECDH, ECDSA, EdDSA, X25519/X448). Shor's algorithm breaks
  them outright on a cryptographically relevant quantum computer (CRQC), whatever the
  key size.
- ``grover-weakened``: symmetric ciphers, MACs and hashes of less than 256 bits. Grover
  halves their exponent (AES-128 falls to about 64-bit strength in the query model;
  NIST still counts AES-128 as category 1, so these migrate after the Shor-broken ones).
- ``quantum-safe``: ML-KEM, ML-DSA, SLH-DSA, LMS/XMSS, hybrid groups that contain one
  of them (X25519MLKEM768, X-Wing), 256-bit symmetric keys, hashes of 256 bits or more,
  and information-theoretic MACs (Wegman-Carter).
- ``qkd``: keys that come from quantum key distribution, and assets keyed by them.

Classical security strength follows NIST SP 800-57 Part 1 Rev. 5, table 2 (RSA/DH/DSA
by modulus, ECC at half the curve size, symmetric at the key size); MD5 and SHA-1 are
counted at 0 and 63 bits because collisions are found in practice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHOR = "shor-broken"
GROVER = "grover-weakened"
SAFE = "quantum-safe"
QKD = "qkd"
VULNERABILITIES = (SHOR, GROVER, SAFE, QKD)

_SHOR_PRIMITIVES = {
    "RSA": "pke", "DSA": "signature", "DH": "key-agree", "ECDH": "key-agree",
    "ECDSA": "signature", "EC": "signature", "Ed25519": "signature", "Ed448": "signature",
    "X25519": "key-agree", "X448": "key-agree", "ECIES": "pke",
}
_FIXED_SIZE = {"Ed25519": 256, "X25519": 256, "Ed448": 448, "X448": 448, "3DES": 168,
               "DES": 56, "ChaCha20": 256, "ChaCha20-Poly1305": 256, "Poly1305": 256,
               "MD5": 128, "SHA-1": 160, "SHA-224": 224, "SHA-256": 256, "SHA-384": 384,
               "SHA-512": 512, "SHA3-256": 256, "SHA3-384": 384, "SHA3-512": 512,
               "BLAKE2b": 512, "BLAKE2s": 256, "RC4": 128, "Wegman-Carter-Poly1305": 256}
# Post-quantum and hybrid algorithms: (primitive, public key size in bits, NIST level).
# The "key size" of a lattice scheme is its public (encapsulation/verification) key.
_PQC = {
    "ML-KEM-512": ("kem", 800 * 8, 1), "ML-KEM-768": ("kem", 1184 * 8, 3),
    "ML-KEM-1024": ("kem", 1568 * 8, 5),
    "ML-DSA-44": ("signature", 1312 * 8, 2), "ML-DSA-65": ("signature", 1952 * 8, 3),
    "ML-DSA-87": ("signature", 2592 * 8, 5),
    "SLH-DSA": ("signature", 256, 1), "LMS": ("signature", 256, 5),
    "XMSS": ("signature", 256, 5),
    "X25519MLKEM768": ("kem", (1184 + 32) * 8, 3),
    "SecP256r1MLKEM768": ("kem", (1184 + 65) * 8, 3),
    "SecP384r1MLKEM1024": ("kem", (1568 + 97) * 8, 5),
    "X-Wing": ("kem", (1184 + 32) * 8, 3),
    "sntrup761x25519": ("kem", (1158 + 32) * 8, 2),
    "mlkem768x25519": ("kem", (1184 + 32) * 8, 3),
}
_HASHES = {"MD5", "SHA-1", "SHA-224", "SHA-256", "SHA-384", "SHA-512", "SHA3-256",
           "SHA3-384", "SHA3-512", "BLAKE2b", "BLAKE2s"}
_SYMMETRIC = {"AES": "block-cipher", "3DES": "block-cipher", "DES": "block-cipher",
              "Camellia": "block-cipher", "ChaCha20": "stream-cipher", "RC4": "stream-cipher",
              "ChaCha20-Poly1305": "ae", "Poly1305": "mac", "HMAC": "mac", "CMAC": "mac",
              "PSK": "other", "PPK": "other", "Wegman-Carter-Poly1305": "mac",
              "HKDF": "kdf", "CatKDF": "kdf"}
_QKD = {"QKD-BB84": "key-agree", "QKD-key": "other", "PPK-QKD": "other",
        "PSK-QKD": "other"}
_PROTOCOLS = {"TLS", "TLSv1.0", "TLSv1.1", "TLSv1.2", "SSLv3", "SSH", "IKEv2"}


@dataclass(frozen=True)
class AlgorithmInfo:
    """How the catalogue classifies one algorithm at one key size.

    Attributes:
        primitive: CycloneDX primitive (``pke``, ``signature``, ``kem``, ``key-agree``,
            ``block-cipher``, ``ae``, ``hash``, ``mac``, ``kdf``, ``other``).
        vulnerability: one of :data:`VULNERABILITIES`.
        classical_security_bits: strength against classical attack, None if unknown.
        nist_quantum_level: NIST PQC category (0: none, broken by a CRQC).
    """

    primitive: str
    vulnerability: str
    classical_security_bits: int | None
    nist_quantum_level: int


def _ifc_strength(modulus_bits: int) -> int:
    """SP 800-57 strength of RSA, DH and DSA moduli."""
    for bits, strength in ((15360, 256), (7680, 192), (3072, 128), (2048, 112), (1024, 80)):
        if modulus_bits >= bits:
            return strength
    return 0


def default_size(algorithm: str) -> int | None:
    """The key size fixed by the algorithm itself (Ed25519, SHA-256, ML-KEM-768, ...)."""
    if algorithm in _FIXED_SIZE:
        return _FIXED_SIZE[algorithm]
    if algorithm in _PQC:
        return _PQC[algorithm][1]
    match = re.fullmatch(r"HMAC-(.+)", algorithm)
    if match and match.group(1) in _FIXED_SIZE:
        return _FIXED_SIZE[match.group(1)]
    return None


def classify(algorithm: str, key_size_bits: int | None) -> AlgorithmInfo:
    """Primitive, quantum vulnerability and strengths of ``algorithm`` at ``key_size_bits``."""
    size = key_size_bits if key_size_bits is not None else default_size(algorithm)
    if algorithm in _QKD:
        return AlgorithmInfo(_QKD[algorithm], QKD, size, 5)
    if algorithm in _PQC:
        primitive, _, level = _PQC[algorithm]
        return AlgorithmInfo(primitive, SAFE, {1: 128, 2: 128, 3: 192, 5: 256}[level], level)
    if algorithm in _SHOR_PRIMITIVES:
        strength: int | None
        if size is None:
            strength = None
        elif algorithm in ("RSA", "DH", "DSA"):
            strength = _ifc_strength(size)
        else:
            strength = size // 2
        return AlgorithmInfo(_SHOR_PRIMITIVES[algorithm], SHOR, strength, 0)
    if algorithm in _PROTOCOLS:
        # A protocol version without a post-quantum key exchange (TLS <= 1.2, SSH or
        # IKEv2 without a hybrid group): its sessions fall to Shor.
        return AlgorithmInfo("other", SHOR, None, 0)
    hmac = re.fullmatch(r"HMAC-(.+)", algorithm)
    if algorithm in _HASHES or hmac:
        base = hmac.group(1) if hmac else algorithm
        out = _FIXED_SIZE.get(base, size)
        if base == "MD5":
            strength = 0
        elif base == "SHA-1":
            strength = 63
        else:
            strength = None if out is None else (out if hmac else out // 2)
        safe = out is not None and out >= 256 and base not in ("MD5", "SHA-1")
        return AlgorithmInfo("mac" if hmac else "hash", SAFE if safe else GROVER, strength,
                             (1 if safe else 0))
    if algorithm in _SYMMETRIC:
        strength = {"3DES": 112, "DES": 56, "RC4": 0}.get(algorithm, size)
        safe = strength is not None and strength >= 256
        return AlgorithmInfo(_SYMMETRIC[algorithm], SAFE if safe else GROVER, strength,
                             5 if safe else (1 if (strength or 0) >= 128 else 0))
    return AlgorithmInfo("unknown", SHOR, None, 0)


def known(algorithm: str) -> bool:
    """Whether the catalogue knows ``algorithm`` by its canonical name."""
    return (algorithm in _QKD or algorithm in _PQC or algorithm in _SHOR_PRIMITIVES
            or algorithm in _PROTOCOLS or algorithm in _HASHES or algorithm in _SYMMETRIC
            or bool(re.fullmatch(r"HMAC-(.+)", algorithm)))


# Named curves: every spelling seen in configs, code and OpenSSL -> (curve, size).
_CURVES = {
    "p256": ("P-256", 256), "secp256r1": ("P-256", 256), "prime256v1": ("P-256", 256),
    "nistp256": ("P-256", 256), "ecp256": ("P-256", 256), "x962prime256v1": ("P-256", 256),
    "ecpdpsecp256r1": ("P-256", 256),
    "p384": ("P-384", 384), "secp384r1": ("P-384", 384), "nistp384": ("P-384", 384),
    "ecp384": ("P-384", 384), "ecpdpsecp384r1": ("P-384", 384),
    "p521": ("P-521", 521), "secp521r1": ("P-521", 521), "nistp521": ("P-521", 521),
    "ecp521": ("P-521", 521), "ecpdpsecp521r1": ("P-521", 521),
    "p224": ("P-224", 224), "secp224r1": ("P-224", 224),
    "secp256k1": ("secp256k1", 256), "ecpdpsecp256k1": ("secp256k1", 256),
    "brainpoolp256r1": ("brainpoolP256r1", 256), "brainpoolp384r1": ("brainpoolP384r1", 384),
    "ecp256bp": ("brainpoolP256r1", 256), "ecp384bp": ("brainpoolP384r1", 384),
}


def curve(name: str) -> tuple[str, int] | None:
    """``(canonical curve, size in bits)`` for any spelling of a named curve, else None."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in ("nid", "mbedtls", "nidx962"):
        if key.startswith(prefix) and key[len(prefix):] in _CURVES:
            return _CURVES[key[len(prefix):]]
    return _CURVES.get(key)


@dataclass(frozen=True)
class Named:
    """A name resolved to the catalogue: algorithm, size, curve or parameter set."""

    algorithm: str
    key_size_bits: int | None
    curve: str | None = None


_GROUPS = {
    "x25519": Named("X25519", 256), "curve25519": Named("X25519", 256),
    "x448": Named("X448", 448), "curve448": Named("X448", 448),
    "x25519mlkem768": Named("X25519MLKEM768", default_size("X25519MLKEM768")),
    "secp256r1mlkem768": Named("SecP256r1MLKEM768", default_size("SecP256r1MLKEM768")),
    "secp384r1mlkem1024": Named("SecP384r1MLKEM1024", default_size("SecP384r1MLKEM1024")),
    "mlkem512": Named("ML-KEM-512", default_size("ML-KEM-512")),
    "mlkem768": Named("ML-KEM-768", default_size("ML-KEM-768")),
    "mlkem1024": Named("ML-KEM-1024", default_size("ML-KEM-1024")),
}


def group(name: str) -> Named | None:
    """A key-exchange group as TLS, IKEv2 and OpenSSL name it (``X25519MLKEM768``,
    ``P-256``, ``ffdhe2048``, ``modp2048``, ``ecp384``, ``ke1_mlkem768``)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    key = re.sub(r"^ke\d", "", key)  # strongSwan's additional key exchanges, RFC 9370
    if key in _GROUPS:
        return _GROUPS[key]
    ffdhe = re.fullmatch(r"(?:ffdhe|modp)(\d{3,5})s?\d*", key)
    if ffdhe:
        return Named("DH", int(ffdhe.group(1)))
    found = curve(key)
    if found:
        return Named("ECDH", found[1], found[0])
    return None


_HASH_NAMES = {
    "md5": "MD5", "sha1": "SHA-1", "sha": "SHA-1", "sha224": "SHA-224", "sha256": "SHA-256",
    "sha384": "SHA-384", "sha512": "SHA-512", "sha3256": "SHA3-256", "sha3384": "SHA3-384",
    "sha3512": "SHA3-512", "blake2b": "BLAKE2b", "blake2s": "BLAKE2s",
    "sha2256": "SHA-256", "sha2384": "SHA-384", "sha2512": "SHA-512",
}


def hash_name(name: str) -> str | None:
    """Canonical hash for ``sha256``, ``SHA-1``, ``sha3_256``, ``SHA2_384``, ..."""
    return _HASH_NAMES.get(re.sub(r"[^a-z0-9]", "", name.lower()))
