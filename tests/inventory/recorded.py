"""A recorded corridor for evidence tests, written directly: a PKI, KEKs, HMAC-chained
audit logs of two KMEs and of a hybrid session, and the ``corridor-up.json`` naming them,
as ``corridor up`` leaves them behind. The numbers in the logs are chosen, so the tests
know what the evidence pack must count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corridor.kms.audit import AuditLog
from corridor.kms.crypto import load_kek, write_kek_file
from corridor.kms.pki import init_pki

QBERS = (0.011, 0.012, 0.013, 0.014)  # accepted blocks; one more is discarded
STORED = 3                            # accepted blocks stored (the fourth: pools full)
STORED_BYTES = 1024
DELIVERIES = 3                        # keys_delivered entries of 2 keys each at kme-a
DECISIONS = (("established", "qkd+pqc", 0), ("degraded", "pqc", 1), ("refused", "none", 1),
             ("established", "qkd+pqc", 2))


def _log(path: Path, kek_path: Path, entries: list[tuple[str, dict[str, Any]]]) -> None:
    log = AuditLog(path, load_kek(kek_path))
    try:
        for event, fields in entries:
            log.append(event, fields)
    finally:
        log.close()


def write_recorded_corridor(workdir: Path) -> Path:
    """Write the corridor under ``workdir``; the path of its ``corridor-up.json``."""
    init_pki(workdir / "pki", ["kme-a", "kme-b"], [("sae-a", "kme-a"), ("sae-b", "kme-b")],
             operators=["operator"])
    for kme in ("kme-a", "kme-b"):
        (workdir / kme).mkdir(parents=True)
        write_kek_file(workdir / kme / "kek.hex")
    blocks = [("link_block", {"link_id": "link-ab", "block_id": i, "outcome": "accepted",
                              "reason": None, "qber": q, "secret_bits": 9000})
              for i, q in enumerate(QBERS)]
    blocks.append(("link_block", {"link_id": "link-ab", "block_id": len(QBERS),
                                  "outcome": "discarded", "reason": "qber_above_threshold",
                                  "qber": 0.12, "secret_bits": 0}))
    for kme, role in (("kme-a", "master"), ("kme-b", "slave")):
        # Accepted blocks 0..STORED-1 were stored whole, the last accepted one was dropped
        # for full pools (both halves).
        stored = [("block_ingested", {"kme_id": kme, "link_id": "link-ab", "block_id": i,
                                      "length_bytes": STORED_BYTES,
                                      "accepted_bytes": STORED_BYTES if i < STORED else 0})
                  for i in range(len(QBERS))]
        dropped = [("link_feed_dropped", {"link_id": "link-ab", "block_id": STORED,
                                          "direction": d, "dropped_bytes": STORED_BYTES // 2,
                                          "reason": "pool_full"}) for d in ("A->B", "B->A")]
        delivered = [("keys_delivered", {"kme_id": kme, "delivery_id": f"d{i}",
                                         "sae_id": "sae-a" if role == "master" else "sae-b",
                                         "role": role, "master_sae_id": "sae-a",
                                         "key_ids": [f"k{i}a", f"k{i}b"], "count": 2,
                                         "size_bits": 256}) for i in range(DELIVERIES)]
        _log(workdir / kme / "audit.jsonl", workdir / kme / "kek.hex",
             [("kme_started", {"kme_id": kme, "pid": 1}), *blocks, *stored, *dropped,
              *delivered])
    decisions = [("hybrid_decision", {"policy": "any", "inputs": inputs, "outcome": outcome,
                                      "missing": [] if outcome == "established"
                                      else ["qkd:pool_empty"], "session_id": "s1",
                                      "generation": generation, "role": "initiator",
                                      "sae_id": "sae-a", "peer_sae_id": "sae-b"})
                 for outcome, inputs, generation in DECISIONS]
    _log(workdir / "kme-a" / "hybrid-audit.jsonl", workdir / "kme-a" / "kek.hex", decisions)
    # The responder logs its own decisions (verified, not counted twice).
    _log(workdir / "kme-b" / "hybrid-audit.jsonl", workdir / "kme-b" / "kek.hex",
         [(event, {**fields, "role": "responder", "sae_id": "sae-b", "peer_sae_id": "sae-a"})
          for event, fields in decisions])
    up = {
        "name": "recorded-test", "pid": 1, "started_at": "2026-01-01T00:00:00Z",
        "ca_cert": "pki/ca.pem",
        "kmes": [{"kme_id": kme, "base_url": f"https://127.0.0.1:{port}", "site": kme,
                  "store": f"{kme}/store.sqlite", "audit_log": f"{kme}/audit.jsonl",
                  "kek_file": f"{kme}/kek.hex"}
                 for kme, port in (("kme-a", 1), ("kme-b", 2))],
        "saes": [{"sae_id": sae, "kme_id": kme, "cert": f"pki/sae/{sae}/cert.pem",
                  "key": f"pki/sae/{sae}/key.pem", "ca_cert": "pki/ca.pem"}
                 for sae, kme in (("sae-a", "kme-a"), ("sae-b", "kme-b"))],
        "operators": [{"name": "operator", "cert": "pki/operator/operator/cert.pem",
                       "key": "pki/operator/operator/key.pem", "ca_cert": "pki/ca.pem"}],
        "links": [{"link_id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "source": "simulated", "preset": "modern-snspd", "length_km": 5.0}],
        "hybrid_sessions": [{"initiator_sae_id": "sae-a", "responder_sae_id": "sae-b",
                             "policy": "any", "rekey_after_bytes": 1048576,
                             "rekey_after_s": 30.0,
                             "sides": [{"role": "initiator", "sae_id": "sae-a",
                                        "kme_id": "kme-a",
                                        "audit_log": "kme-a/hybrid-audit.jsonl",
                                        "kek_file": "kme-a/kek.hex"},
                                       {"role": "responder", "sae_id": "sae-b",
                                        "kme_id": "kme-b",
                                        "audit_log": "kme-b/hybrid-audit.jsonl",
                                        "kek_file": "kme-b/kek.hex"}]}],
        "rsu_stream": {"centre_sae_id": "sae-a", "rsu_sae_id": "sae-b",
                       "psk_rotation_s": 30.0},
    }
    path = workdir / "corridor-up.json"
    path.write_text(json.dumps(up, indent=2))
    return path
