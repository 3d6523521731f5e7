"""The whole pipeline on the real simulator, Cascade, Toeplitz hashing and authentication."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

import numpy as np
import pytest

import corridor.distill.pipeline as pipeline
from corridor.distill.auth import WIRE_KIND
from corridor.distill.block import BlockState
from corridor.distill.channel import ChannelEndpoint, ChannelStats, in_process_pair
from corridor.distill.pipeline import (
    STAGES,
    DistillConfig,
    LinkRunReport,
    PartyOutcome,
    RandomStreams,
    distill_link,
    distill_party,
    make_processor,
    pre_shared_key,
    run_party,
)
from corridor.distill.transport import connect, listen
from corridor.distill.verification import TAG_BITS
from corridor.errors import ParameterError
from corridor.link.attacks import InterceptResend, PhotonNumberSplitting
from corridor.link.finite_key import DecoyCounts, finite_key_bounds, finite_key_length
from corridor.link.params import LinkParameters, preset

# Standard-basis-choice variant of the modern preset at 5 km: a 1e7-pulse block holds
# a positive finite key (Lim et al. 2014) while keeping the suite quick. Without dead
# time: the preset's 50 ns would cut the clicks, and the key, of such a block tenfold.
PARAMS = preset("modern-snspd").override({
    "dead_time_s": 0.0, "z_basis_probability": 0.5, "signal_probability": 0.5,
    "decoy_probability": 0.3, "vacuum_probability": 0.2}).with_length(5.0)
BLOCK = 10_000_000
CONFIG = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0)


def with_misalignment(e_d: float) -> LinkParameters:
    return PARAMS.override({"misalignment_error": e_d})


def assert_parties_agree(report: LinkRunReport) -> None:
    """Same blocks, same fates, same key bytes on both sides."""
    assert report.alice is not None and report.bob is not None
    assert [b.block_id for b in report.alice.blocks] == [b.block_id for b in report.bob.blocks]
    for a, b in zip(report.alice.blocks, report.bob.blocks, strict=True):
        assert a.state is b.state
        assert a.discard_reason == b.discard_reason
    assert [k.key_bytes() for k in report.alice.keys] == [k.key_bytes() for k in report.bob.keys]


@pytest.fixture(scope="module")
def honest_report() -> LinkRunReport:
    return distill_link(with_misalignment(0.01), 2 * BLOCK, 11, block_pulses=BLOCK,
                        config=CONFIG)


@pytest.mark.parametrize(("seed", "misalignment"), [
    (1, 0.005), (2, 0.01), (3, 0.02), (4, 0.03), (5, 0.045), (6, 0.06), (7, 0.08)])
def test_keys_are_identical_over_seeds_and_qbers(seed: int, misalignment: float) -> None:
    report = distill_link(with_misalignment(misalignment), BLOCK, seed, block_pulses=BLOCK,
                          config=CONFIG)
    assert report.run_abort is None
    assert_parties_agree(report)
    row = report.block_rows()[0]
    # The test-basis QBER tracks e_d (plus dark counts, which add < 0.1 % here).
    assert row["test_qber"] == pytest.approx(misalignment, abs=0.01)
    if misalignment <= 0.02:
        assert row["qber_corrected"] == pytest.approx(misalignment, abs=0.005)
    # With both directions of Cascade counted, a 1e7-pulse block at 5 km distils about
    # 100 kbit at e_d = 1 % but about 42 kbit at 2 %, less than the ~67 kbit that
    # authenticating its messages consumes: that block is discarded, for that reason.
    if misalignment <= 0.01:
        assert len(report.alice.keys) == 1  # type: ignore[union-attr]
    elif misalignment <= 0.02:
        assert row["discard_reason"] in (None, "output_used_for_authentication")
    for key in report.alice.keys:  # type: ignore[union-attr]
        assert key.length_bits > 0 and key.length_bits % 8 == 0


def test_output_never_exceeds_the_finite_key_bound(honest_report: LinkRunReport) -> None:
    assert honest_report.alice is not None
    delivered = 0
    for block in honest_report.alice.blocks:
        meta = block.meta
        if block.state is not BlockState.AUTHENTICATED:
            continue
        delivered += 1
        counts = DecoyCounts(tuple(meta["key_basis_detections"]), (0, 0, 0),
                             tuple(meta["test_basis_detections"]),
                             tuple(meta["test_basis_errors"]))
        bounds = finite_key_bounds(counts, PARAMS.source.intensities,
                                   PARAMS.source.class_probabilities, CONFIG.eps_sec)
        segments = -(-meta["sifted_bits"] // CONFIG.verification_segment_bits)
        assert meta["verification_segments"] == segments
        assert meta["disclosed_bits"] == meta["reconciliation_disclosed_bits"] + TAG_BITS * segments
        bound = finite_key_length(bounds, meta["disclosed_bits"], CONFIG.eps_sec,
                                  CONFIG.eps_cor) - meta["verification_removed_bits"]
        assert meta["finite_key_bits"] == min(bound, meta["sifted_bits"])
        assert block.length_bits + meta["auth_replenished_bits"] + meta["dropped_bits"] \
            == meta["finite_key_bits"]
        assert block.length_bits < meta["finite_key_bits"]
    assert delivered == 2


def test_blocks_carry_their_history(honest_report: LinkRunReport) -> None:
    for outcome in (honest_report.alice, honest_report.bob):
        assert outcome is not None
        for block in outcome.keys:
            assert block.state is BlockState.AUTHENTICATED
            assert block.link_id == CONFIG.link_id
            assert [name for name, _ in block.history] == [
                "SIFTED", "ESTIMATED", "CORRECTED", "VERIFIED", "AMPLIFIED", "AUTHENTICATED"]
            for key in ("sifted_bits", "qber_estimate", "qber_corrected", "disclosed_bits",
                        "reconciliation_efficiency", "eps_sec", "eps_cor",
                        "auth_bits_consumed", "finite_key_bits", "secret_bits"):
                assert block.meta[key] is not None, key
            assert set(block.timings_s) == set(STAGES)
            # Both directions count; each alone lies between the Shannon limit and 1.25.
            meta = block.meta
            assert meta["reconciliation_alice_bits"] == meta["reconciliation_bob_bits"]
            assert meta["reconciliation_alice_bits"] + meta["reconciliation_bob_bits"] \
                == meta["reconciliation_disclosed_bits"]
            assert 2.0 < meta["reconciliation_efficiency"] < 2.5
            assert "bits" not in repr(block).replace("length_bits", "")


def test_authentication_pools_stay_in_step(honest_report: LinkRunReport) -> None:
    alice, bob = honest_report.alice, honest_report.bob
    assert alice is not None and bob is not None
    assert alice.auth_bits_consumed == bob.auth_bits_consumed > 0
    assert alice.auth_bits_replenished == bob.auth_bits_replenished
    assert alice.auth_pool_bits_left == bob.auth_pool_bits_left
    # Every accepted message could have been forged with probability <= 8 ceil(L/16)/2^106.
    assert 0.0 < alice.auth_forgery_bound < 1e-20
    totals = honest_report.totals()
    rows = honest_report.block_rows()
    assert totals["secret_bits"] == sum(r["secret_bits"] for r in rows)
    assert sum(r["auth_replenished_bits"] for r in rows) == alice.auth_bits_replenished
    # Each block pays for its own authentication (rounded up to whole bytes).
    for row in rows:
        assert 0 <= row["auth_replenished_bits"] - row["auth_bits_consumed"] < 8


def test_residual_error_after_reconciliation_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.reconcile_bob

    def leave_one_error(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.bits = result.bits.copy()
        result.bits[len(result.bits) // 2] ^= 1
        return result

    monkeypatch.setattr(pipeline, "reconcile_bob", leave_one_error)
    # One verification segment for the whole key: the error costs the block.
    config = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0,
                                    verification_segment_bits=1 << 20)
    report = distill_link(with_misalignment(0.01), 2 * BLOCK, 12, block_pulses=BLOCK,
                          config=config)
    assert report.run_abort is None  # a verification failure discards the block, not the run
    assert_parties_agree(report)
    assert report.alice is not None and report.bob is not None
    assert report.alice.keys == [] and report.bob.keys == []
    assert [b.discard_reason for b in report.bob.blocks] == ["verification_failed"] * 2
    assert all(b.bits.size == 0 for b in report.bob.blocks)


def test_a_residual_error_costs_only_its_segment(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pipeline.reconcile_bob

    def leave_one_error(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.bits = result.bits.copy()
        result.bits[100] ^= 1  # in the first segment
        return result

    monkeypatch.setattr(pipeline, "reconcile_bob", leave_one_error)
    segment = 1 << 14
    config = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0,
                                    verification_segment_bits=segment)
    report = distill_link(with_misalignment(0.01), BLOCK, 11, block_pulses=BLOCK,
                          config=config)
    assert_parties_agree(report)
    assert report.alice is not None
    # Segments of 2^14 bits: the block (~100 kbit of finite key) still pays for its
    # authentication (~67 kbit) after losing one.
    (block,) = report.alice.keys
    meta = block.meta
    segments = -(-meta["sifted_bits"] // segment)
    assert meta["verification_failed_segments"] == 1
    assert meta["verification_removed_bits"] == segment
    assert meta["disclosed_bits"] == meta["reconciliation_disclosed_bits"] + TAG_BITS * segments
    counts = DecoyCounts(tuple(meta["key_basis_detections"]), (0, 0, 0),
                         tuple(meta["test_basis_detections"]), tuple(meta["test_basis_errors"]))
    bounds = finite_key_bounds(counts, PARAMS.source.intensities,
                               PARAMS.source.class_probabilities, CONFIG.eps_sec)
    whole = finite_key_length(bounds, meta["disclosed_bits"], CONFIG.eps_sec, CONFIG.eps_cor)
    # The dropped segment's bits come off the privacy-amplification output.
    assert meta["finite_key_bits"] == whole - segment


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_intercept_resend_ends_in_abort(fraction: float) -> None:
    report = distill_link(PARAMS, BLOCK, 13, block_pulses=BLOCK, config=CONFIG,
                          attack=InterceptResend(fraction))
    assert_parties_agree(report)
    assert report.alice is not None and report.alice.keys == []
    assert [b.discard_reason for b in report.alice.blocks] == ["qber_above_threshold"]


def test_pns_collapses_the_single_photon_bound_and_aborts() -> None:
    # At 30 km Eve can match the signal gain by forwarding multi-photon pulses (and a
    # few single photons): the regime where PNS would go unnoticed without decoys.
    params = PARAMS.with_length(30.0)
    assert PhotonNumberSplitting().describe(params)["signal_gain_matched"]
    honest = distill_link(params, BLOCK, 14, block_pulses=BLOCK, config=CONFIG)
    attacked = distill_link(params, BLOCK, 14, block_pulses=BLOCK, config=CONFIG,
                            attack=PhotonNumberSplitting())
    assert_parties_agree(attacked)
    assert attacked.alice is not None and honest.alice is not None
    honest_row, attacked_row = honest.block_rows()[0], attacked.block_rows()[0]
    # Same signal QBER (PNS does not disturb what it forwards) ...
    assert attacked_row["test_qber"] == pytest.approx(honest_row["test_qber"], abs=0.005)
    # ... but the decoy bound on single photons collapses, so no key at all.
    assert honest_row["single_photon_events_lower"] > 10_000
    assert honest_row["finite_key_bits"] > 0
    assert attacked_row["single_photon_events_lower"] == 0.0
    assert attacked_row["discard_reason"] == "single_photon_bound_too_low"
    assert attacked.alice.keys == [] and attacked.bob is not None and attacked.bob.keys == []


class _Tamper:
    """A raw endpoint that alters (or drops) the n-th message it sends."""

    def __init__(self, inner: ChannelEndpoint, target: int, mode: str) -> None:
        self.inner = inner
        self.target = target
        self.mode = mode
        self.sent = 0
        self.stats: ChannelStats = inner.stats

    def send(self, kind: str, payload: bytes) -> None:
        self.sent += 1
        if self.sent == self.target and kind == WIRE_KIND:
            if self.mode == "drop":
                return
            altered = bytearray(payload)
            altered[len(altered) // 2] ^= 0x01
            payload = bytes(altered)
        self.inner.send(kind, payload)

    def recv(self, kind: str, timeout_s: float = 120.0) -> bytes:
        return self.inner.recv(kind, timeout_s)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(("role", "target", "mode", "reason"), [
    ("bob", 2, "flip", "authentication_failed"),    # sifting announcement
    ("alice", 6, "flip", "authentication_failed"),  # inside Cascade
    # A dropped message leaves both parties waiting: the timeout stops the run.
    ("bob", 8, "drop", "channel_timeout"),
])
def test_tampering_on_the_channel_stops_the_run(role: str, target: int, mode: str,
                                                reason: str) -> None:
    def wrap(end: ChannelEndpoint, who: str) -> ChannelEndpoint:
        return _Tamper(end, target, mode) if who == role else end

    config = DistillConfig.for_link(PARAMS, channel_timeout_s=3.0) if mode == "drop" else CONFIG
    report = distill_link(PARAMS, 2 * BLOCK, 15, block_pulses=BLOCK, config=config,
                          channel_wrapper=wrap)
    assert report.alice is not None and report.bob is not None
    assert report.alice.run_abort is not None and report.bob.run_abort is not None
    assert any(reason in (p.run_abort or "") for p in (report.alice, report.bob))
    assert report.alice.keys == [] and report.bob.keys == []
    assert report.alice.blocks[0].state is BlockState.DISCARDED


def _run_two(config_a: DistillConfig, config_b: DistillConfig, psk_a: bytes,
             psk_b: bytes) -> tuple[PartyOutcome, PartyOutcome]:
    raw_a, raw_b = in_process_pair()
    streams = RandomStreams.from_seed(0)
    alice = make_processor("alice", raw_a, psk_a, streams.alice, config_a, PARAMS)
    bob = make_processor("bob", raw_b, psk_b, streams.bob, config_b, PARAMS)
    out: dict[str, PartyOutcome] = {}
    threads = [threading.Thread(target=lambda p=p: out.__setitem__(p.role, run_party(p, [])))
               for p in (alice, bob)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out["alice"], out["bob"]


def test_different_settings_are_refused_before_any_block() -> None:
    psk = bytes(range(256)) * 4
    other = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0, cascade_variant="yanetal")
    alice, bob = _run_two(CONFIG, other, psk, psk)
    assert bob.run_abort is not None and bob.run_abort.startswith("configuration_mismatch")
    assert alice.run_abort is not None


def test_parties_with_different_finite_key_bounds_are_refused() -> None:
    psk = bytes(range(256)) * 4
    tightened = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0,
                                       finite_key_bound="tightened")
    assert CONFIG.finite_key_bound == "lim2014"
    assert tightened.fingerprint() != CONFIG.fingerprint()
    alice, bob = _run_two(CONFIG, tightened, psk, psk)
    assert alice.run_abort is not None
    assert bob.run_abort is not None and bob.run_abort.startswith("configuration_mismatch")


def test_the_tightened_bound_runs_end_to_end_and_gives_more_key() -> None:
    params = with_misalignment(0.01)
    tightened = DistillConfig.for_link(PARAMS, channel_timeout_s=30.0,
                                       finite_key_bound="tightened")
    published = distill_link(params, BLOCK, 17, block_pulses=BLOCK, config=CONFIG)
    report = distill_link(params, BLOCK, 17, block_pulses=BLOCK, config=tightened)
    assert_parties_agree(report)
    assert report.as_dict()["finite_key_bound"] == "tightened"
    (row,) = report.block_rows()
    (reference,) = published.block_rows()
    assert row["finite_key"]["bound"] == "tightened"
    assert row["finite_key"]["test_single_photon_errors_upper"] <= sum(
        row["finite_key"]["test_basis_errors"])
    # Same simulated data, same reconciliation: only the bound differs.
    assert row["finite_key"]["test_basis_errors"] == reference["finite_key"]["test_basis_errors"]
    assert row["finite_key_bits"] > reference["finite_key_bits"] > 0


def test_different_pre_shared_keys_fail_authentication() -> None:
    psk = bytes(range(256)) * 4
    alice, bob = _run_two(CONFIG, CONFIG, psk, psk[::-1])
    assert bob.run_abort is not None and bob.run_abort.startswith("authentication_failed")
    assert alice.run_abort is not None


def test_two_party_driver_matches_the_in_process_run() -> None:
    params = with_misalignment(0.01)
    reference = distill_link(params, BLOCK, 16, block_pulses=BLOCK, config=CONFIG)
    raw_a, raw_b = in_process_pair()
    reports: dict[str, LinkRunReport] = {}

    def party(role: str, raw: ChannelEndpoint) -> None:
        reports[role] = distill_party(role, raw, params, BLOCK, 16, block_pulses=BLOCK,
                                      config=CONFIG)

    threads = [threading.Thread(target=party, args=("alice", raw_a)),
               threading.Thread(target=party, args=("bob", raw_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert reference.alice is not None and reports["alice"].alice is not None
    assert reports["bob"].bob is not None
    expected = [k.key_bytes() for k in reference.alice.keys]
    assert expected
    assert [k.key_bytes() for k in reports["alice"].alice.keys] == expected
    assert [k.key_bytes() for k in reports["bob"].bob.keys] == expected
    assert reports["bob"].as_dict()["role"] == "bob"


def test_pre_shared_key_from_file(tmp_path: Any) -> None:
    streams = RandomStreams.from_seed(1)
    path = tmp_path / "psk.bin"
    path.write_bytes(bytes(range(256)) * 4)
    path.chmod(0o644)
    with pytest.raises(ParameterError, match="mode 0644"):  # readable by others
        pre_shared_key(streams, CONFIG, path)
    path.chmod(0o600)
    key, source = pre_shared_key(streams, CONFIG, path)
    assert key == bytes(range(256)) * 4 and str(path) in source
    # The file is the run's authentication pool: 200 bytes would run out in the first
    # blocks (80 bytes stopped the first one), so it is refused up front.
    path.write_bytes(bytes(range(200)))
    with pytest.raises(ParameterError, match="at least 1024 bytes"):
        pre_shared_key(streams, CONFIG, path)
    derived, source = pre_shared_key(RandomStreams.from_seed(1), CONFIG)
    assert len(derived) == CONFIG.auth_pool_bytes and "seed" in source
    path.write_bytes(b"short")
    with pytest.raises(ParameterError) as info:
        pre_shared_key(streams, CONFIG, path)
    assert info.value.field == "psk_file"
    with pytest.raises(ParameterError):
        pre_shared_key(streams, CONFIG, tmp_path / "missing.bin")


@pytest.mark.parametrize(("field", "value"), [
    ("eps_sec", 0.0), ("eps_cor", 1.5), ("cascade_variant", "ldpc"), ("frame_bits", 10),
    ("link_id", ""), ("auth_pool_bytes", 8), ("qber_abort_threshold", 0.9),
    ("verification_segment_bits", 100), ("finite_key_bound", "lim-2014")])
def test_bad_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ParameterError) as info:
        DistillConfig(**{field: value})
    assert info.value.field == field


def test_report_as_dict_has_no_key_material(honest_report: LinkRunReport) -> None:
    data = honest_report.as_dict()
    text = repr(data)
    assert data["totals"]["secret_bits"] > 0
    assert honest_report.alice is not None
    for key in honest_report.alice.keys:
        assert key.key_bytes().hex()[:16] not in text
    assert not any(isinstance(v, np.ndarray) for v in data["blocks"][0].values())


def _tampering_proxy(upstream_port: int, flip_at: int) -> tuple[int, threading.Thread]:
    """A TCP relay that flips one bit of the byte at ``flip_at`` of the client's stream."""
    server = socket.create_server(("127.0.0.1", 0))
    port = int(server.getsockname()[1])

    def pump(src: socket.socket, dst: socket.socket, flip: int | None) -> None:
        seen = 0
        try:
            while chunk := src.recv(65536):
                if flip is not None and seen <= flip < seen + len(chunk):
                    data = bytearray(chunk)
                    data[flip - seen] ^= 0x10
                    chunk = bytes(data)
                seen += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        with server:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
            back.start()
            pump(client, upstream, flip_at)
            back.join(60)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_tampering_on_the_tcp_channel_is_detected() -> None:
    params = with_misalignment(0.01)
    ports: list[int] = []
    ready = threading.Event()
    reports: dict[str, Any] = {}

    def alice() -> None:
        def on_listening(port: int) -> None:
            ports.append(port)
            ready.set()

        endpoint = listen("127.0.0.1", 0, 60.0, on_listening=on_listening)
        try:
            reports["alice"] = distill_party("alice", endpoint, params, BLOCK, 17,
                                             block_pulses=BLOCK, config=CONFIG)
        finally:
            endpoint.close()

    def bob(port: int) -> None:
        endpoint = connect("127.0.0.1", port, 60.0, retries=50)
        try:
            reports["bob"] = distill_party("bob", endpoint, params, BLOCK, 17,
                                           block_pulses=BLOCK, config=CONFIG)
        finally:
            endpoint.close()

    a = threading.Thread(target=alice)
    a.start()
    assert ready.wait(60)
    # Byte 5000 of Bob's stream lies inside his (large) sifting announcement.
    proxy_port, _ = _tampering_proxy(ports[0], flip_at=5000)
    b = threading.Thread(target=bob, args=(proxy_port,))
    b.start()
    a.join(120)
    b.join(120)
    alice_out, bob_out = reports["alice"].alice, reports["bob"].bob
    assert alice_out.run_abort is not None and alice_out.run_abort.startswith(
        "authentication_failed")
    assert bob_out.run_abort is not None
    assert alice_out.keys == [] and bob_out.keys == []
