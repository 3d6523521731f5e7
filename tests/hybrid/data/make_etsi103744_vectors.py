"""Regenerate ``etsi103744_vectors.json`` from ETSI's informative reference code.

Not a test: run by hand when the vectors must be rebuilt. It compiles the reference
``qshkex.c`` (from a checkout of etsi-forge/cyber.103744_QHKEX, never copied into
Corridor) together with our ``etsi103744_driver.c`` against the system OpenSSL, runs
CatKDF and CasKDF (HKDF flavour) on inputs derived from SHAKE-256 of the case name,
and writes what the C code printed::

    git clone https://github.com/etsi-forge/cyber.103744_QHKEX /tmp/qhkex
    python tests/hybrid/data/make_etsi103744_vectors.py /tmp/qhkex
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bytes(name: str, size: int) -> str:
    return hashlib.shake_256(name.encode()).hexdigest(size) if size else ""


# (hash, length, sizes of psk, k1, k2, ma, mb, info, label)
CAT_CASES = [
    ("sha256", 32, (0, 32, 32, 65, 1120, 0, 0)),
    ("sha256", 32, (32, 32, 32, 32, 1088, 29, 11)),
    ("sha256", 64, (32, 32, 32, 97, 1120, 16, 0)),
    ("sha256", 16, (0, 32, 32, 1, 1, 0, 32)),
    ("sha256", 100, (64, 32, 32, 800, 768, 40, 20)),
    ("sha384", 48, (0, 48, 32, 97, 1088, 0, 0)),
    ("sha384", 48, (48, 56, 32, 56, 1568, 29, 11)),
    ("sha384", 128, (32, 32, 32, 65, 1120, 0, 48)),
]
# (hash, chain length, [(length, sizes of k, ma, mb, info, label) per stage])
CAS_CASES = [
    ("sha256", 32, [(32, (32, 65, 65, 0, 0)), (32, (32, 1184, 1088, 29, 11))]),
    ("sha256", 32, [(16, (32, 32, 32, 12, 0)), (64, (32, 800, 768, 0, 20)),
                    (32, (64, 1, 1, 5, 5))]),
    ("sha384", 48, [(48, (48, 97, 97, 0, 0)), (48, (32, 1184, 1088, 29, 11))]),
    ("sha384", 48, [(32, (56, 56, 56, 8, 8)), (128, (32, 1568, 1568, 0, 0)),
                    (48, (48, 10, 10, 29, 29))]),
]


def _run(driver: Path, *args: str | int) -> str:
    result = subprocess.run([str(driver), *map(str, args)], capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


def main(checkout: Path) -> None:
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver"
        subprocess.run(["gcc", "-Wall", "-O1", f"-I{checkout}", "-o", str(driver),
                        str(HERE / "etsi103744_driver.c"), str(checkout / "qshkex.c"),
                        "-lcrypto"], check=True)
        openssl = subprocess.run(["openssl", "version"], capture_output=True,
                                 text=True).stdout.strip()
        catkdf = []
        for n, (hash_name, length, sizes) in enumerate(CAT_CASES):
            fields = dict(zip(("psk", "k1", "k2", "ma", "mb", "info", "label"), sizes,
                              strict=True))
            case = {k: _bytes(f"cat{n}-{k}", size) for k, size in fields.items()}
            key = _run(driver, "cat", hash_name, length, *case.values())
            catkdf.append({"hash": hash_name, "length": length, **case, "key": key})
        caskdf = []
        for n, (hash_name, chain_length, stages) in enumerate(CAS_CASES):
            chain = ""
            out_stages = []
            for s, (length, sizes) in enumerate(stages):
                fields = dict(zip(("k", "ma", "mb", "info", "label"), sizes, strict=True))
                case = {k: _bytes(f"cas{n}-{s}-{k}", size) for k, size in fields.items()}
                new_chain, key = _run(driver, "cas", hash_name, chain_length, length, chain,
                                      *case.values()).split()
                out_stages.append({"previous_chain": chain, **case, "length": length,
                                   "chain": new_chain, "key": key})
                chain = new_chain
            caskdf.append({"hash": hash_name, "chain_length": chain_length,
                           "stages": out_stages})
    data = {
        "provenance": (
            "Produced by tests/hybrid/data/make_etsi103744_vectors.py: ETSI TS 103 744 "
            "informative reference implementation, https://github.com/etsi-forge/"
            f"cyber.103744_QHKEX commit {commit}, qshkex.c functions hkex_concat_hkdf and "
            "hkex_cascade_hkdf, compiled with gcc together with our etsi103744_driver.c "
            f"and linked against the system libcrypto ({openssl}). Inputs are "
            "SHAKE-256(case name) truncated to the listed sizes; all values are hex."),
        "catkdf": catkdf,
        "caskdf": caskdf,
    }
    (HERE / "etsi103744_vectors.json").write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
