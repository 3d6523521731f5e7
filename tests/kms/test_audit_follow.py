"""The audit trail followed as it grows: each appended entry verified as the full check
does, a break latched where it happens, the tail kept; and the operator's audit route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corridor.kms.audit import AuditLog, verify_audit_log
from corridor.kms.audit_follow import AuditFollower
from tests.kms.mtls_harness import KME_A, OPERATOR, two_kme_deployment

KEK = bytes(range(32))


def _seeded(path: Path) -> AuditFollower:
    """A follower seeded by the start-up verification, as a KME does it."""
    follower = AuditFollower(path, KEK, keep=5)
    assert verify_audit_log(path, KEK, on_entry=follower.seed).ok
    return follower


def test_seeded_follower_reads_only_what_was_appended_since(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        for i in range(3):
            log.emit("kme_started", kme_id="kme-a", n=i)
        follower = _seeded(path)
        assert follower.verified_seq == 3 and follower.poll() == 0
        for i in range(4):
            log.emit("keys_delivered", kme_id="kme-a", count=1, key_ids=[f"id-{i}"])
        assert follower.poll() == 4
    assert follower.status() == {"ok": True, "verified_seq": 7, "broken_at_seq": None,
                                 "reason": None}
    # keep=5: the tail holds the last five; after_seq pages forward from a position.
    assert [e["seq"] for e in follower.tail(limit=100)] == [3, 4, 5, 6, 7]
    assert [e["seq"] for e in follower.tail(after_seq=4, limit=2)] == [5, 6]
    assert "KEK" not in repr(follower) and str(KEK) not in repr(follower)


def test_an_edited_appended_entry_latches_a_break(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        log.emit("kme_started", kme_id="kme-a")
        follower = _seeded(path)
        log.emit("keys_delivered", kme_id="kme-a", count=1)
    lines = path.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["fields"]["count"] = 2  # same length, other value: only the MAC can tell
    lines[1] = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    path.write_bytes(b"".join(lines))
    assert follower.poll() == 0
    status = follower.status()
    assert status["ok"] is False and status["broken_at_seq"] == 2
    assert "MAC" in status["reason"]
    path.write_bytes(b"".join(lines) + lines[0])  # more lines change nothing
    assert follower.poll() == 0 and follower.status()["broken_at_seq"] == 2


def test_a_log_cut_below_what_was_verified_is_a_break(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        for _ in range(3):
            log.emit("kme_started", kme_id="kme-a")
    follower = _seeded(path)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"\n") + 1])
    follower.poll()
    assert not follower.ok and "removed from the end" in str(follower.reason)


def test_an_incomplete_last_line_waits_for_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        log.emit("kme_started", kme_id="kme-a")
    follower = _seeded(path)
    with AuditLog(path, KEK) as log:
        log.emit("kme_stopped", kme_id="kme-a")
    whole = path.read_bytes()
    path.write_bytes(whole[:-10])
    assert follower.poll() == 0 and follower.ok
    path.write_bytes(whole)
    assert follower.poll() == 1 and follower.verified_seq == 2


def test_the_audit_route_is_for_operators_and_checks_its_query(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        for i in range(5):
            log.emit("keys_delivered", kme_id=KME_A, count=1, key_ids=[f"id-{i}"])
    follower = AuditFollower(path, KEK)
    with two_kme_deployment(tmp_path / "kmes", audit_followers={KME_A: follower}) as dep:
        with dep.raw(OPERATOR, kme_id=KME_A, role="operator") as op:
            answer = op.get("/operator/v1/audit", params={"after_seq": 2, "limit": 2})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["kme_id"] == KME_A and body["chain"]["ok"] is True
            assert body["chain"]["verified_seq"] == 5
            assert [e["seq"] for e in body["entries"]] == [3, 4]
            assert set(body["entries"][0]) == {"seq", "time", "event", "fields"}
            for query in ({"limit": 0}, {"limit": 1001}, {"after_seq": -1},
                          {"after_seq": "x"}):
                refused = op.get("/operator/v1/audit", params=query)
                assert refused.status_code == 400, (query, refused.text)
            assert "/operator/v1/audit" in op.get("/openapi.json").json()["paths"]
        with dep.raw("sae-a", kme_id=KME_A) as sae:
            assert sae.get("/operator/v1/audit").status_code == 403
        with dep.raw("kme-b", kme_id=KME_A, role="kme") as kme:
            assert kme.get("/operator/v1/audit").status_code == 403


@pytest.mark.parametrize("keep", [1, 3])
def test_the_tail_never_exceeds_keep(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, KEK) as log:
        for _ in range(6):
            log.emit("kme_started", kme_id="kme-a")
    follower = AuditFollower(path, KEK, keep=keep)
    assert follower.poll() == 6
    assert [e["seq"] for e in follower.tail(limit=10)] == list(range(7 - keep, 7))
