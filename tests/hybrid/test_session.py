"""The hybrid handshake: keys agree, every policy row with an input missing, downgrades,
tampering, malformed messages, and no key material in reprs, errors or logs."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.entropy import open_qrng_source
from corridor.errors import ParameterError
from corridor.hybrid import messages
from corridor.hybrid.errors import (
    ConfirmationFailed,
    HybridSessionError,
    MalformedMessage,
    PolicyMismatch,
    PqcUnavailable,
    QkdKeyUnavailable,
    SessionAborted,
    UnknownPeer,
)
from corridor.hybrid.kdf import catkdf
from corridor.hybrid.session import (
    CONFIRMATION_KEY_BYTES,
    INFO_LABEL,
    KDF_LABEL,
    Initiator,
    Responder,
    SessionKey,
    confirmation_mac,
    derive_keys,
    session_info,
)
from corridor.randomness import RandomSource
from tests.hybrid.session_helpers import (
    FakeQkd,
    SharedPool,
    Tamper,
    count,
    flip,
    recorder,
    run_both,
)

A, B = "sae-a", "sae-b"


def _pair(policy: str = "both-required", *, fail_a: str | None = None,
          fail_b: str | None = None, suite: str = "xwing", responder_policy: str | None = None):
    pool = SharedPool()
    rec_a, sink_a = recorder()
    rec_b, sink_b = recorder()
    initiator = Initiator(A, B, policy, qkd=FakeQkd(pool, fail_a), recorder=rec_a, suite=suite)
    responder = Responder(B, {A: responder_policy or policy}, qkd=FakeQkd(pool, fail_b),
                          recorder=rec_b)
    return initiator, responder, (rec_a, sink_a), (rec_b, sink_b), pool


@pytest.mark.parametrize("suite", ["xwing", "mlkem768-x25519"])
def test_handshake_with_every_input_agrees_on_the_key(suite: str) -> None:
    initiator, responder, (rec_a, sink_a), (rec_b, sink_b), pool = _pair(suite=suite)
    ki, kr = run_both(initiator.handshake, responder.handshake)
    assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
    assert ki.key == kr.key and len(ki.key) == 32
    assert ki.record.key_id == kr.record.key_id == pool.issued[0]
    assert ki.record.inputs == kr.record.inputs == ("qkd", "pqc")
    assert ki.record.outcome == "established" and ki.record.suite == suite
    assert (ki.record.role, kr.record.role) == ("initiator", "responder")
    assert ki.record.session_id == kr.record.session_id
    for rec, sink in ((rec_a, sink_a), (rec_b, sink_b)):
        assert count(rec, "both-required", "qkd+pqc", "established") == 1
        [entry] = sink.of("hybrid_decision")
        assert entry["key_id"] == pool.issued[0] and entry["generation"] == 0
    # Two handshakes never give the same key, even between the same SAEs.
    initiator2, responder2, *_ = _pair(suite=suite)
    again, _ = run_both(initiator2.handshake, responder2.handshake)
    assert isinstance(again, SessionKey) and again.key != ki.key


# (policy, where the QKD key is missing, reason) -> outcome and inputs at both sides
@pytest.mark.parametrize("reason", ["pool_empty", "kme_unreachable", "kme_unavailable",
                                    "link_quarantined"])
@pytest.mark.parametrize(("policy", "proceeds"), [
    ("qkd-required", False), ("both-required", False), ("pqc-required", True), ("any", True)])
def test_qkd_missing_at_the_initiator_is_decided_by_the_policy(policy: str, proceeds: bool,
                                                              reason: str) -> None:
    initiator, responder, (rec_a, sink_a), (rec_b, sink_b), _ = _pair(policy, fail_a=reason)
    ki, kr = run_both(initiator.handshake, responder.handshake)
    if proceeds:
        assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
        assert ki.key == kr.key
        assert ki.record.inputs == ("pqc",) and ki.record.outcome == "degraded"
        assert ki.record.missing == (f"qkd:{reason}",) and ki.record.key_id is None
        assert kr.record.missing == (f"qkd:initiator_{reason}",)
        assert count(rec_a, policy, "pqc", "degraded") == 1
        assert count(rec_b, policy, "pqc", "degraded") == 1
    else:
        assert isinstance(ki, QkdKeyUnavailable) and ki.missing_reason == reason
        assert reason in str(ki) and policy in str(ki)
        assert isinstance(kr, SessionAborted) and kr.peer_reason == "qkd_key_unavailable"
        assert count(rec_a, policy, "none", "refused") == 1
        [entry] = sink_a.of("hybrid_decision")
        assert entry["outcome"] == "refused" and entry["missing"] == [f"qkd:{reason}"]
        # The responder saw no HELLO: it decided nothing, and says the peer aborted.
        assert sink_b.of("hybrid_decision") == []
        assert sink_b.of("hybrid_session_failed")[0]["reason"] == "peer_aborted"


@pytest.mark.parametrize(("policy", "proceeds"), [
    ("qkd-required", False), ("both-required", False), ("pqc-required", True), ("any", True)])
def test_qkd_missing_at_the_responder_is_decided_by_both_policies(policy: str,
                                                                  proceeds: bool) -> None:
    initiator, responder, (_rec_a, _), (rec_b, _), pool = _pair(policy, fail_b="pool_empty")
    ki, kr = run_both(initiator.handshake, responder.handshake)
    if proceeds:
        assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey) and ki.key == kr.key
        assert ki.record.inputs == kr.record.inputs == ("pqc",)
        assert ki.record.missing == ("qkd:responder_pool_empty",)
        assert kr.record.missing == ("qkd:pool_empty",)
        # The key the initiator fetched is not bound: the record says none was used.
        assert ki.record.key_id is None and pool.issued
    else:
        assert isinstance(kr, QkdKeyUnavailable) and kr.missing_reason == "pool_empty"
        assert isinstance(ki, SessionAborted)
        assert count(rec_b, policy, "none", "refused") == 1


@pytest.mark.parametrize(("policy", "proceeds"), [
    ("qkd-required", True), ("any", True), ("both-required", False), ("pqc-required", False)])
def test_pqc_missing_is_decided_by_the_policy(policy: str, proceeds: bool) -> None:
    initiator, responder, (rec_a, _), (rec_b, _), _ = _pair(policy, suite="none")
    ki, kr = run_both(initiator.handshake, responder.handshake)
    if proceeds:
        assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey) and ki.key == kr.key
        assert ki.record.inputs == ("qkd",) and ki.record.missing == ("pqc:pqc_disabled",)
        assert count(rec_b, policy, "qkd", "degraded") == 1
    else:
        assert isinstance(ki, PqcUnavailable)
        assert count(rec_a, policy, "none", "refused") == 1


def test_no_input_at_all_is_refused_by_every_policy() -> None:
    initiator, responder, (rec_a, _), _, _ = _pair("any", fail_a="pool_empty", suite="none")
    ki, _ = run_both(initiator.handshake, responder.handshake)
    assert isinstance(ki, QkdKeyUnavailable)
    assert count(rec_a, "any", "none", "refused") == 1


def test_a_declared_policy_other_than_the_responders_is_a_refused_downgrade() -> None:
    initiator, responder, _, (_, sink_b), _ = _pair("pqc-required",
                                                    responder_policy="qkd-required")
    ki, kr = run_both(initiator.handshake, responder.handshake)
    assert isinstance(kr, PolicyMismatch)
    assert "'pqc-required'" in str(kr) and "'qkd-required'" in str(kr)
    assert isinstance(ki, SessionAborted) and ki.peer_reason == "policy_mismatch"
    assert sink_b.of("hybrid_session_failed")[0]["reason"] == "policy_mismatch"


def test_a_hello_for_another_sae_or_from_an_unknown_one_is_refused() -> None:
    pool = SharedPool()
    stranger = Initiator("sae-x", B, "both-required", qkd=FakeQkd(pool))
    responder = Responder(B, {A: "both-required"}, qkd=FakeQkd(pool))
    _, kr = run_both(stranger.handshake, responder.handshake)
    assert isinstance(kr, UnknownPeer) and "'sae-x'" in str(kr)
    misdirected = Initiator(A, "sae-c", "both-required", qkd=FakeQkd(pool))
    _ki, kr = run_both(misdirected.handshake, responder.handshake)
    assert isinstance(kr, UnknownPeer) and "'sae-c'" in str(kr)


def test_a_tampered_ciphertext_fails_confirmation_and_leaves_no_key() -> None:
    initiator, responder, (_, sink_a), _, _ = _pair()
    # The responder's first message is REPLY; its last field ends with ct1 (X-Wing), then
    # the empty ct2 (4 length bytes): flip a bit inside ct1.
    ki, kr = run_both(initiator.handshake, responder.handshake,
                      wrap_responder=lambda t: Tamper(
                          t, lambda i, m: flip(m, 10) if i == 0 else m))
    assert isinstance(ki, ConfirmationFailed) and "responder" in str(ki)
    assert isinstance(kr, SessionAborted) and kr.peer_reason == "confirmation_failed"
    assert sink_a.of("hybrid_session_failed")[0]["reason"] == "confirmation_failed"


def test_a_tampered_hello_fails_confirmation() -> None:
    initiator, responder, *_ = _pair()
    ki, kr = run_both(initiator.handshake, responder.handshake,
                      wrap_initiator=lambda t: Tamper(t, lambda i, m: flip(m, 10) if i == 0
                                                      else m))
    # The HELLO's public key changed in transit: the responder encapsulated to another
    # key, so the initiator cannot confirm.
    assert isinstance(ki, ConfirmationFailed)
    assert isinstance(kr, SessionAborted)


def test_a_tampered_confirmation_is_refused_by_the_responder() -> None:
    initiator, responder, *_ = _pair()
    ki, kr = run_both(initiator.handshake, responder.handshake,
                      wrap_initiator=lambda t: Tamper(t, lambda i, m: flip(m, 1) if i == 1
                                                      else m))
    assert isinstance(kr, ConfirmationFailed) and "initiator" in str(kr)
    # The initiator already returned its key (its CONFIRM was the last message); the
    # responder's refusal is what an application sees on first use.
    assert isinstance(ki, SessionKey)


def _cut_ct1(message: bytes) -> bytes:
    parsed = messages.decode(message)
    assert isinstance(parsed, messages.Reply)
    return messages.Reply(parsed.session_id, parsed.generation, parsed.key_id,
                          parsed.qkd_missing, parsed.ct1[:-1], parsed.ct2).encode()


def test_a_ciphertext_of_the_wrong_length_is_named() -> None:
    initiator, responder, *_ = _pair()
    ki, kr = run_both(initiator.handshake, responder.handshake,
                      wrap_responder=lambda t: Tamper(
                          t, lambda i, m: _cut_ct1(m) if i == 0 else m))
    assert isinstance(ki, MalformedMessage)
    assert (ki.field, ki.length) == ("ct1", 1119)
    assert str(ki) == ("malformed REPLY message: REPLY.ct1 is 1119 bytes: must be 1120 bytes "
                       "for suite xwing")
    assert isinstance(kr, SessionAborted) and kr.peer_reason == "malformed_message"


def test_a_key_id_swapped_in_the_reply_is_refused() -> None:
    def swap(i: int, message: bytes) -> bytes:
        if i:
            return message
        p = messages.decode(message)
        assert isinstance(p, messages.Reply)
        return messages.Reply(p.session_id, p.generation, "0" * 36, "", p.ct1, p.ct2).encode()

    initiator, responder, *_ = _pair()
    ki, _ = run_both(initiator.handshake, responder.handshake,
                     wrap_responder=lambda t: Tamper(t, swap))
    assert isinstance(ki, MalformedMessage) and ki.field == "key_id"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_only_ever_raises_malformed_message(data: bytes) -> None:
    try:
        messages.decode(data)
    except MalformedMessage as exc:
        assert data.hex() not in str(exc) or len(data) < 2


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.text(min_size=1, max_size=20).filter(
    lambda s: s.isprintable() and not any(c.isspace() for c in s)),
    st.binary(max_size=64), st.binary(max_size=64))
def test_messages_round_trip(generation: int, sae: str, pk1: bytes, pk2: bytes) -> None:
    hello = messages.Hello(bytes(16), generation, sae, "sae-b", "any", "xwing", "",
                           "pool_empty", pk1, pk2)
    assert messages.decode(hello.encode()) == hello


def test_malformed_messages_name_field_and_length() -> None:
    hello = messages.Hello(bytes(16), 0, A, B, "any", "xwing", "id-1", "", b"p", b"")
    data = hello.encode()
    with pytest.raises(MalformedMessage, match=r"HELLO.end is 1 bytes"):
        messages.decode(data + b"\x00")
    with pytest.raises(MalformedMessage, match=r"HELLO.pk2 is missing"):
        messages.decode(data[:-4])
    with pytest.raises(MalformedMessage, match=r"message.version"):
        messages.decode(b"\x02" + data[1:])
    both = messages.Hello(bytes(16), 0, A, B, "any", "xwing", "id-1", "pool_empty", b"", b"")
    with pytest.raises(MalformedMessage, match="exactly one of key_id and qkd_missing"):
        messages.decode(both.encode())
    with pytest.raises(MalformedMessage, match=r"HELLO.session_id is 3 bytes"):
        messages.decode(bytes((1, 1)) + struct.pack(">I", 3) + b"abc")


def test_info_binds_label_ids_key_id_and_policy_length_prefixed_in_order() -> None:
    info = session_info("sae-a", "sae-b", "kid", "any")
    expected = b"".join(len(p).to_bytes(4, "big") + p
                        for p in (INFO_LABEL, b"sae-a", b"sae-b", b"kid", b"any"))
    assert info == expected
    # Length prefixes keep shifted boundaries apart.
    assert session_info("sae-a", "bsae-b", "", "any") != session_info("sae-ab", "sae-b", "",
                                                                      "any")


def test_key_schedule_puts_the_qkd_key_in_psk_and_refuses_no_inputs() -> None:
    args = {"ma": b"ma", "mb": b"mb", "info": b"info", "session_key_bytes": 32}
    both = derive_keys(pqc_secret=b"p" * 32, qkd_key=b"q" * 32, **args)
    expected = catkdf(psk=b"q" * 32, k1=b"p" * 32, k2=b"", ma=b"ma", mb=b"mb", info=b"info",
                      label=KDF_LABEL, length=32 + CONFIRMATION_KEY_BYTES)
    assert (bytes(both[0]), bytes(both[1])) == (expected[:32], expected[32:])
    # A missing input is an empty slot; which one is missing is told apart by info (the
    # key_ID is empty without QKD) and MA/MB (suite none without PQC), not by the IKM.
    pqc_only = derive_keys(pqc_secret=b"p" * 32, qkd_key=b"", **args)
    assert bytes(pqc_only[0]) == catkdf(psk=b"", k1=b"p" * 32, k2=b"", ma=b"ma", mb=b"mb",
                                        info=b"info", label=KDF_LABEL,
                                        length=32 + CONFIRMATION_KEY_BYTES)[:32]
    with pytest.raises(HybridSessionError):
        derive_keys(pqc_secret=b"", qkd_key=b"", **args)


def test_bad_settings_are_named() -> None:
    pool = SharedPool()
    with pytest.raises(ParameterError, match=r"^policy = 'sometimes': one of qkd-required"):
        Initiator(A, B, "sometimes", qkd=FakeQkd(pool))
    with pytest.raises(ParameterError, match=r"^suite = 'rsa'"):
        Initiator(A, B, "any", qkd=FakeQkd(pool), suite="rsa")
    with pytest.raises(ParameterError, match=r"^session_key_bytes = 8"):
        Initiator(A, B, "any", qkd=FakeQkd(pool), session_key_bytes=8)
    with pytest.raises(ParameterError, match=r"^policy\[sae-a\] = 'x'"):
        Responder(B, {A: "x"}, qkd=FakeQkd(pool))


def test_no_key_material_in_reprs_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    initiator, responder, _, _, pool = _pair()
    ki, kr = run_both(initiator.handshake, responder.handshake)
    assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
    secrets = [ki.key.hex(), ki.key[:8].hex()]
    # A failing handshake (tampered) logs and raises too: check its words as well.
    initiator2, responder2, _, _, pool2 = _pair()
    bad, _ = run_both(initiator2.handshake, responder2.handshake,
                      wrap_responder=lambda t: Tamper(
                          t, lambda i, m: flip(m, 10) if i == 0 else m))
    qkd_keys = [k.hex() for k in list(pool.keys.values()) + list(pool2.keys.values())]
    shown = " ".join([repr(ki), repr(kr), repr(ki.record), str(ki.record.as_dict()),
                      repr(initiator), repr(responder), str(bad), repr(bad), caplog.text])
    for secret in secrets + qkd_keys:
        assert secret not in shown
    assert "session_id=" in repr(ki) and "generation=0" in repr(ki)


def test_a_wiped_key_cannot_be_used() -> None:
    initiator, responder, *_ = _pair()
    ki, kr = run_both(initiator.handshake, responder.handshake)
    assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey)
    with ki:
        assert len(ki.key) == 32
    assert ki.wiped and "wiped" in repr(ki)
    with pytest.raises(HybridSessionError, match="wiped"):
        _ = ki.key


@pytest.mark.parametrize("suite", ["xwing", "mlkem768-x25519"])
def test_kem_seeds_and_session_ids_come_from_the_given_random_source(
        suite: str, tmp_path: Path) -> None:
    # A QRNG-fed source (here a file standing in for the device): the handshake draws
    # its KEM seeds, ephemeral secrets and session ID through it.
    device = tmp_path / "qrng"
    device.write_bytes(os.urandom(1 << 16))
    rng_a = open_qrng_source(str(device))
    rng_b = open_qrng_source(str(device))
    pool = SharedPool()
    initiator = Initiator(A, B, "both-required", qkd=FakeQkd(pool), suite=suite, rng=rng_a)
    responder = Responder(B, {A: "both-required"}, qkd=FakeQkd(pool), rng=rng_b)
    before_a, before_b = (rng.counts()["bytes_qrng_mixed"] for rng in (rng_a, rng_b))
    ki, kr = run_both(initiator.handshake, responder.handshake)
    assert isinstance(ki, SessionKey) and isinstance(kr, SessionKey) and ki.key == kr.key
    # Initiator: session ID + KEM seed; responder: the encapsulation's ephemeral secret.
    assert rng_a.counts()["bytes_qrng_mixed"] - before_a >= 16 + 32
    assert rng_b.counts()["bytes_qrng_mixed"] - before_b >= 32
    assert rng_a.counts()["bytes_os_only"] == rng_b.counts()["bytes_os_only"] == 0


def test_a_reproducible_random_source_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"^rng = .*a cryptographic RandomSource"):
        Initiator(A, B, "any", qkd=FakeQkd(SharedPool()), rng=RandomSource.seeded(1))


def test_confirmation_mac_is_the_documented_hmac() -> None:
    # docs/hybrid-session.md: HMAC-SHA256(key, lp(role) || lp(SHA-256(MA)) || lp(SHA-256(MB))).
    key, ma, mb = b"k" * 32, b"hello" * 300, b"reply" * 250

    def lp(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    for role in ("initiator", "responder"):
        data = lp(role.encode()) + lp(hashlib.sha256(ma).digest()) \
            + lp(hashlib.sha256(mb).digest())
        assert confirmation_mac(bytearray(key), role, ma, mb) \
            == hmac.new(key, data, hashlib.sha256).digest()
    assert confirmation_mac(key, "initiator", ma, mb) != confirmation_mac(key, "responder",
                                                                         ma, mb)
