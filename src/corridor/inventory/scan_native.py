"""Cryptography in Java (JCA and BouncyCastle), C/C++ (OpenSSL and mbedTLS) and Go
(``crypto/*``) source, found by patterns over the text with comments blanked out
(line numbers kept).

Key sizes are read where the code fixes them: the literal argument of the call
(``RSA_generate_key_ex(rsa, 2048, ...)``, ``rsa.GenerateKey(rand.Reader, 3072)``), a
named curve (``NID_secp384r1``, ``elliptic.P256()``, ``MBEDTLS_ECP_DP_SECP256R1``), a
Java generator's ``initialize(2048)`` on the same variable, or the length of a key
buffer declared in the same file (``unsigned char key[32]``, ``make([]byte, 32)``,
``new byte[16]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from corridor.inventory import algorithms
from corridor.inventory.findings import Finding

_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"", re.S)


def strip_comments(text: str) -> str:
    """``text`` with comments replaced by blanks (newlines kept, strings kept)."""
    def blank(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.startswith('"'):
            return token
        return re.sub(r"[^\n]", " ", token)
    return _COMMENTS.sub(blank, text)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    resolve: Callable[[re.Match[str], str], tuple[str, int | None, str | None] | None]
    usage: str


def _p(pattern: str, resolve: Callable[[re.Match[str], str],
                                       tuple[str, int | None, str | None] | None],
       usage: str) -> _Pattern:
    return _Pattern(re.compile(pattern), resolve, usage)


def _const(algorithm: str, size_group: int | None = None
           ) -> Callable[[re.Match[str], str], tuple[str, int | None, str | None]]:
    def resolve(match: re.Match[str], _: str) -> tuple[str, int | None, str | None]:
        size = int(match.group(size_group)) if size_group and match.group(size_group) \
            else algorithms.default_size(algorithm)
        return algorithm, size, None
    return resolve


def _ec(algorithm: str, group: int = 1
        ) -> Callable[[re.Match[str], str], tuple[str, int | None, str | None]]:
    def resolve(match: re.Match[str], _: str) -> tuple[str, int | None, str | None]:
        found = algorithms.curve(match.group(group))
        return (algorithm, found[1], found[0]) if found else (algorithm, None, None)
    return resolve


def _hash(group: int = 1) -> Callable[[re.Match[str], str],
                                      tuple[str, int | None, str | None] | None]:
    def resolve(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
        name = algorithms.hash_name(match.group(group))
        return (name, algorithms.default_size(name), None) if name else None
    return resolve


def _buffer_bits(text: str, variable: str) -> int | None:
    """Bits of a byte buffer named ``variable`` declared with a literal length."""
    name = re.escape(variable.lstrip("&*"))
    for pattern in (rf"\b{name}\s*\[\s*(\d+)\s*\]",                  # C: key[32]
                    rf"\b{name}\s*:?=\s*make\(\[\]byte,\s*(\d+)\)",     # Go
                    rf"\b{name}\s*=\s*new\s+byte\s*\[\s*(\d+)\s*\]"):   # Java
        match = re.search(pattern, text)
        if match:
            return int(match.group(1)) * 8
    return None


def _aes_buffer(variable_group: int) -> Callable[[re.Match[str], str],
                                                 tuple[str, int | None, str | None]]:
    def resolve(match: re.Match[str], text: str) -> tuple[str, int | None, str | None]:
        return "AES", _buffer_bits(text, match.group(variable_group)), None
    return resolve


# ----------------------------------------------------------------- Java
_JCA_ASYM = {"RSA": "RSA", "EC": "ECDSA", "DSA": "DSA", "DH": "DH", "DIFFIEHELLMAN": "DH",
             "ECDH": "ECDH", "X25519": "X25519", "XDH": "X25519", "ED25519": "Ed25519",
             "EDDSA": "Ed25519", "X448": "X448", "ED448": "Ed448",
             "ML-KEM": "ML-KEM-768", "ML-KEM-768": "ML-KEM-768", "ML-DSA": "ML-DSA-65",
             "ML-DSA-44": "ML-DSA-44", "ML-DSA-65": "ML-DSA-65"}


def _java_generator(match: re.Match[str], text: str) -> tuple[str, int | None, str | None] | None:
    """``var = KeyPairGenerator.getInstance("RSA")`` with ``var.initialize(2048)`` or an
    ``ECGenParameterSpec("secp256r1")``; KeyGenerator with ``var.init(256)``."""
    variable, kind, name = match.group(1), match.group(2), match.group(3).upper()
    if kind == "KeyGenerator":
        algorithm = {"AES": "AES", "DESEDE": "3DES", "HMACSHA256": "HMAC-SHA-256",
                     "HMACSHA1": "HMAC-SHA-1"}.get(name)
    else:
        algorithm = _JCA_ASYM.get(name)
    if algorithm is None:
        return None
    size = algorithms.default_size(algorithm)
    curve_name = None
    if variable:
        init = re.search(rf"\b{re.escape(variable)}\s*\.\s*init(?:ialize)?\s*\(\s*(\d+)", text)
        spec = re.search(rf"\b{re.escape(variable)}\s*\.\s*initialize\s*\(\s*new\s+"
                         r"ECGenParameterSpec\s*\(\s*\"([^\"]+)\"", text)
        if init:
            size = int(init.group(1))
        elif spec and algorithms.curve(spec.group(1)):
            curve_name, size = algorithms.curve(spec.group(1))  # type: ignore[misc]
    return algorithm, size, curve_name


def _java_transform(match: re.Match[str], text: str
                    ) -> tuple[str, int | None, str | None] | None:
    base = match.group(1).split("/")[0].upper()
    algorithm = {"AES": "AES", "DESEDE": "3DES", "DES": "DES", "RSA": "RSA",
                 "CHACHA20-POLY1305": "ChaCha20-Poly1305"}.get(base)
    if algorithm is None:
        return None
    size = algorithms.default_size(algorithm)
    if algorithm == "AES":
        spec = re.search(r"new\s+SecretKeySpec\s*\(\s*(\w+)\s*,\s*\"AES\"", text)
        if spec:
            size = _buffer_bits(text, spec.group(1))
        gen = re.search(r"KeyGenerator\.getInstance\(\s*\"AES\"[^;]*;[^;]*?\.init\s*\(\s*(\d+)",
                        text, re.S)
        if size is None and gen:
            size = int(gen.group(1))
    return algorithm, size, None


def _java_signature(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
    name = match.group(1).upper()
    for token, algorithm in (("ECDSA", "ECDSA"), ("RSA", "RSA"), ("DSA", "DSA"),
                             ("ED25519", "Ed25519"), ("ML-DSA", "ML-DSA-65")):
        if token in name:
            return algorithm, algorithms.default_size(algorithm), None
    return None


def _java_mac(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
    name = algorithms.hash_name(match.group(1).upper().removeprefix("HMAC"))
    return (f"HMAC-{name}", algorithms.default_size(name), None) if name else None


_JAVA = (
    _p(r"(?:(\w+)\s*=\s*)?(KeyPairGenerator|KeyGenerator)\s*\.\s*getInstance\s*\(\s*\"([\w-]+)\"",
       _java_generator, "keygen"),
    _p(r"Cipher\s*\.\s*getInstance\s*\(\s*\"([^\"]+)\"", _java_transform, "encryption"),
    _p(r"MessageDigest\s*\.\s*getInstance\s*\(\s*\"([^\"]+)\"", _hash(), "digest"),
    _p(r"Signature\s*\.\s*getInstance\s*\(\s*\"([^\"]+)\"", _java_signature, "signature"),
    _p(r"Mac\s*\.\s*getInstance\s*\(\s*\"([^\"]+)\"", _java_mac, "mac"),
    _p(r"KeyAgreement\s*\.\s*getInstance\s*\(\s*\"(ECDH|DH|X25519|XDH)\"",
       lambda m, _: (_JCA_ASYM[m.group(1)], algorithms.default_size(_JCA_ASYM[m.group(1)]),
                     None), "key-exchange"),
    _p(r"new\s+RSAKeyGenerationParameters\s*\([^,]+,[^,]+,\s*(\d+)", _const("RSA", 1),
       "keygen"),
    _p(r"new\s+ECNamedDomainParameters\s*\([^)]*?\"?(\w*(?:secp|prime|P-?)\d+\w*)",
       _ec("ECDSA"), "keygen"),
    _p(r"new\s+(?:X25519KeyPairGenerator|X25519Agreement)\s*\(", _const("X25519"),
       "key-exchange"),
    _p(r"new\s+(?:Ed25519KeyPairGenerator|Ed25519Signer)\s*\(", _const("Ed25519"),
       "signature"),
    _p(r"new\s+(?:AESEngine|AESFastEngine)\s*\(", _const("AES"), "encryption"),
    _p(r"new\s+(SHA1|SHA256|SHA384|SHA512|MD5)Digest\s*\(", _hash(), "digest"),
    _p(r"new\s+MLKEMKeyPairGenerator\s*\(", _const("ML-KEM-768"), "key-exchange"),
)

# ----------------------------------------------------------------- C / C++
_EVP_IDS = {"RSA": "RSA", "EC": "ECDSA", "X25519": "X25519", "ED25519": "Ed25519",
            "X448": "X448", "ED448": "Ed448", "DH": "DH", "DSA": "DSA"}


def _evp_id(match: re.Match[str], text: str) -> tuple[str, int | None, str | None] | None:
    algorithm = _EVP_IDS.get(match.group(1))
    if algorithm is None:
        return None
    size = algorithms.default_size(algorithm)
    curve_name = None
    if algorithm == "RSA":
        bits = re.search(r"EVP_PKEY_CTX_set_rsa_keygen_bits\s*\([^,]+,\s*(\d+)", text)
        size = int(bits.group(1)) if bits else None
    elif algorithm == "ECDSA":
        nid = re.search(r"EVP_PKEY_CTX_set_ec_paramgen_curve_nid\s*\([^,]+,\s*(\w+)", text)
        found = algorithms.curve(nid.group(1)) if nid else None
        curve_name, size = found if found else (None, None)
    return algorithm, size, curve_name


def _q_keygen(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
    kind, arg = match.group(1), match.group(2).strip()
    if kind == "RSA":
        digits = re.search(r"(\d+)", arg)
        return "RSA", int(digits.group(1)) if digits else None, None
    if kind == "EC":
        found = algorithms.curve(arg.strip('"'))
        return ("ECDSA", found[1], found[0]) if found else ("ECDSA", None, None)
    algorithm = _EVP_IDS.get(kind.upper())
    return (algorithm, algorithms.default_size(algorithm), None) if algorithm else None


def _tls_groups(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
    names = [algorithms.group(n) for n in match.group(1).split(":") if n]
    if not names or names[0] is None:
        return None
    first = names[0]
    return first.algorithm, first.key_size_bits, first.curve


_C = (
    _p(r"\bRSA_generate_key(?:_ex)?\s*\([^,]*,\s*(\d+)", _const("RSA", 1), "keygen"),
    _p(r"\bDH_generate_parameters(?:_ex)?\s*\([^,]*,\s*(\d+)", _const("DH", 1), "key-exchange"),
    _p(r"\bDSA_generate_parameters(?:_ex)?\s*\([^,]*,\s*(\d+)", _const("DSA", 1), "keygen"),
    _p(r"\bEC_KEY_new_by_curve_name\s*\(\s*(\w+)", _ec("ECDSA"), "keygen"),
    _p(r"\bEVP_PKEY_CTX_new_id\s*\(\s*EVP_PKEY_(\w+)", _evp_id, "keygen"),
    _p(r"\bEVP_PKEY_Q_keygen\s*\([^,]*,[^,]*,\s*\"(\w+)\"\s*,?\s*([^;]*)\)\s*;", _q_keygen,
       "keygen"),
    _p(r"\bEVP_aes_(128|192|256)_\w+\s*\(", _const("AES", 1), "encryption"),
    _p(r"\bEVP_des_ede3\w*\s*\(", _const("3DES"), "encryption"),
    _p(r"\bEVP_chacha20_poly1305\s*\(", _const("ChaCha20-Poly1305"), "encryption"),
    _p(r"\bEVP_(md5|sha1|sha224|sha256|sha384|sha512|sha3_256|sha3_512)\s*\(", _hash(),
       "digest"),
    _p(r"\b(MD5|SHA1|SHA256|SHA512)\s*\(", _hash(), "digest"),
    _p(r"\bSSL_CTX_set1_(?:groups|curves)_list\s*\([^,]+,\s*\"([^\"]+)\"", _tls_groups,
       "key-exchange"),
    _p(r"\bmbedtls_rsa_gen_key\s*\([^,]+,[^,]+,[^,]+,\s*(\d+)", _const("RSA", 1), "keygen"),
    _p(r"\bmbedtls_ecp_group_load\s*\([^,]+,\s*(\w+)", _ec("ECDH"), "key-exchange"),
    _p(r"\bmbedtls_ecdsa_genkey\s*\([^,]+,\s*(\w+)", _ec("ECDSA"), "keygen"),
    _p(r"\bmbedtls_aes_setkey_(?:enc|dec)\s*\([^,]+,[^,]+,\s*(\d+)", _const("AES", 1),
       "encryption"),
    _p(r"\bmbedtls_gcm_setkey\s*\([^,]+,\s*MBEDTLS_CIPHER_ID_AES\s*,[^,]+,\s*(\d+)",
       _const("AES", 1), "encryption"),
    _p(r"\bmbedtls_(md5|sha1|sha256|sha512)\s*\(", _hash(), "digest"),
)

# ----------------------------------------------------------------- Go
_GO_CURVES = {"P224": ("P-224", 224), "P256": ("P-256", 256), "P384": ("P-384", 384),
              "P521": ("P-521", 521)}


def _go_curve(algorithm: str) -> Callable[[re.Match[str], str],
                                          tuple[str, int | None, str | None]]:
    def resolve(match: re.Match[str], _: str) -> tuple[str, int | None, str | None]:
        name = match.group(1)
        if name == "X25519":
            return "X25519", 256, None
        curve_name, size = _GO_CURVES[name]
        return algorithm, size, curve_name
    return resolve


def _go_tls_curve(match: re.Match[str], _: str) -> tuple[str, int | None, str | None] | None:
    named = algorithms.group({"CurveP256": "P-256", "CurveP384": "P-384",
                              "CurveP521": "P-521"}.get(match.group(1), match.group(1)))
    return (named.algorithm, named.key_size_bits, named.curve) if named else None


_GO = (
    _p(r"\brsa\.GenerateKey\s*\([^,]+,\s*(\d+)", _const("RSA", 1), "keygen"),
    _p(r"\becdsa\.GenerateKey\s*\(\s*elliptic\.(P224|P256|P384|P521)\(", _go_curve("ECDSA"),
       "keygen"),
    _p(r"\becdh\.(P256|P384|P521|X25519)\(\)", _go_curve("ECDH"), "key-exchange"),
    _p(r"\bed25519\.GenerateKey\s*\(", _const("Ed25519"), "signature"),
    _p(r"\baes\.NewCipher\s*\(\s*([\w.&*]+)", _aes_buffer(1), "encryption"),
    _p(r"\bdes\.NewTripleDESCipher\s*\(", _const("3DES"), "encryption"),
    _p(r"\bchacha20poly1305\.NewX?\s*\(", _const("ChaCha20-Poly1305"), "encryption"),
    _p(r"\b(md5|sha1|sha256|sha512)\.(?:New|Sum(?:256|512)?)\s*\(", _hash(), "digest"),
    _p(r"\bmlkem\.GenerateKey(768|1024)\s*\(",
       lambda m, _: (f"ML-KEM-{m.group(1)}",
                     algorithms.default_size(f"ML-KEM-{m.group(1)}"), None), "key-exchange"),
    _p(r"\btls\.(X25519MLKEM768|X25519|CurveP256|CurveP384|CurveP521|SecP256r1MLKEM768)\b",
       _go_tls_curve, "key-exchange"),
)

LANGUAGES = {"java": _JAVA, "c": _C, "go": _GO}
EXTENSIONS = {".java": "java", ".c": "c", ".h": "c", ".cc": "c", ".cpp": "c", ".cxx": "c",
              ".hpp": "c", ".hh": "c", ".go": "go"}


def native_findings(location: str, text: str, language: str) -> list[Finding]:
    """Every recognised call in a Java, C/C++ or Go file."""
    code = strip_comments(text)
    found = []
    for pattern in LANGUAGES[language]:
        for match in pattern.regex.finditer(code):
            resolved = pattern.resolve(match, code)
            if resolved is None:
                continue
            algorithm, size, curve_name = resolved
            line = code.count("\n", 0, match.start()) + 1
            snippet = " ".join(match.group(0).split())[:80]
            found.append(Finding("source", location, algorithm, f"pattern:{language}",
                                 line=line, key_size_bits=size, curve=curve_name,
                                 usage=pattern.usage, detail=snippet))
    return found
