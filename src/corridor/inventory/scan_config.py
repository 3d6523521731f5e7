"""Cryptography named in configuration files: OpenSSH ``sshd_config``/``ssh_config``,
strongSwan ``swanctl.conf`` (proposals, PPKs), nginx and Apache TLS directives, OpenSSL
configuration, wpa_supplicant MACsec and WireGuard.

:func:`config_findings` decides from the file name and a few marker directives which
dialects a file speaks and reads it line by line: every finding carries its line. Key
material in a file (a WireGuard ``PrivateKey``, an MKA CAK, a PPK secret) is measured,
never copied.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable

from corridor.inventory import algorithms
from corridor.inventory.algorithms import Named
from corridor.inventory.findings import Finding

Line = tuple[int, str]


def _finding(location: str, line: int, named: Named, method: str, usage: str,
             detail: str) -> Finding:
    return Finding("config", location, named.algorithm, method, line=line,
                   key_size_bits=named.key_size_bits, curve=named.curve, usage=usage,
                   detail=detail)


def _lines(text: str, comment: str = "#") -> Iterable[Line]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(comment, 1)[0].strip() if comment else raw.strip()
        if line:
            yield number, line


# ---------------------------------------------------------------- OpenSSH
_SSH_KEX_DH = {"1": 1024, "14": 2048, "15": 3072, "16": 4096, "17": 6144, "18": 8192}


def ssh_algorithm(name: str) -> tuple[Named, str] | None:
    """An OpenSSH algorithm name -> (catalogue entry, usage)."""
    name = name.lower().removesuffix("@openssh.com").removesuffix("@libssh.org")
    name = name.removesuffix("-cert-v01")
    if name.startswith("sntrup761x25519"):
        return Named("sntrup761x25519", algorithms.default_size("sntrup761x25519")), \
            "key-exchange"
    if name.startswith("mlkem768x25519"):
        return Named("mlkem768x25519", algorithms.default_size("mlkem768x25519")), \
            "key-exchange"
    if name.startswith("curve25519"):
        return Named("X25519", 256), "key-exchange"
    if name.startswith("curve448"):
        return Named("X448", 448), "key-exchange"
    match = re.fullmatch(r"ecdh-sha2-nistp(\d+)", name)
    if match:
        return Named("ECDH", int(match.group(1)), f"P-{match.group(1)}"), "key-exchange"
    match = re.fullmatch(r"diffie-hellman-group(\d+)-sha\d+", name)
    if match and match.group(1) in _SSH_KEX_DH:
        return Named("DH", _SSH_KEX_DH[match.group(1)]), "key-exchange"
    if name.startswith("diffie-hellman-group-exchange"):
        return Named("DH", None), "key-exchange"
    if name in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"):
        return Named("RSA", None), "signature"
    if name == "ssh-dss":
        return Named("DSA", 1024), "signature"  # OpenSSH DSA keys are always 1024 bits
    if name in ("ssh-ed25519", "sk-ssh-ed25519"):
        return Named("Ed25519", 256), "signature"
    match = re.fullmatch(r"(?:sk-)?ecdsa-sha2-nistp(\d+)", name)
    if match:
        return Named("ECDSA", int(match.group(1)), f"P-{match.group(1)}"), "signature"
    match = re.fullmatch(r"aes(\d+)-(?:ctr|cbc|gcm)", name)
    if match:
        return Named("AES", int(match.group(1))), "encryption"
    if name == "chacha20-poly1305":
        return Named("ChaCha20-Poly1305", 256), "encryption"
    if name == "3des-cbc":
        return Named("3DES", 168), "encryption"
    match = re.fullmatch(r"hmac-(sha1|sha2-256|sha2-512|md5)(?:-96)?(?:-etm)?", name)
    if match:
        base = algorithms.hash_name(match.group(1))
        assert base is not None
        return Named(f"HMAC-{base}", algorithms.default_size(base)), "mac"
    return None


_SSH_LISTS = {"kexalgorithms", "hostkeyalgorithms", "pubkeyacceptedalgorithms",
              "pubkeyacceptedkeytypes", "ciphers", "macs", "casignaturealgorithms",
              "hostbasedacceptedalgorithms"}


def _ssh(location: str, text: str) -> list[Finding]:
    found = []
    for number, line in _lines(text):
        parts = line.replace("=", " ", 1).split(None, 1)
        if len(parts) != 2:
            continue
        keyword, value = parts[0].lower(), parts[1].strip().strip('"')
        if keyword in _SSH_LISTS:
            for name in value.lstrip("+-^").split(","):
                resolved = ssh_algorithm(name.strip())
                if resolved:
                    found.append(_finding(location, number, resolved[0], "config:ssh",
                                          resolved[1], f"{parts[0]} {name.strip()}"))
        elif keyword == "hostkey":
            stem = value.rsplit("/", 1)[-1]
            for token, named in (("ed25519", Named("Ed25519", 256)),
                                 ("ecdsa", Named("ECDSA", None)), ("dsa", Named("DSA", 1024)),
                                 ("rsa", Named("RSA", None))):
                if f"_{token}_" in f"_{stem}_" or stem.endswith(f"{token}_key"):
                    found.append(_finding(location, number, named, "config:ssh", "signature",
                                          f"HostKey {value} (size: scan the key file)"))
                    break
    return found


# ---------------------------------------------------------------- strongSwan
def ike_token(token: str) -> tuple[Named, str] | None:
    """One strongSwan proposal keyword -> (catalogue entry, usage)."""
    token = token.lower().strip()
    group = algorithms.group(token)
    if group is not None and not token.startswith(("sha", "aes", "prf")):
        return group, "key-exchange"
    match = re.fullmatch(r"aes(128|192|256)(?:gcm|ccm|ctr|gmac)?(?:8|12|16|64|96|128)?", token)
    if match:
        return Named("AES", int(match.group(1))), "encryption"
    if token == "aes":
        return Named("AES", 128), "encryption"
    if token.startswith("chacha20poly1305"):
        return Named("ChaCha20-Poly1305", 256), "encryption"
    if token == "3des":
        return Named("3DES", 168), "encryption"
    match = re.fullmatch(r"(?:prf)?(sha1|sha256|sha384|sha512|md5)(?:_\d+)?", token)
    if match:
        base = algorithms.hash_name(match.group(1))
        assert base is not None
        return Named(f"HMAC-{base}", algorithms.default_size(base)), \
            "prf" if token.startswith("prf") else "mac"
    return None


def _swanctl(location: str, text: str) -> list[Finding]:
    found = []
    section: list[str] = []
    ppk_secret_open = False
    for number, line in _lines(text):
        if line.endswith("{"):
            name = line[:-1].strip()
            section.append(name)
            ppk_secret_open = len(section) >= 2 and section[-2] == "secrets" \
                and name.startswith("ppk")
            continue
        if line == "}":
            if section:
                section.pop()
            ppk_secret_open = False
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key in ("proposals", "esp_proposals", "ah_proposals"):
            for proposal in value.split(","):
                seen = set()
                for token in proposal.strip().split("-"):
                    resolved = ike_token(token)
                    if resolved and resolved[0] not in seen:
                        seen.add(resolved[0])
                        found.append(_finding(location, number, resolved[0], "config:swanctl",
                                              resolved[1], f"{key} {proposal.strip()}"))
        elif key == "ppk_required" and value.lower() in ("yes", "true", "1"):
            found.append(Finding("config", location, "PPK", "config:swanctl", line=number,
                                 usage="key-exchange",
                                 detail="ppk_required = yes (RFC 8784 post-quantum PSK)"))
        elif key == "ppk_id":
            qkd = value.strip('"').startswith("corridor-")
            found.append(Finding("config", location, "PPK-QKD" if qkd else "PPK",
                                 "config:swanctl", line=number, key_size_bits=256 if qkd
                                 else None, usage="key-exchange",
                                 detail=f"ppk_id {value}" + (" (Corridor QKD key)" if qkd
                                                             else "")))
        elif key == "secret" and ppk_secret_open:
            size = _secret_bits(value.strip('"'))
            found.append(Finding("config", location, "PPK", "config:swanctl", line=number,
                                 key_size_bits=size, usage="key-exchange",
                                 detail="PPK secret (size only)"))
    return found


def _secret_bits(value: str) -> int | None:
    try:
        if value.lower().startswith("0x"):
            return len(bytes.fromhex(value[2:])) * 8
        if value.lower().startswith("0s"):
            return len(base64.b64decode(value[2:], validate=True)) * 8
    except (ValueError, binascii.Error):
        return None
    return len(value.encode()) * 8


# ---------------------------------------------------------------- TLS servers
_CIPHER_PARTS: dict[str, tuple[Named, str]] = {
    "ECDHE": (Named("ECDH", None), "key-exchange"), "EECDH": (Named("ECDH", None),
                                                              "key-exchange"),
    "DHE": (Named("DH", None), "key-exchange"), "EDH": (Named("DH", None), "key-exchange"),
    "RSA": (Named("RSA", None), "signature"), "ECDSA": (Named("ECDSA", None), "signature"),
    "AES128": (Named("AES", 128), "encryption"), "AES256": (Named("AES", 256), "encryption"),
    "CHACHA20": (Named("ChaCha20-Poly1305", 256), "encryption"),
    "3DES": (Named("3DES", 168), "encryption"), "CBC3": (Named("3DES", 168), "encryption"),
    "RC4": (Named("RC4", 128), "encryption"),
    "SHA": (Named("HMAC-SHA-1", 160), "mac"), "SHA256": (Named("HMAC-SHA-256", 256), "mac"),
    "SHA384": (Named("HMAC-SHA-384", 384), "mac"), "MD5": (Named("HMAC-MD5", 128), "mac"),
}


def cipher_suites(value: str) -> list[tuple[Named, str, str]]:
    """Algorithms of an OpenSSL cipher list or TLS 1.3 suite list, each once:
    ``(entry, usage, suite)``."""
    out: list[tuple[Named, str, str]] = []
    seen: set[Named] = set()
    for suite in re.split(r"[:,\s]+", value.strip().strip("'\"")):
        if not suite or suite[0] in "!-+@" or ("-" not in suite and "_" not in suite):
            continue
        parts = suite.upper().removeprefix("TLS_").replace("_", "-").split("-")
        if parts[:2] == ["AES", "128"] or parts[:2] == ["AES", "256"]:
            parts = [parts[0] + parts[1], *parts[2:]]
        for part in parts:
            if part in _CIPHER_PARTS:
                named, usage = _CIPHER_PARTS[part]
                if suite.upper().startswith("TLS_") and part.startswith("SHA"):
                    continue  # a TLS 1.3 suite's hash is its HKDF's, not an HMAC suite
                if named not in seen:
                    seen.add(named)
                    out.append((named, usage, suite))
    return out


def _groups(location: str, number: int, value: str, method: str, directive: str
            ) -> list[Finding]:
    found = []
    for name in re.split(r"[:,\s]+", value.strip().strip("'\";")):
        named = algorithms.group(name.lstrip("?*-")) if name else None
        if named:
            found.append(_finding(location, number, named, method, "key-exchange",
                                  f"{directive} {name}"))
    return found


_TLS_VERSIONS = ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _protocol_findings(location: str, number: int, versions: Iterable[str], method: str,
                       directive: str) -> list[Finding]:
    """TLS versions enabled below 1.3 (no post-quantum key exchange exists for them)."""
    found = []
    for version in versions:
        if version in ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2"):
            name = "TLSv1.0" if version == "TLSv1" else version
            found.append(Finding("config", location, name, method, line=number,
                                 usage="protocol", detail=f"{directive} enables {version}"))
    return found


def _nginx(location: str, text: str) -> list[Finding]:
    found = []
    for number, line in _lines(text):
        parts = line.rstrip(";").split(None, 1)
        if len(parts) != 2:
            continue
        directive, value = parts
        if directive == "ssl_protocols":
            found += _protocol_findings(location, number, value.split(), "config:nginx",
                                        directive)
        elif directive == "ssl_ciphers":
            found += [_finding(location, number, named, "config:nginx", usage,
                               f"ssl_ciphers {suite}")
                      for named, usage, suite in cipher_suites(value)]
        elif directive == "ssl_ecdh_curve":
            found += _groups(location, number, value, "config:nginx", directive)
        elif directive == "ssl_conf_command":
            sub = value.split(None, 1)
            if len(sub) == 2 and sub[0].lower() in ("groups", "curves"):
                found += _groups(location, number, sub[1], "config:nginx", directive)
    return found


def _apache(location: str, text: str) -> list[Finding]:
    found = []
    for number, line in _lines(text):
        parts = line.split(None, 1)
        if len(parts) != 2:
            continue
        directive, value = parts
        if directive.lower() == "sslprotocol":
            enabled: list[str] = []
            for token in value.split():
                name = token.lstrip("+-")
                names = list(_TLS_VERSIONS[1:]) if name.lower() == "all" else [name]
                for version in names:
                    if token.startswith("-"):
                        enabled = [v for v in enabled if v != version]
                    elif version not in enabled:
                        enabled.append(version)
            found += _protocol_findings(location, number, enabled, "config:apache", directive)
        elif directive.lower() in ("sslciphersuite", "sslproxyciphersuite"):
            value = value.split(None, 1)[1] if value.split()[0] in ("SSL", "TLSv1.3") \
                and " " in value else value
            found += [_finding(location, number, named, "config:apache", usage,
                               f"{directive} {suite}")
                      for named, usage, suite in cipher_suites(value)]
        elif directive.lower() == "sslopensslconfcmd":
            sub = value.split(None, 1)
            if len(sub) == 2 and sub[0].lower() in ("groups", "curves"):
                found += _groups(location, number, sub[1], "config:apache", directive)
    return found


def _openssl(location: str, text: str) -> list[Finding]:
    found = []
    for number, line in _lines(text):
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep:
            continue
        low = key.lower()
        if low in ("groups", "curves"):
            found += _groups(location, number, value, "config:openssl", key)
        elif low in ("cipherstring", "ciphersuites"):
            found += [_finding(location, number, named, "config:openssl", usage,
                               f"{key} {suite}")
                      for named, usage, suite in cipher_suites(value)]
        elif low == "minprotocol" and value in _TLS_VERSIONS:
            found += _protocol_findings(location, number,
                                        _TLS_VERSIONS[_TLS_VERSIONS.index(value):],
                                        "config:openssl", key)
        elif low == "default_bits" and value.isdigit():
            found.append(Finding("config", location, "RSA", "config:openssl", line=number,
                                 key_size_bits=int(value), usage="signature",
                                 detail=f"default_bits {value} (openssl req keys)"))
        elif low == "default_md":
            base = algorithms.hash_name(value)
            if base:
                found.append(_finding(location, number,
                                      Named(base, algorithms.default_size(base)),
                                      "config:openssl", "digest", f"default_md {value}"))
    return found


# ---------------------------------------------------------------- MACsec, WireGuard
def _wpa_supplicant(location: str, text: str) -> list[Finding]:
    found = []
    csindex_seen = any(line.startswith("macsec_csindex") for _, line in _lines(text))
    for number, line in _lines(text):
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep:
            continue
        if key == "mka_cak":
            size = len(value) * 4 if re.fullmatch(r"[0-9a-fA-F]+", value) else None
            found.append(Finding("config", location, "AES", "config:wpa_supplicant",
                                 line=number, key_size_bits=size, usage="key-derivation",
                                 detail="MKA CAK, pre-shared (size only; AES-CMAC KDF)"))
        elif key == "macsec_csindex":
            size = 256 if value == "1" else 128
            found.append(Finding("config", location, "AES", "config:wpa_supplicant",
                                 line=number, key_size_bits=size, usage="encryption",
                                 detail=f"MACsec cipher suite GCM-AES-{size}"))
        elif key == "macsec_policy" and not csindex_seen:
            found.append(Finding("config", location, "AES", "config:wpa_supplicant",
                                 line=number, key_size_bits=128, usage="encryption",
                                 detail="MACsec cipher suite GCM-AES-128 (macsec_csindex "
                                 "unset: the default)"))
    return found


def _b64_bits(value: str) -> int | None:
    try:
        return len(base64.b64decode(value, validate=True)) * 8
    except (ValueError, binascii.Error):
        return None


def _wireguard(location: str, text: str) -> list[Finding]:
    found = []
    for number, line in _lines(text):
        if line == "[Interface]":
            found.append(Finding("config", location, "ChaCha20-Poly1305",
                                 "config:wireguard", line=number, key_size_bits=256,
                                 usage="encryption", detail="WireGuard transport (Noise IK)"))
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep:
            continue
        if key in ("PrivateKey", "PublicKey"):
            found.append(Finding("config", location, "X25519", "config:wireguard",
                                 line=number, key_size_bits=_b64_bits(value) or 256,
                                 usage="key-exchange", detail=f"WireGuard {key} (size only)"))
        elif key == "PresharedKey":
            found.append(Finding("config", location, "PSK", "config:wireguard", line=number,
                                 key_size_bits=_b64_bits(value), usage="key-exchange",
                                 detail="WireGuard PresharedKey (size only)"))
    return found


# ---------------------------------------------------------------- dispatch
_DIALECTS: tuple[tuple[str, Callable[[str, str], list[Finding]], re.Pattern[str]], ...] = (
    ("ssh", _ssh, re.compile(r"^\s*(KexAlgorithms|HostKeyAlgorithms|HostKey|"
                             r"PubkeyAcceptedAlgorithms|PubkeyAcceptedKeyTypes|MACs)\s",
                             re.M | re.I)),
    ("swanctl", _swanctl, re.compile(r"^\s*(esp_|ah_)?proposals\s*=|^\s*ppk_(required|id)\s*=",
                                     re.M)),
    ("nginx", _nginx, re.compile(r"^\s*ssl_(protocols|ciphers|ecdh_curve|conf_command)\s",
                                 re.M)),
    ("apache", _apache, re.compile(r"^\s*SSL(Protocol|CipherSuite|OpenSSLConfCmd)\s", re.M)),
    ("openssl", _openssl, re.compile(r"^\s*(Groups|Curves|CipherString|Ciphersuites|"
                                     r"MinProtocol|default_bits|default_md)\s*=", re.M)),
    ("wpa_supplicant", _wpa_supplicant, re.compile(r"^\s*(macsec_policy|mka_cak)\s*=", re.M)),
    ("wireguard", _wireguard, re.compile(r"^\s*\[Interface\]", re.M)),
)


def dialects(text: str) -> list[str]:
    """The configuration dialects whose directives appear in ``text``."""
    return [name for name, _, marker in _DIALECTS if marker.search(text)]


def config_findings(location: str, text: str) -> list[Finding]:
    """Findings of every dialect ``text`` speaks (none when it speaks none)."""
    found: list[Finding] = []
    for _, parse, marker in _DIALECTS:
        if marker.search(text):
            found += parse(location, text)
    return found
