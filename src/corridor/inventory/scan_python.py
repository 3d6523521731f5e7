"""Cryptography in Python source, read from the syntax tree: pyca/cryptography,
hashlib, hmac, ssl, PyCryptodome (``Crypto``/``Cryptodome``) and paramiko.

Imports are resolved to full dotted names (``from cryptography.hazmat.primitives
.asymmetric import rsa as r`` makes ``r.generate_private_key`` the rsa module's
function), so aliases do not hide a call. Key sizes come from the call's literal
arguments (``key_size=2048``, ``ec.SECP384R1()``, ``RSA.generate(3072)``) and, for a
symmetric key passed by name, from the literal length of its assignment in the same
file (``key = os.urandom(32)``, ``secrets.token_bytes(16)``, ``b"..."``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

from corridor.inventory import algorithms
from corridor.inventory.findings import Finding

_CRYPTO = "cryptography.hazmat.primitives."
_ASYM = _CRYPTO + "asymmetric."


@dataclass(frozen=True)
class _Rule:
    algorithm: str
    usage: str
    size: Callable[[ast.Call, _Context], int | None] | None = None
    curve_arg: tuple[int, str] | None = None


class _Context:
    """Per-file knowledge: names bound to byte strings of known length."""

    def __init__(self, nodes: list[ast.AST]) -> None:
        self.lengths: dict[str, int] = {}
        for node in nodes:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                length = _literal_length(node.value)
                if length is not None:
                    self.lengths[node.targets[0].id] = length

    def key_bits(self, node: ast.expr | None) -> int | None:
        if node is None:
            return None
        length = _literal_length(node)
        if length is None and isinstance(node, ast.Name):
            length = self.lengths.get(node.id)
        return None if length is None else length * 8


def _literal_length(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        return len(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):  # b"k" * 32
        for left, right in ((node.left, node.right), (node.right, node.left)):
            if isinstance(left, ast.Constant) and isinstance(left.value, bytes) \
                    and isinstance(right, ast.Constant) and isinstance(right.value, int):
                return len(left.value) * right.value
    if isinstance(node, ast.Call) and (_dotted(node.func) or "").endswith("generate_key"):
        bits = _arg(node, 0, "bit_length")
        if isinstance(bits, ast.Constant) and isinstance(bits.value, int):
            return int(bits.value) // 8
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, int):
        name = _dotted(node.func)
        if name and name.split(".")[-1] in ("urandom", "token_bytes", "get_random_bytes",
                                             "randbytes"):
            return int(node.args[0].value)
    return None


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def _int_arg(index: int, keyword: str) -> Callable[[ast.Call, _Context], int | None]:
    def read(call: ast.Call, _: _Context) -> int | None:
        node = _arg(call, index, keyword)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) \
                and not isinstance(node.value, bool):
            return node.value
        return None
    return read


def _key_arg(index: int, keyword: str) -> Callable[[ast.Call, _Context], int | None]:
    def read(call: ast.Call, context: _Context) -> int | None:
        return context.key_bits(_arg(call, index, keyword))
    return read


def _fixed(bits: int) -> Callable[[ast.Call, _Context], int | None]:
    return lambda _call, _context: bits


_HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_384",
           "sha3_512", "blake2b", "blake2s")

_RULES: dict[str, _Rule] = {
    _ASYM + "rsa.generate_private_key": _Rule("RSA", "signature", _int_arg(1, "key_size")),
    _ASYM + "dsa.generate_private_key": _Rule("DSA", "signature", _int_arg(0, "key_size")),
    _ASYM + "dh.generate_parameters": _Rule("DH", "key-exchange", _int_arg(1, "key_size")),
    _ASYM + "ec.generate_private_key": _Rule("ECDSA", "signature", curve_arg=(0, "curve")),
    _ASYM + "ec.derive_private_key": _Rule("ECDSA", "signature", curve_arg=(1, "curve")),
    _ASYM + "ec.ECDH": _Rule("ECDH", "key-exchange"),
    _ASYM + "ed25519.Ed25519PrivateKey.generate": _Rule("Ed25519", "signature"),
    _ASYM + "ed448.Ed448PrivateKey.generate": _Rule("Ed448", "signature"),
    _ASYM + "x25519.X25519PrivateKey.generate": _Rule("X25519", "key-exchange"),
    _ASYM + "x448.X448PrivateKey.generate": _Rule("X448", "key-exchange"),
    _ASYM + "mlkem.MLKEM768PrivateKey.generate": _Rule("ML-KEM-768", "key-exchange"),
    _ASYM + "mlkem.MLKEM1024PrivateKey.generate": _Rule("ML-KEM-1024", "key-exchange"),
    _ASYM + "mldsa.MLDSA44PrivateKey.generate": _Rule("ML-DSA-44", "signature"),
    _ASYM + "mldsa.MLDSA65PrivateKey.generate": _Rule("ML-DSA-65", "signature"),
    _ASYM + "mldsa.MLDSA87PrivateKey.generate": _Rule("ML-DSA-87", "signature"),
    _CRYPTO + "ciphers.algorithms.AES": _Rule("AES", "encryption", _key_arg(0, "key")),
    _CRYPTO + "ciphers.algorithms.AES128": _Rule("AES", "encryption", _fixed(128)),
    _CRYPTO + "ciphers.algorithms.AES256": _Rule("AES", "encryption", _fixed(256)),
    _CRYPTO + "ciphers.algorithms.TripleDES": _Rule("3DES", "encryption"),
    _CRYPTO + "ciphers.algorithms.ChaCha20": _Rule("ChaCha20", "encryption"),
    _CRYPTO + "ciphers.aead.AESGCM": _Rule("AES", "encryption", _key_arg(0, "key")),
    _CRYPTO + "ciphers.aead.AESCCM": _Rule("AES", "encryption", _key_arg(0, "key")),
    _CRYPTO + "ciphers.aead.AESGCM.generate_key": _Rule("AES", "encryption",
                                                         _int_arg(0, "bit_length")),
    _CRYPTO + "ciphers.aead.ChaCha20Poly1305": _Rule("ChaCha20-Poly1305", "encryption"),
    "ssl.create_default_context": _Rule("TLS", "protocol"),
    "ssl.SSLContext": _Rule("TLS", "protocol"),
    "hmac.new": _Rule("HMAC", "mac"),
    "paramiko.RSAKey.generate": _Rule("RSA", "signature", _int_arg(0, "bits")),
    "paramiko.DSSKey.generate": _Rule("DSA", "signature", _int_arg(0, "bits")),
    "paramiko.ECDSAKey.generate": _Rule("ECDSA", "signature", _int_arg(1, "bits")),
    "paramiko.RSAKey.from_private_key_file": _Rule("RSA", "signature"),
    "paramiko.ECDSAKey.from_private_key_file": _Rule("ECDSA", "signature"),
    "paramiko.Ed25519Key.from_private_key_file": _Rule("Ed25519", "signature"),
}
for _hash in _HASHES:
    _RULES[f"hashlib.{_hash}"] = _Rule(_hash, "digest")
    _RULES[_CRYPTO + f"hashes.{_hash.upper()}"] = _Rule(_hash, "digest")
for _pkg in ("Crypto", "Cryptodome"):
    _RULES[f"{_pkg}.PublicKey.RSA.generate"] = _Rule("RSA", "signature", _int_arg(0, "bits"))
    _RULES[f"{_pkg}.PublicKey.DSA.generate"] = _Rule("DSA", "signature", _int_arg(0, "bits"))
    _RULES[f"{_pkg}.PublicKey.ECC.generate"] = _Rule("ECDSA", "signature",
                                                     curve_arg=(99, "curve"))
    _RULES[f"{_pkg}.Cipher.AES.new"] = _Rule("AES", "encryption", _key_arg(0, "key"))
    _RULES[f"{_pkg}.Cipher.DES3.new"] = _Rule("3DES", "encryption")
    _RULES[f"{_pkg}.Cipher.DES.new"] = _Rule("DES", "encryption")
    _RULES[f"{_pkg}.Cipher.ChaCha20_Poly1305.new"] = _Rule("ChaCha20-Poly1305", "encryption")
    for _hash in ("MD5", "SHA1", "SHA256", "SHA384", "SHA512"):
        _RULES[f"{_pkg}.Hash.{_hash}.new"] = _Rule(_hash, "digest")

_TLS_CONSTANTS = {"ssl.PROTOCOL_TLSv1": "TLSv1.0", "ssl.PROTOCOL_TLSv1_1": "TLSv1.1",
                  "ssl.PROTOCOL_TLSv1_2": "TLSv1.2", "ssl.PROTOCOL_SSLv3": "SSLv3",
                  "ssl.TLSVersion.TLSv1": "TLSv1.0", "ssl.TLSVersion.TLSv1_1": "TLSv1.1"}


_MENTIONS = re.compile(r"\b(?:hashlib|hmac|ssl|cryptography|Crypto|Cryptodome|paramiko)\b")


def _imports(nodes: list[ast.AST]) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _resolve(node: ast.expr, imports: dict[str, str]) -> str | None:
    dotted = _dotted(node)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    if head not in imports:
        return None
    return imports[head] + (f".{rest}" if rest else "")


def _curve(call: ast.Call, where: tuple[int, str], imports: dict[str, str]
           ) -> tuple[str, int] | None:
    node = _arg(call, *where)
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return algorithms.curve(node.value)
    name = _resolve(node, imports) if isinstance(node, ast.expr) else None
    return algorithms.curve(name.rsplit(".", 1)[-1]) if name else None


def _canonical(rule: _Rule, call: ast.Call, imports: dict[str, str]) -> str:
    if rule.usage == "digest":
        return algorithms.hash_name(rule.algorithm) or rule.algorithm
    if rule.algorithm == "HMAC":
        node = _arg(call, 2, "digestmod")
        name = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            name = node.value
        elif isinstance(node, ast.expr):
            resolved = _resolve(node, imports)
            name = resolved.rsplit(".", 1)[-1] if resolved else None
        base = algorithms.hash_name(name) if name else None
        return f"HMAC-{base}" if base else "HMAC"
    return rule.algorithm


def python_findings(location: str, text: str) -> list[Finding]:
    """Every recognised cryptographic call in a Python module (SyntaxError propagates:
    the caller records the file as skipped)."""
    if not _MENTIONS.search(text):
        return []  # every rule resolves through an import of one of these modules
    nodes = list(ast.walk(ast.parse(text, filename=location)))
    imports = _imports(nodes)
    context = _Context(nodes)
    found: list[Finding] = []
    for node in nodes:
        if isinstance(node, ast.Attribute):
            constant = _resolve(node, imports)
            if constant in _TLS_CONSTANTS:
                found.append(Finding("source", location, _TLS_CONSTANTS[constant], "ast:python",
                                     line=node.lineno, usage="protocol",
                                     detail=f"{ast.unparse(node)}"))
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _resolve(node.func, imports)
        if name is None:
            continue
        rule = _RULES.get(name)
        if rule is None and name == "hashlib.new":
            first = _arg(node, 0, "name")
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                rule = _Rule(first.value, "digest")
        if rule is None:
            continue
        algorithm = _canonical(rule, node, imports)
        size = rule.size(node, context) if rule.size else None
        curve_name = None
        if rule.curve_arg is not None:
            found_curve = _curve(node, rule.curve_arg, imports)
            if found_curve:
                curve_name, size = found_curve
        if size is None:
            size = algorithms.default_size(algorithm)
        if algorithm == "HMAC-SHA-256" or algorithm.startswith("HMAC-"):
            size = size or algorithms.default_size(algorithm)
        found.append(Finding("source", location, algorithm, "ast:python", line=node.lineno,
                             key_size_bits=size, curve=curve_name, usage=rule.usage,
                             detail=f"{name.rsplit('.', 2)[-2]}.{name.rsplit('.', 1)[-1]}()"))
    return found
