"""End to end: a hybrid session between two SAEs whose QKD key comes from two real KMEs
over mutual TLS (ETSI 014 enc_keys at the master's KME, dec_keys at the slave's)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from corridor.hybrid.errors import QkdKeyInvalid, QkdKeyUnavailable
from corridor.hybrid.qkd import KmeQkdKeys, QkdKeyMissing
from corridor.hybrid.session import Initiator, Responder, SessionKey
from corridor.kms.client import SaeClient
from corridor.kms.interface import DeliveredKey
from tests.hybrid.session_helpers import count, recorder, run_both
from tests.kms.mtls_harness import two_kme_deployment

A, B = "sae-a", "sae-b"


def test_session_over_two_real_kmes(tmp_path: Path) -> None:
    with two_kme_deployment(tmp_path) as deployment:
        rec_a, sink_a = recorder()
        rec_b, _ = recorder()
        with deployment.client(A) as client_a, deployment.client(B) as client_b:
            initiator = Initiator(A, B, "both-required", qkd=KmeQkdKeys(client_a),
                                  recorder=rec_a)
            responder = Responder(B, {A: "both-required"}, qkd=KmeQkdKeys(client_b),
                                  recorder=rec_b)
            # Nothing distilled yet: the pool is empty, both-required refuses.
            ki, _ = run_both(initiator.handshake, responder.handshake)
            assert isinstance(ki, QkdKeyUnavailable) and ki.missing_reason == "pool_empty"
            assert count(rec_a, "both-required", "none", "refused") == 1
            deployment.ingest(4096)
            ki, kr = run_both(initiator.handshake, responder.handshake)
            assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
            assert ki.key == kr.key and ki.record.inputs == ("qkd", "pqc")
            assert ki.record.key_id is not None
            # The key was delivered to both sides: the slave cannot fetch it again.
            with pytest.raises(Exception, match="not found"):
                client_b.get_key_with_id(A, ki.record.key_id)
            assert sink_a.of("hybrid_decision")[-1]["key_id"] == ki.record.key_id


def test_pool_empty_and_kme_down_under_pqc_required(tmp_path: Path) -> None:
    with two_kme_deployment(tmp_path) as deployment:
        rec_a, _ = recorder()
        with deployment.client(A) as client_a, deployment.client(B) as client_b:
            responder = Responder(B, {A: "pqc-required"}, qkd=KmeQkdKeys(client_b))
            initiator = Initiator(A, B, "pqc-required", qkd=KmeQkdKeys(client_a),
                                  recorder=rec_a)
            ki, kr = run_both(initiator.handshake, responder.handshake)
            assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
            assert ki.record.missing == ("qkd:pool_empty",) and ki.key == kr.key
        # A KME that does not answer at all (nothing listens on the port).
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead_url = f"https://127.0.0.1:{probe.getsockname()[1]}"
        paths = deployment.pki.saes[A]
        with SaeClient(dead_url, paths.cert, paths.key, deployment.pki.ca_cert,
                       timeout_s=2.0) as dead, deployment.client(B) as client_b:
            initiator = Initiator(A, B, "pqc-required", qkd=KmeQkdKeys(dead), recorder=rec_a)
            responder = Responder(B, {A: "pqc-required"}, qkd=KmeQkdKeys(client_b))
            ki, kr = run_both(initiator.handshake, responder.handshake)
            assert isinstance(ki, SessionKey)
            assert ki.record.missing == ("qkd:kme_unreachable",)
            assert count(rec_a, "pqc-required", "pqc", "degraded") == 2


def test_batched_keys_and_prefetched_ids(tmp_path: Path) -> None:
    with two_kme_deployment(tmp_path) as deployment:
        deployment.ingest(8192)
        with deployment.client(A) as client_a, deployment.client(B) as client_b:
            keys_a = KmeQkdKeys(client_a, batch_size=8)
            keys_b = KmeQkdKeys(client_b)
            first = keys_a.new_key(B)
            assert keys_a.held_keys == 7
            ahead = [keys_a.new_key(B) for _ in range(7)]
            keys_b.prefetch_ids(A, [first.key_id] + [k.key_id for k in ahead])
            assert keys_b.held_keys == 8
            assert keys_b.key_by_id(A, first.key_id).key == first.key
            keys_a.close()
            keys_b.close()
            assert keys_a.held_keys == keys_b.held_keys == 0
            with pytest.raises(QkdKeyMissing) as excinfo:
                keys_b.key_by_id(A, first.key_id)
            assert excinfo.value.reason == "key_not_found"


class _ShortKeyClient:
    """A client whose KME hands out 128-bit keys when asked for 256."""

    kme_url = "https://kme.invalid"

    def get_key(self, slave: str, number: int = 1, size: int | None = None,
                **_: object) -> list[DeliveredKey]:
        return [DeliveredKey("00000000-0000-4000-8000-000000000000", bytes(16))]


def test_a_key_of_the_wrong_size_is_a_fault_not_a_fallback() -> None:
    keys = KmeQkdKeys(_ShortKeyClient(), key_size_bits=256)  # type: ignore[arg-type]
    with pytest.raises(QkdKeyInvalid, match="is 128 bits, expected 256"):
        keys.new_key(B)
