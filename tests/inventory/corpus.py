"""The ground-truth corpus of the inventory: artefacts generated on the spot, with the
findings each must yield listed next to it.

:func:`build_corpus` writes small projects in Python, Java, C and Go, configuration
files of every supported dialect, certificates, keys and keystores of each type and
size, OpenSSH keys and ``known_hosts``, and a corridor file, and returns the expected
findings ``(category, path, line or field, algorithm, key size)``. TLS endpoints are
added by the tests that start the servers (tests/inventory/tls_servers.py).

``python -m tests.inventory.corpus`` (with ``PYTHONPATH=src:.``) builds the corpus in a
temporary directory with the TLS servers, scans it and prints precision and recall per
category: the figures of docs/inventory.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from corridor.inventory.algorithms import default_size
from corridor.inventory.findings import Finding

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "src" / "corridor" / "kms" / \
    "default_corridor.toml"
# RFC 3526 group 14 (2048-bit MODP): DH parameters without minutes of prime generation.
RFC3526_GROUP14_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


@dataclass(frozen=True)
class Expected:
    """One finding the scan must report."""

    category: str
    location: str
    where: int | str  # line number, or field
    algorithm: str
    key_size_bits: int | None

    def matches(self, finding: Finding) -> bool:
        """Whether ``finding`` is this one (place, algorithm and size)."""
        place = finding.line if isinstance(self.where, int) else finding.field
        return (finding.location == self.location and place == self.where
                and finding.algorithm == self.algorithm
                and finding.key_size_bits == self.key_size_bits)


def line_of(text: str, marker: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``marker``."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        if marker in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"marker {marker!r} not in corpus text")


def _cert(key: object, name: str, days: int = 365, issuer_key: object | None = None
          ) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    signer = issuer_key or key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .sign(signer, algorithm))  # type: ignore[arg-type]


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_pem(key: object, fmt: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, fmt,  # type: ignore[attr-defined]
                             serialization.NoEncryption())


class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.expected: list[Expected] = []

    def write(self, relative: str, data: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path

    def expect(self, category: str, path: Path, where: int | str, algorithm: str,
               size: int | None) -> None:
        self.expected.append(Expected(category, str(path), where, algorithm, size))


def _certificates(c: _Corpus) -> None:
    for name, key, algorithm, size in (
            ("rsa2048", rsa.generate_private_key(65537, 2048), "RSA", 2048),
            ("rsa1024", rsa.generate_private_key(65537, 1024), "RSA", 1024),
            ("p256", ec.generate_private_key(ec.SECP256R1()), "ECDSA", 256),
            ("p384", ec.generate_private_key(ec.SECP384R1()), "ECDSA", 384),
            ("ed25519", ed25519.Ed25519PrivateKey.generate(), "Ed25519", 256)):
        path = c.write(f"pki/{name}.pem", _pem(_cert(key, name)))
        c.expect("certificate", path, 1, algorithm, size)
    der_key = rsa.generate_private_key(65537, 4096)
    path = c.write("pki/rsa4096.der",
                   _cert(der_key, "der").public_bytes(serialization.Encoding.DER))
    c.expect("certificate", path, "der", "RSA", 4096)
    leaf_key, ca_key = ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(
        65537, 3072)
    chain = _pem(_cert(leaf_key, "leaf", issuer_key=ca_key)) + _pem(_cert(ca_key, "ca"))
    path = c.write("pki/chain.crt", chain)
    c.expect("certificate", path, 1, "ECDSA", 256)
    c.expect("certificate", path, line_of(chain.decode(), "BEGIN CERTIFICATE", 2), "RSA", 3072)


def _keys(c: _Corpus) -> None:
    pkcs8, legacy = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.\
        TraditionalOpenSSL
    for name, key, fmt, algorithm, size in (
            ("rsa3072.key", rsa.generate_private_key(65537, 3072), pkcs8, "RSA", 3072),
            ("p521.key", ec.generate_private_key(ec.SECP521R1()), legacy, "ECDSA", 521),
            ("ed25519.key", ed25519.Ed25519PrivateKey.generate(), pkcs8, "Ed25519", 256),
            ("x25519.key", x25519.X25519PrivateKey.generate(), pkcs8, "X25519", 256),
            ("dsa2048.key", dsa.generate_private_key(2048), pkcs8, "DSA", 2048)):
        path = c.write(f"keys/{name}", _private_pem(key, fmt))
        c.expect("key", path, 1, algorithm, size)
    public = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    c.expect("key", c.write("keys/service.pub.pem", public), 1, "RSA", 2048)
    with warnings.catch_warnings():  # FFDH is deprecated: the corpus needs it anyway
        warnings.simplefilter("ignore")
        group = dh.DHParameterNumbers(RFC3526_GROUP14_P, 2).parameters()
    params = group.parameter_bytes(
        serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3)
    c.expect("key", c.write("keys/dhparam.pem", params), 1, "DH", 2048)
    # PKCS#12 keystore: key, its certificate and a CA certificate.
    key, ca = rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())
    blob = pkcs12.serialize_key_and_certificates(
        b"server", key, _cert(key, "server"), [_cert(ca, "ca")],
        serialization.BestAvailableEncryption(b"changeit"))
    path = c.write("keystores/server.p12", blob)
    c.expect("keystore", path, "pkcs12[key]", "RSA", 2048)
    c.expect("keystore", path, "pkcs12[cert]", "RSA", 2048)
    c.expect("keystore", path, "pkcs12[ca0]", "ECDSA", 384)


def _ssh(c: _Corpus) -> None:
    keys = {"ed25519": (ed25519.Ed25519PrivateKey.generate(), "Ed25519", 256),
            "rsa": (rsa.generate_private_key(65537, 2048), "RSA", 2048),
            "ecdsa": (ec.generate_private_key(ec.SECP256R1()), "ECDSA", 256)}
    lines = []
    for name, (key, algorithm, size) in keys.items():
        path = c.write(f"ssh/id_{name}", _private_pem(key, serialization.PrivateFormat.OpenSSH))
        c.expect("ssh", path, 1, algorithm, size)
        public = key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        lines.append((name, algorithm, size, public))
    text = "# hosts of the depot\n" + "".join(
        f"depot-{name}.example,10.0.0.{i} {public}\n" for i, (name, _, _, public)
        in enumerate(lines, 1))
    path = c.write("ssh/known_hosts", text)
    for name, algorithm, size, _ in lines:
        c.expect("ssh", path, line_of(text, f"depot-{name}."), algorithm, size)
    auth = f'from="10.0.0.0/8" {lines[1][3]} ops@depot\n'
    c.expect("ssh", c.write("ssh/authorized_keys", auth), 1, "RSA", 2048)


def _configs(c: _Corpus) -> None:
    sshd = ("HostKey /etc/ssh/ssh_host_rsa_key\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
            "KexAlgorithms mlkem768x25519-sha256,curve25519-sha256,"
            "diffie-hellman-group14-sha256\n"
            "Ciphers aes256-gcm@openssh.com,aes128-ctr\nMACs hmac-sha2-256-etm@openssh.com\n"
            "HostKeyAlgorithms ssh-ed25519,rsa-sha2-512\n")
    path = c.write("etc/ssh/sshd_config", sshd)
    for marker, algorithm, size in (
            ("ssh_host_rsa_key", "RSA", None), ("ssh_host_ed25519", "Ed25519", 256),
            ("KexAlgorithms", "mlkem768x25519", default_size("mlkem768x25519")),
            ("KexAlgorithms", "X25519", 256), ("KexAlgorithms", "DH", 2048),
            ("Ciphers", "AES", 256), ("Ciphers", "AES", 128), ("MACs", "HMAC-SHA-256", 256),
            ("HostKeyAlgorithms", "Ed25519", 256), ("HostKeyAlgorithms", "RSA", None)):
        c.expect("config", path, line_of(sshd, marker), algorithm, size)
    ppk = "ab" * 32
    swan = ("connections {\n  corridor {\n    version = 2\n"
            "    proposals = aes256-sha256-ecp256,aes128-sha1-modp2048\n"
            "    ppk_id = corridor-3f1c2d4e-0000-4000-8000-000000000001\n"
            "    ppk_required = yes\n    children {\n      net {\n"
            "        esp_proposals = aes256gcm16-x25519-ke1_mlkem768\n      }\n    }\n"
            "  }\n}\nsecrets {\n  ppk-corridor {\n"
            f"    secret = 0x{ppk}\n"
            "    id = corridor-3f1c2d4e-0000-4000-8000-000000000001\n  }\n}\n")
    path = c.write("etc/swanctl/swanctl.conf", swan)
    for marker, algorithm, size in (
            ("proposals = aes256", "AES", 256), ("proposals = aes256", "HMAC-SHA-256", 256),
            ("proposals = aes256", "ECDH", 256), ("proposals = aes256", "AES", 128),
            ("proposals = aes256", "HMAC-SHA-1", 160), ("proposals = aes256", "DH", 2048),
            ("ppk_id", "PPK-QKD", 256), ("ppk_required", "PPK", None),
            ("esp_proposals", "AES", 256), ("esp_proposals", "X25519", 256),
            ("esp_proposals", "ML-KEM-768", default_size("ML-KEM-768")),
            ("secret = 0x", "PPK", 256)):
        c.expect("config", path, line_of(swan, marker), algorithm, size)
    nginx = ("server {\n    listen 443 ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n"
             "    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384;\n"
             "    ssl_ecdh_curve X25519MLKEM768:X25519:prime256v1;\n}\n")
    path = c.write("etc/nginx/nginx.conf", nginx)
    for marker, algorithm, size in (
            ("ssl_protocols", "TLSv1.2", None), ("ssl_ciphers", "ECDH", None),
            ("ssl_ciphers", "ECDSA", None), ("ssl_ciphers", "AES", 128),
            ("ssl_ciphers", "HMAC-SHA-256", 256), ("ssl_ciphers", "RSA", None),
            ("ssl_ciphers", "AES", 256), ("ssl_ciphers", "HMAC-SHA-384", 384),
            ("ssl_ecdh_curve", "X25519MLKEM768", default_size("X25519MLKEM768")),
            ("ssl_ecdh_curve", "X25519", 256), ("ssl_ecdh_curve", "ECDH", 256)):
        c.expect("config", path, line_of(nginx, marker), algorithm, size)
    apache = ("<VirtualHost *:443>\nSSLEngine on\nSSLProtocol all -SSLv3 -TLSv1 -TLSv1.1\n"
              "SSLCipherSuite ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-SHA\n"
              "SSLOpenSSLConfCmd Curves X25519:secp384r1\n</VirtualHost>\n")
    path = c.write("etc/apache2/ssl.conf", apache)
    for marker, algorithm, size in (
            ("SSLProtocol", "TLSv1.2", None), ("SSLCipherSuite", "ECDH", None),
            ("SSLCipherSuite", "RSA", None), ("SSLCipherSuite", "AES", 128),
            ("SSLCipherSuite", "HMAC-SHA-256", 256), ("SSLCipherSuite", "DH", None),
            ("SSLCipherSuite", "AES", 256), ("SSLCipherSuite", "HMAC-SHA-1", 160),
            ("Curves", "X25519", 256), ("Curves", "ECDH", 384)):
        c.expect("config", path, line_of(apache, marker), algorithm, size)
    openssl = ("openssl_conf = default_conf\n[ req ]\ndefault_bits = 2048\ndefault_md = sha256\n"
               "[ system_default_sect ]\nMinProtocol = TLSv1.2\n"
               "Groups = X25519MLKEM768:X25519\nCipherString = DEFAULT@SECLEVEL=2\n")
    path = c.write("etc/ssl/openssl.cnf", openssl)
    for marker, algorithm, size in (
            ("default_bits", "RSA", 2048), ("default_md", "SHA-256", 256),
            ("MinProtocol", "TLSv1.2", None),
            ("Groups", "X25519MLKEM768", default_size("X25519MLKEM768")),
            ("Groups", "X25519", 256)):
        c.expect("config", path, line_of(openssl, marker), algorithm, size)
    wpa = ("ap_scan=0\nnetwork={\n    key_mgmt=NONE\n    eapol_flags=0\n    macsec_policy=1\n"
           "    macsec_csindex=1\n    mka_cak=" + "0f" * 32 + "\n    mka_ckn=" + "1e" * 32
           + "\n}\n")
    path = c.write("etc/wpa_supplicant/wpa_supplicant.conf", wpa)
    c.expect("config", path, line_of(wpa, "macsec_csindex"), "AES", 256)
    c.expect("config", path, line_of(wpa, "mka_cak"), "AES", 256)
    b64 = base64.b64encode(bytes(range(32))).decode()
    wg = (f"[Interface]\nPrivateKey = {b64}\nListenPort = 51820\n\n[Peer]\n"
          f"PublicKey = {b64}\nPresharedKey = {b64}\nAllowedIPs = 10.0.0.2/32\n")
    path = c.write("etc/wireguard/wg0.conf", wg)
    for marker, algorithm, size in (
            ("[Interface]", "ChaCha20-Poly1305", 256), ("PrivateKey", "X25519", 256),
            ("PublicKey", "X25519", 256), ("PresharedKey", "PSK", 256)):
        c.expect("config", path, line_of(wg, marker), algorithm, size)


PYTHON_SOURCE = '''"""A telematics backend that still uses classical cryptography."""
import hashlib
import hmac
import os
import ssl

import paramiko
from Crypto.Cipher import AES as CryptoAES
from Crypto.PublicKey import RSA as CryptoRSA
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

signing_key = rsa.generate_private_key(public_exponent=65537, key_size=3072)  # RSA-3072
ecu_key = ec.generate_private_key(ec.SECP384R1())  # P-384
exchange = x25519.X25519PrivateKey.generate()  # X25519
data_key = os.urandom(16)
cipher = Cipher(algorithms.AES(data_key), modes.CTR(bytes(16)))  # AES-128
aead_key = AESGCM.generate_key(bit_length=256)
aead = AESGCM(aead_key)  # AES-256
fingerprint = hashlib.sha1(b"vin").hexdigest()  # SHA-1
legacy_digest = hashlib.new("md5")  # MD5
context = ssl.create_default_context()  # TLS
old_protocol = ssl.PROTOCOL_TLSv1  # TLS 1.0
dome_key = CryptoRSA.generate(2048)  # PyCryptodome RSA-2048
dome_box = CryptoAES.new(b"k" * 32, CryptoAES.MODE_GCM)  # PyCryptodome AES-256
ssh_key = paramiko.RSAKey.generate(bits=4096)  # paramiko RSA-4096
tag = hmac.new(b"k" * 32, b"message", hashlib.sha256)  # HMAC-SHA-256
'''

JAVA_SOURCE = '''package depot;

import java.security.*;
import java.security.spec.ECGenParameterSpec;
import javax.crypto.*;
import javax.crypto.spec.SecretKeySpec;

public class DepotCrypto {
    void run() throws Exception {
        KeyPairGenerator kpg = KeyPairGenerator.getInstance("RSA");
        kpg.initialize(2048);
        KeyPairGenerator ecg = KeyPairGenerator.getInstance("EC");
        ecg.initialize(new ECGenParameterSpec("secp256r1"));
        KeyGenerator aesGen = KeyGenerator.getInstance("AES");
        aesGen.init(256);
        byte[] raw = new byte[16];
        SecretKeySpec spec = new SecretKeySpec(raw, "AES");
        Cipher c = Cipher.getInstance("AES/GCM/NoPadding");
        MessageDigest md = MessageDigest.getInstance("SHA-1");
        KeyAgreement ka = KeyAgreement.getInstance("X25519");
        Mac mac = Mac.getInstance("HmacSHA256");
        RSAKeyGenerationParameters bc = new RSAKeyGenerationParameters(e, random, 3072, 80);
        SHA256Digest digest = new SHA256Digest();
        // Cipher.getInstance("DES") in a comment is not a use
    }
}
'''

C_SOURCE = '''#include <openssl/evp.h>
#include <mbedtls/rsa.h>

/* RSA_generate_key_ex(rsa, 512, e, NULL) in a comment is not a use */
void keys(RSA *rsa, BIGNUM *e, SSL_CTX *sctx) {
    RSA_generate_key_ex(rsa, 2048, e, NULL);
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_X25519, NULL);
    EVP_PKEY *big = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)4096);
    const EVP_CIPHER *cipher = EVP_aes_128_gcm();
    const EVP_MD *md = EVP_sha1();
    SSL_CTX_set1_groups_list(sctx, "X25519MLKEM768:X25519");
}

void mbed(mbedtls_rsa_context *rsa2, mbedtls_ecp_group *grp, mbedtls_aes_context *aes,
          const unsigned char *key) {
    mbedtls_rsa_gen_key(rsa2, f_rng, p_rng, 3072, 65537);
    mbedtls_ecp_group_load(grp, MBEDTLS_ECP_DP_SECP384R1);
    mbedtls_aes_setkey_enc(aes, key, 256);
}
'''

GO_SOURCE = '''package main

import (
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
)

func main() {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	key := make([]byte, 32)
	block, _ := aes.NewCipher(key)
	sum := sha1.Sum([]byte("vin"))
	cfg := &tls.Config{CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}
	dk, _ := mlkem.GenerateKey768()
	_, _, _, _, _, _ = rsaKey, ecKey, block, sum, cfg, dk
}
'''


def _sources(c: _Corpus) -> None:
    path = c.write("src/python/backend.py", PYTHON_SOURCE)
    for marker, algorithm, size in (
            ("# RSA-3072", "RSA", 3072), ("# P-384", "ECDSA", 384), ("# X25519", "X25519", 256),
            ("# AES-128", "AES", 128), ("# AES-256", "AES", 256),
            ("aead_key = AESGCM.generate_key", "AES", 256), ("# SHA-1", "SHA-1", 160),
            ("# MD5", "MD5", 128), ("# TLS\n", "TLS", None), ("# TLS 1.0", "TLSv1.0", None),
            ("# PyCryptodome RSA-2048", "RSA", 2048), ("# PyCryptodome AES-256", "AES", 256),
            ("# paramiko RSA-4096", "RSA", 4096), ("# HMAC-SHA-256", "HMAC-SHA-256", 256)):
        if marker.endswith("\n"):
            number = line_of(PYTHON_SOURCE, "create_default_context")
        else:
            number = line_of(PYTHON_SOURCE, marker)
        c.expect("source", path, number, algorithm, size)
    path = c.write("src/java/DepotCrypto.java", JAVA_SOURCE)
    for marker, algorithm, size in (
            ('getInstance("RSA")', "RSA", 2048), ('getInstance("EC")', "ECDSA", 256),
            ('KeyGenerator.getInstance("AES")', "AES", 256),
            ('Cipher c = Cipher.getInstance', "AES", 128),
            ("MessageDigest", "SHA-1", 160), ("KeyAgreement", "X25519", 256),
            ("Mac.getInstance", "HMAC-SHA-256", 256),
            ("new RSAKeyGenerationParameters", "RSA", 3072),
            ("new SHA256Digest", "SHA-256", 256)):
        c.expect("source", path, line_of(JAVA_SOURCE, marker), algorithm, size)
    path = c.write("src/c/keys.c", C_SOURCE)
    for marker, algorithm, size in (
            ("RSA_generate_key_ex(rsa, 2048", "RSA", 2048),
            ("EC_KEY_new_by_curve_name", "ECDSA", 256),
            ("EVP_PKEY_CTX_new_id", "X25519", 256), ("EVP_PKEY_Q_keygen", "RSA", 4096),
            ("EVP_aes_128_gcm", "AES", 128), ("EVP_sha1", "SHA-1", 160),
            ("SSL_CTX_set1_groups_list", "X25519MLKEM768", default_size("X25519MLKEM768")),
            ("mbedtls_rsa_gen_key", "RSA", 3072), ("mbedtls_ecp_group_load", "ECDH", 384),
            ("mbedtls_aes_setkey_enc", "AES", 256)):
        c.expect("source", path, line_of(C_SOURCE, marker), algorithm, size)
    path = c.write("src/go/main.go", GO_SOURCE)
    for marker, algorithm, size in (
            ("rsa.GenerateKey", "RSA", 2048), ("ecdsa.GenerateKey", "ECDSA", 384),
            ("aes.NewCipher", "AES", 256), ("sha1.Sum", "SHA-1", 160),
            ("tls.X25519MLKEM768", "X25519MLKEM768", default_size("X25519MLKEM768")),
            ("mlkem.GenerateKey768", "ML-KEM-768", default_size("ML-KEM-768"))):
        c.expect("source", path, line_of(GO_SOURCE, marker), algorithm, size)


def _corridor(c: _Corpus) -> None:
    text = DEFAULT_TOML.read_text()
    path = c.write("corridor/corridor.toml", text)
    for kme in ("kme-a", "kme-b"):
        number = line_of(text, f'id = "{kme}"')
        for algorithm, size in (("X25519MLKEM768", default_size("X25519MLKEM768")),
                                ("X25519", 256), ("ECDSA", 256), ("AES", 256),
                                ("HMAC-SHA-256", 256)):
            c.expect("corridor", path, number, algorithm, size)
    number = line_of(text, 'id = "link-ab"')
    c.expect("corridor", path, number, "QKD-BB84", 256)
    c.expect("corridor", path, number, "Wegman-Carter-Poly1305", 256)
    number = line_of(text, "master_sae_id")
    c.expect("corridor", path, number, "QKD-key", 256)
    c.expect("corridor", path, number, "X-Wing", default_size("X-Wing"))


def build_corpus(root: Path) -> list[Expected]:
    """Write the corpus under ``root``; the findings it must yield."""
    corpus = _Corpus(root)
    for part in (_certificates, _keys, _ssh, _configs, _sources, _corridor):
        part(corpus)
    return corpus.expected


def score(expected: list[Expected], findings: list[Finding]
          ) -> dict[str, dict[str, float | int]]:
    """Precision and recall per category: a finding is a true positive when it matches
    an expected one (place, algorithm and key size)."""
    out: dict[str, dict[str, float | int]] = {}
    for category in sorted({e.category for e in expected} | {f.category for f in findings}):
        want = [e for e in expected if e.category == category]
        got = [f for f in findings if f.category == category]
        found = sum(any(e.matches(f) for f in got) for e in want)
        correct = sum(any(e.matches(f) for e in want) for f in got)
        out[category] = {"expected": len(want), "reported": len(got), "found": found,
                         "recall": found / len(want) if want else 1.0,
                         "precision": correct / len(got) if got else 1.0,
                         "sizes_filled": sum(f.key_size_bits is not None for f in got)}
    return out


def _main() -> None:  # pragma: no cover - the figure of docs/inventory.md
    """Score a scan of the corpus (the table of docs/inventory.md); with ``--keep DIR``
    write the corpus's files into DIR and keep them, for the worked example there."""
    import sys
    import tempfile

    from corridor.inventory.scan import ScanOptions, scan
    from tests.inventory.tls_servers import running_servers

    if sys.argv[1:2] == ["--keep"] and len(sys.argv) == 3:
        kept = Path(sys.argv[2])
        findings = build_corpus(kept)
        print(f"{kept}: the corpus's files, {len(findings)} expected findings "
              "(its TLS servers run only while scoring)")
        return

    with tempfile.TemporaryDirectory() as tmp, running_servers(Path(tmp) / "tls") as servers:
        expected = build_corpus(Path(tmp) / "corpus")
        targets = [str(Path(tmp) / "corpus")] + [s.target for s in servers]
        for server in servers:
            expected += server.expected
        result = scan(targets, ScanOptions(timeout_s=2.0))
        print(f"{'category':<12} {'expected':>8} {'reported':>8} {'recall':>7} "
              f"{'precision':>9} {'sizes':>6}")
        for category, row in score(expected, result.findings).items():
            print(f"{category:<12} {row['expected']:>8} {row['reported']:>8} "
                  f"{row['recall']:>7.1%} {row['precision']:>9.1%} {row['sizes_filled']:>6}")
        print(f"skipped: {[(s.location, s.reason) for s in result.skipped]}")


if __name__ == "__main__":  # pragma: no cover
    _main()
