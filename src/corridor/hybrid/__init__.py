"""Hybrid keys: QKD key + ML-KEM + X25519 -> session keys (ARCHITECTURE.md, layer ``hybrid``).

Modules, one job each:

- :mod:`corridor.hybrid.policy`: which inputs a session must have, and what happens
  when the QKD key is missing (``qkd-required``, ``pqc-required``, ``both-required``,
  ``any``); every decision is recorded in the audit trail and the metrics.
- :mod:`corridor.hybrid.xwing`: the X-Wing KEM (ML-KEM-768 + X25519,
  draft-connolly-cfrg-xwing-kem), keygen from a seed, encapsulation, decapsulation.
- :mod:`corridor.hybrid.kdf`: ETSI TS 103 744 CatKDF and CasKDF with HKDF-SHA256/384,
  byte for byte as the TS's reference code (docs/hybrid.md).
"""
