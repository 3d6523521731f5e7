"""Hybrid keys: QKD key + ML-KEM + X25519 -> session keys (ARCHITECTURE.md, layer ``hybrid``).

Modules, one job each:

- :mod:`corridor.hybrid.policy`: which inputs a session must have, and what happens
  when the QKD key is missing (``qkd-required``, ``pqc-required``, ``both-required``,
  ``any``); every decision is recorded in the audit trail and the metrics.
"""
