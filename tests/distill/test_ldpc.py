"""Tests of corridor.distill.ldpc: decoding, exact accounting, agreement, refusals.

Alice and Bob run in two threads over an in-process channel; a wrapper records what
Alice and Bob send, so that the disclosed bits are counted from the bytes on the wire
independently of the code under test. Keys and errors come from fixed seeds. The
codes are short (n = 16384) to keep the suite quick; the efficiency figures at the
default length are in benchmarks/bench_ldpc.py and docs/ldpc.md.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import corridor.distill.ldpc_codes as codes
from corridor.distill.channel import in_process_pair
from corridor.distill.ldpc import (
    MESSAGE_RESULT,
    MESSAGE_REVEAL,
    MESSAGE_SYNDROME,
    LdpcReconciliationResult,
    LdpcSettings,
    Plan,
    _index_width,
    _pack_requests,
    _unpack_requests,
    plan,
    reconcile_alice,
    reconcile_bob,
)
from corridor.distill.pipeline import DistillConfig, LinkRunReport, distill_link
from corridor.errors import ParameterError, ProtocolAbort
from corridor.link.params import preset
from corridor.link.rates import binary_entropy
from corridor.randomness import RandomSource
from tests.distill.test_cascade import RecordingEndpoint

TIMEOUT_S = 30.0
CORRIDOR_TOML = Path(codes.__file__).parent.parent / "kms" / "default_corridor.toml"
SETTINGS = LdpcSettings(code_bits=16384)


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(codes.CACHE_ENV, str(tmp_path_factory.mktemp("ldpc-cache")))
        codes.get_code.cache_clear()
        yield
    codes.get_code.cache_clear()


@dataclass
class Run:
    alice: LdpcReconciliationResult
    bob: LdpcReconciliationResult
    alice_sent: list[tuple[str, bytes]]
    bob_sent: list[tuple[str, bytes]]


def bsc_pair(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def run(alice_bits: np.ndarray, bob_bits: np.ndarray, qber: float,
        alice_settings: LdpcSettings = SETTINGS, bob_settings: LdpcSettings = SETTINGS,
        tamper: Callable[[str, bytes], bytes] | None = None) -> Run:
    a_raw, b_raw = in_process_pair()
    a_end = RecordingEndpoint(a_raw, tamper)
    b_end = RecordingEndpoint(b_raw)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(reconcile_alice, a_end, alice_bits, qber_estimate=qber,
                             rng=RandomSource.seeded(99), settings=alice_settings,
                             timeout_s=TIMEOUT_S)
        try:
            bob = reconcile_bob(b_end, bob_bits, qber_estimate=qber, settings=bob_settings,
                                timeout_s=TIMEOUT_S)
        finally:
            alice = future.result()
    return Run(alice, bob, a_end.sent, b_end.sent)


def wire_counts(result: Run) -> tuple[int, int, int, int]:
    """(syndrome bits, reveal bits, Bob's flag bits, Bob's request bits) counted from the
    recorded bytes."""
    syndrome = reveal = flags = requests = 0
    header = struct.Struct("<32sQIIIII")
    code = None
    for kind, payload in result.alice_sent:
        if kind == MESSAGE_SYNDROME:
            _, _, frames, *_ = header.unpack_from(payload)
            code = codes.get_code(result.alice.distribution, SETTINGS.code_bits,
                                  SETTINGS.code_seed)
            assert len(payload) == header.size + frames * ((code.checks + 7) // 8)
            syndrome += frames * code.checks
        else:
            assert kind == MESSAGE_REVEAL
            count, _step, bits = struct.unpack_from("<III", payload)
            assert len(payload) == 12 + (bits + 7) // 8
            reveal += bits
    for kind, payload in result.bob_sent:
        assert kind == MESSAGE_RESULT
        count = struct.unpack_from("<BI", payload)[1]
        flags += count
        flag_bytes = (count + 7) // 8
        failed = count - int(np.unpackbits(np.frombuffer(payload, np.uint8, flag_bytes, 5),
                                           count=count).sum())
        rest = payload[5 + flag_bytes:]
        if rest:   # one byte per failed frame, then that many check indices each
            assert code is not None
            width = (code.checks - 1).bit_length()
            named = sum(rest[:failed])
            assert len(rest) == failed + (named * width + 7) // 8
            requests += 8 * failed + named * width
    return syndrome, reveal, flags, requests


#: Short codes (n = 16384) sit further from their thresholds than the default length:
#: start at f = 1.15 and allow six retries of 0.05 (f <= 1.45).
TOLERANT = LdpcSettings(code_bits=16384, efficiency=1.15, retry_step=0.05, max_retries=6)


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.03, 0.04, 0.05])
def test_syndrome_decoding_corrects_bsc_errors(qber: float) -> None:
    # 2e5 bits in 13-14 frames per QBER. With blind retries only, two of these 67
    # frames (QBER 1 % and 3 %) stay in a trapping set of the short code through every
    # retry and are dropped; targeted retries decode them all.
    alice, bob = bsc_pair(200_000, qber, seed=round(qber * 1000))
    result = run(alice, bob, qber, TOLERANT, TOLERANT)
    assert result.bob.dropped_frames == result.alice.dropped_frames == 0
    assert np.array_equal(result.alice.bits, result.bob.bits)
    assert np.array_equal(result.bob.bits, alice)
    assert result.bob.qber_corrected == pytest.approx(qber, abs=0.002)
    # Disclosure: at least the Shannon limit, at most f = 1.15 + every retry step.
    f = result.bob.efficiency(qber)
    assert 1.0 < f <= TOLERANT.efficiency + TOLERANT.max_retries * TOLERANT.retry_step + 0.01


def test_disclosed_bits_equal_the_bits_on_the_wire() -> None:
    alice, bob = bsc_pair(150_000, 0.03, seed=5)
    result = run(alice, bob, 0.03)
    syndrome, reveal, flags, requests = wire_counts(result)
    for side in (result.alice, result.bob):
        code = codes.get_code(side.distribution, SETTINGS.code_bits, SETTINGS.code_seed)
        assert side.syndrome_bits == syndrome == side.frames * code.checks
        # The syndrome discloses m - p per frame (the p secret punctured bits are in it).
        credit = side.frames * side.punctured_bits
        assert side.revealed_bits == reveal   # no frame ran out of positions to reveal
        assert side.alice_disclosed_bits == syndrome - credit + reveal
        assert side.bob_disclosed_bits == flags + requests
        assert side.disclosed_bits == side.alice_disclosed_bits + side.bob_disclosed_bits
        assert side.messages == len(result.alice_sent) + len(result.bob_sent)
    assert result.alice.disclosed_bits == result.bob.disclosed_bits


def test_a_trapping_set_is_decoded_by_a_targeted_retry_and_its_request_counted() -> None:
    # QBER 3 %, seed 22: one frame ends every blind retry with a few unsatisfied checks
    # and is dropped; naming those checks gets their positions revealed, and it decodes.
    alice, bob = bsc_pair(200_000, 0.03, seed=22)
    blind = dataclasses.replace(TOLERANT, targeted_max_checks=0)
    before = run(alice, bob, 0.03, blind, blind)
    assert before.bob.dropped_frames == 1
    assert wire_counts(before)[3] == 0
    after = run(alice, bob, 0.03, TOLERANT, TOLERANT)
    assert after.bob.dropped_frames == after.alice.dropped_frames == 0
    assert np.array_equal(after.bob.bits, alice)
    syndrome, reveal, flags, requests = wire_counts(after)
    assert requests > 0
    for side in (after.alice, after.bob):
        assert side.bob_disclosed_bits == flags + requests
        assert side.revealed_bits == reveal
        assert side.disclosed_bits == syndrome - side.frames * side.punctured_bits + reveal \
            + flags + requests
    # Fewer bits disclosed than the blind retries spent on the frame they dropped.
    assert after.bob.efficiency(0.03) < before.bob.efficiency(0.03)


@pytest.mark.parametrize("targeted", [16, 0])
def test_the_degree_two_repair_runs_only_when_no_targeted_retry_can_follow(
        monkeypatch: pytest.MonkeyPatch, targeted: int) -> None:
    # The repair can end on a wrong word with the right syndrome; a targeted retry
    # cannot. Frames fail the first try here (f = 1.0 at QBER 4 %, seed 31) and one
    # ends with two unsatisfied checks joined by degree-2 variables: with targeted
    # retries off the repair decodes it; with them on it asks for those two checks, and
    # every frame decodes before the last round, so the repair never acts.
    import corridor.distill.ldpc as ldpc_module

    calls: list[int] = []
    real = ldpc_module._repair_degree_two_paths

    def counted(code: object, word: np.ndarray, target: np.ndarray, suspect: np.ndarray,
                unsatisfied: np.ndarray) -> bool:
        repaired = real(code, word, target, suspect, unsatisfied)  # type: ignore[arg-type]
        # The repair acts on a frame with exactly two unsatisfied checks.
        if unsatisfied.size == 2:
            calls.append(int(repaired))
        return repaired

    monkeypatch.setattr(ldpc_module, "_repair_degree_two_paths", counted)
    settings = LdpcSettings(code_bits=16384, efficiency=1.0, retry_step=0.05, max_retries=6,
                            targeted_max_checks=targeted)
    alice, bob = bsc_pair(200_000, 0.04, seed=31)
    result = run(alice, bob, 0.04, settings, settings)
    assert result.bob.first_round_failures > 0
    assert result.bob.dropped_frames == 0 and result.bob.passes_run <= settings.max_retries
    assert np.array_equal(result.bob.bits, alice)
    assert calls == ([] if targeted else [1])


def test_decoder_threads_change_nothing_on_the_wire_or_in_the_key() -> None:
    # Frames fail, retry and decode (f = 1.0 at QBER 4 %): one thread and three give
    # the same words, counts and bytes; the setting is Bob's alone (not compared).
    alice, bob = bsc_pair(200_000, 0.04, seed=31)
    base = LdpcSettings(code_bits=16384, efficiency=1.0, retry_step=0.05, max_retries=6)
    runs = [run(alice, bob, 0.04, base, dataclasses.replace(base, decoder_threads=threads))
            for threads in (1, 3)]
    one, three = runs
    assert one.bob.first_round_failures > 0 and one.bob.passes_run > 1
    assert np.array_equal(one.bob.bits, three.bob.bits)
    assert np.array_equal(three.bob.bits, alice)
    assert one.bob_sent == three.bob_sent and one.alice_sent == three.alice_sent
    assert one.bob.decoder_sweeps == three.bob.decoder_sweeps
    assert one.bob.disclosed_bits == three.bob.disclosed_bits
    # CPU spent on the pool's threads is reported (the caller's clock does not see it).
    assert one.bob.offloaded_cpu_s == 0.0 < three.bob.offloaded_cpu_s
    assert dataclasses.replace(base, decoder_threads=3) == base
    assert repr(dataclasses.replace(base, decoder_threads=3)) == repr(base)


def test_a_malformed_request_is_refused() -> None:
    # Bob's request section must name at most targeted_max_checks checks per frame, in
    # ascending order, inside the code; anything else ends the call at Alice.
    width = _index_width(1000)
    good = _pack_requests([None, np.array([3, 999]), np.array([7])], width)
    parsed = _unpack_requests(good, 3, width, 1000, 16)
    assert parsed[0] is None and parsed[1].tolist() == [3, 999] and parsed[2].tolist() == [7]
    for payload, frames in (
            (_pack_requests([np.array([5, 3])], width), 1),     # not ascending
            (_pack_requests([np.array([3, 3])], width), 1),     # repeated
            (_pack_requests([np.array([1000])], width), 1),     # past the last check
            (_pack_requests([np.arange(17)], width), 1),        # more than 16
            (good + b"\0", 3),                                  # a trailing byte
            (good, 2)):                                         # another frame count
        with pytest.raises(ProtocolAbort) as info:
            _unpack_requests(payload, frames, width, 1000, 16)
        assert info.value.reason == "malformed_message"


def test_blind_retries_are_counted_and_failed_frames_dropped_on_both_sides() -> None:
    # Start well below what the code can decode (f = 1.0 at QBER 4 %), one retry only:
    # some frames fail, are retried with revealed bits, and the rest are dropped.
    settings = LdpcSettings(code_bits=16384, efficiency=1.0, retry_step=0.05, max_retries=1)
    alice, bob = bsc_pair(200_000, 0.04, seed=8)
    result = run(alice, bob, 0.04, settings, settings)
    syndrome, reveal, flags, requests = wire_counts(result)
    assert reveal > 0 and result.bob.revealed_bits == reveal
    assert result.bob.passes_run == 2 and result.bob.round_trips == 2
    frames = result.bob.frames
    assert flags == frames + result.bob.first_round_failures
    assert result.bob.dropped_frames == result.alice.dropped_frames > 0
    assert np.array_equal(result.alice.bits, result.bob.bits)
    assert result.bob.bits.size == 200_000 - result.bob.dropped_bits
    assert result.alice.disclosed_bits == result.bob.disclosed_bits == (
        syndrome - frames * result.bob.punctured_bits + reveal + flags + requests)


def test_plan_matches_the_target_rate() -> None:
    for qber in (0.01, 0.02, 0.03, 0.05, 0.08):
        pl = plan(1_000_000, qber, SETTINGS)
        code = pl.code
        assert pl.frames * pl.key_per_frame >= 1_000_000 > pl.frames * (pl.key_per_frame - 1)
        assert pl.punctured + pl.shortened + pl.key_per_frame == code.n
        assert 0 <= pl.punctured <= code.max_punctured
        leak = code.checks - pl.punctured
        f = max(SETTINGS.efficiency,
                codes.DISTRIBUTIONS[code.distribution].threshold_efficiency)
        assert leak == pytest.approx(f * binary_entropy(qber) * pl.key_per_frame, abs=1)


def first_try_efficiency(pl: Plan, qber: float) -> float:
    return (pl.code.checks - pl.punctured) / (pl.key_per_frame * binary_entropy(qber))


def test_the_first_try_is_not_planned_below_the_codes_threshold_efficiency() -> None:
    # At its own BSC threshold (1.09 %) the rate-0.90 ensemble needs f = 0.1 / h(1.09 %)
    # = 1.153; a first try at 1.10 on it fails on nearly every frame. Every other code's
    # floor is below the default 1.10, so only low QBERs see the floor.
    r90 = codes.DISTRIBUTIONS["elkouss2009-r90"]
    assert r90.threshold_efficiency == pytest.approx(0.1 / binary_entropy(0.0109))
    assert 1.15 < r90.threshold_efficiency < 1.16
    assert all(d.threshold_efficiency < SETTINGS.efficiency
               for d in codes.DISTRIBUTIONS.values() if d is not r90)
    without = dataclasses.replace(SETTINGS, threshold_floor=False)
    for qber in (0.005, 0.01, 0.012):
        on, off = plan(1_000_000, qber, SETTINGS), plan(1_000_000, qber, without)
        assert on.code.distribution == off.code.distribution == r90.name
        assert first_try_efficiency(on, qber) == pytest.approx(r90.threshold_efficiency,
                                                               abs=2e-3)
        assert first_try_efficiency(off, qber) == pytest.approx(SETTINGS.efficiency,
                                                                abs=2e-3)
    for qber in (0.02, 0.03, 0.05):
        on, off = plan(1_000_000, qber, SETTINGS), plan(1_000_000, qber, without)
        assert (on.code.identity, on.frames, on.key_per_frame, on.punctured) == (
            off.code.identity, off.frames, off.key_per_frame, off.punctured)
    # An efficiency above the floor is left alone.
    above = dataclasses.replace(SETTINGS, efficiency=1.2)
    assert first_try_efficiency(plan(1_000_000, 0.01, above), 0.01) == pytest.approx(
        1.2, abs=2e-3)
    with pytest.raises(ParameterError) as info:
        LdpcSettings(threshold_floor=1)  # type: ignore[arg-type]
    assert info.value.field == "ldpc.threshold_floor"


def test_a_short_key_is_planned_on_shorter_codes_that_reach_the_rate() -> None:
    # 3,000 key bits at QBER 2 %: one frame of a 16384-bit code would need more
    # puncturing than the code allows (its syndrome would disclose f ~ 2.8); the plan
    # halves the length until the target rate is reached, and both parties agree.
    long = plan(1_000_000, 0.02, SETTINGS)
    assert long.code.n == SETTINGS.code_bits
    short = plan(3_000, 0.02, SETTINGS)
    assert codes.MIN_CODE_BITS <= short.code.n < SETTINGS.code_bits
    assert short.frames == 1 and short.key_per_frame == 3_000
    assert short.punctured + short.shortened + short.key_per_frame == short.code.n
    assert short.code.checks - short.punctured == pytest.approx(
        SETTINGS.efficiency * binary_entropy(0.02) * 3_000, abs=1)
    # The next longer length could not have: full puncturing leaves its rate too low.
    longer = codes.get_code(short.code.distribution, short.code.n * 2, SETTINGS.code_seed)
    assert longer.checks - longer.max_punctured > SETTINGS.efficiency \
        * binary_entropy(0.02) * 3_000
    alice, bob = bsc_pair(3_000, 0.02, seed=2)
    result = run(alice, bob, 0.02)
    assert result.alice.code_bits == result.bob.code_bits == short.code.n
    assert np.array_equal(result.bob.bits, alice)
    assert result.bob.efficiency(0.02) < 1.6


def test_mismatched_code_identity_aborts_with_a_named_reason() -> None:
    alice, bob = bsc_pair(50_000, 0.02, seed=3)
    other = LdpcSettings(code_bits=16384, code_seed=SETTINGS.code_seed + 1)
    with pytest.raises(ProtocolAbort) as info:
        run(alice, bob, 0.02, alice_settings=other)
    assert info.value.reason == "ldpc_code_mismatch"


def test_mismatched_layout_aborts_on_both_sides() -> None:
    alice, bob = bsc_pair(50_000, 0.02, seed=3)
    a_raw, b_raw = in_process_pair()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(reconcile_alice, a_raw, alice, qber_estimate=0.02,
                             rng=RandomSource.seeded(1), settings=SETTINGS, timeout_s=TIMEOUT_S)
        with pytest.raises(ProtocolAbort) as bob_info:
            reconcile_bob(b_raw, bob[:-1000], qber_estimate=0.02, settings=SETTINGS,
                          timeout_s=TIMEOUT_S)
        with pytest.raises(ProtocolAbort) as alice_info:
            future.result()
    assert bob_info.value.reason == alice_info.value.reason == "ldpc_parameter_mismatch"
    assert "n_key" in bob_info.value.detail


def test_malformed_syndrome_is_refused() -> None:
    alice, bob = bsc_pair(50_000, 0.02, seed=4)

    def truncate(kind: str, payload: bytes) -> bytes:
        return payload[:-1] if kind == MESSAGE_SYNDROME else payload

    with pytest.raises(ProtocolAbort) as info:
        a_raw, b_raw = in_process_pair()
        a_end = RecordingEndpoint(a_raw, truncate)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(reconcile_alice, a_end, alice, qber_estimate=0.02,
                        rng=RandomSource.seeded(1), settings=SETTINGS, timeout_s=2.0)
            reconcile_bob(b_raw, bob, qber_estimate=0.02, settings=SETTINGS,
                          timeout_s=TIMEOUT_S)
    assert info.value.reason == "malformed_message"


def test_empty_key_discloses_nothing() -> None:
    a_raw, _ = in_process_pair()
    result = reconcile_alice(a_raw, np.zeros(0, np.uint8), qber_estimate=0.02,
                             rng=RandomSource.seeded(1), settings=SETTINGS)
    assert result.disclosed_bits == 0 and result.bits.size == 0 and result.messages == 0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"code_bits": 100}, "ldpc.code_bits"),
    ({"code_seed": -1}, "ldpc.code_seed"),
    ({"efficiency": 0.9}, "ldpc.efficiency"),
    ({"retry_step": 0.0}, "ldpc.retry_step"),
    ({"max_retries": 33}, "ldpc.max_retries"),
    ({"max_iterations": 0}, "ldpc.max_iterations"),
    ({"targeted_max_checks": -1}, "ldpc.targeted_max_checks"),
    ({"targeted_max_checks": 256}, "ldpc.targeted_max_checks"),
    ({"targeted_max_checks": True}, "ldpc.targeted_max_checks"),
    ({"decoder_threads": -1}, "ldpc.decoder_threads"),
    ({"decoder_threads": 257}, "ldpc.decoder_threads"),
    ({"decoder_threads": 2.0}, "ldpc.decoder_threads"),
])
def test_bad_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ParameterError) as info:
        LdpcSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_inputs_are_refused() -> None:
    a_raw, _ = in_process_pair()
    for bits, qber in ((np.array([0, 2], np.uint8), 0.02), (np.zeros(10, np.uint8), 0.6)):
        with pytest.raises(ParameterError):
            reconcile_alice(a_raw, bits, qber_estimate=qber, rng=RandomSource.seeded(1))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"reconciliation": "turbo"}, "reconciliation"),
    ({"ldpc_code_bits": 12}, "ldpc.code_bits"),
    ({"ldpc_efficiency": 0.95}, "ldpc.efficiency"),
    ({"ldpc_retry_step": 0.0}, "ldpc.retry_step"),
])
def test_bad_config_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ParameterError) as info:
        DistillConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_reconciliation_method_is_part_of_the_session_fingerprint() -> None:
    assert DistillConfig().fingerprint() != DistillConfig(reconciliation="ldpc").fingerprint()
    assert DistillConfig(reconciliation="ldpc").fingerprint() != DistillConfig(
        reconciliation="ldpc", ldpc_code_bits=16384).fingerprint()
    for field, value in (("ldpc_efficiency", 1.09), ("ldpc_retry_step", 0.01)):
        assert DistillConfig(reconciliation="ldpc").fingerprint() != DistillConfig(
            reconciliation="ldpc", **{field: value}).fingerprint()   # type: ignore[arg-type]


def test_config_hands_its_ldpc_fields_to_the_ldpc_settings() -> None:
    settings = DistillConfig(reconciliation="ldpc", ldpc_code_bits=1 << 20,
                             ldpc_efficiency=1.09, ldpc_retry_step=0.01).ldpc_settings()
    assert (settings.code_bits, settings.efficiency, settings.retry_step) == (1 << 20, 1.09, 0.01)
    assert DistillConfig().ldpc_settings() == LdpcSettings()


def ldpc_link_report() -> LinkRunReport:
    """One 1e7-pulse block of a 5 km link distilled with LDPC (16384-bit codes)."""
    # No dead time: a 1e7-pulse block of the saturating preset holds no finite key.
    params = preset("modern-snspd").override({
        "z_basis_probability": 0.5, "signal_probability": 0.5, "decoy_probability": 0.3,
        "vacuum_probability": 0.2, "misalignment_error": 0.01,
        "dead_time_s": 0.0}).with_length(5.0)
    config = DistillConfig.for_link(params, channel_timeout_s=30.0, reconciliation="ldpc",
                                    ldpc_code_bits=16384)
    report = distill_link(params, 10_000_000, 1, block_pulses=10_000_000, config=config)
    return report


@pytest.mark.slow
def test_distill_link_with_ldpc_gives_identical_keys() -> None:
    report = ldpc_link_report()
    assert report.run_abort is None
    assert report.alice is not None and report.bob is not None
    assert len(report.alice.keys) == len(report.bob.keys) == 1
    assert [k.key_bytes() for k in report.alice.keys] == [k.key_bytes() for k in report.bob.keys]
    meta = report.bob.keys[0].meta
    assert meta["reconciliation_method"] == "ldpc"
    assert meta["reconciliation_disclosed_bits"] == (meta["reconciliation_alice_bits"]
                                                     + meta["reconciliation_bob_bits"])
    assert meta["ldpc_distribution"].startswith("elkouss2009-")
    # What reconciliation dropped is taken off the key length (chain rule).
    assert meta["finite_key_bits"] <= meta["sifted_bits"] - meta["reconciliation_dropped_bits"]
    row = report.block_rows()[0]
    assert row["reconciliation_method"] == "ldpc"
    assert report.as_dict()["reconciliation"] == "ldpc"


@pytest.mark.slow
def test_the_pipeline_counts_the_cpu_of_bobs_decoder_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Bob's stage CPU is his thread's clock plus what the decoder's pool threads spent:
    # mark each pool thread's share with 1000 s more so that it cannot be missed.
    import corridor.distill.ldpc as ldpc_module

    real = ldpc_module._on_thread
    monkeypatch.setattr(ldpc_module, "_available_cpus", lambda: 2)
    monkeypatch.setattr(ldpc_module, "_on_thread",
                        lambda decode, frames: real(decode, frames) + 1000.0)
    report = ldpc_link_report()
    cpu = report.as_dict()["blocks"][0]["cpu_s"]
    assert cpu["bob"]["reconciliation"] >= 2000.0   # two threads, at least one round
    assert cpu["alice"]["reconciliation"] < 1000.0


def test_cli_refuses_an_unknown_method_in_one_line() -> None:
    from typer.testing import CliRunner

    from corridor.cli import app

    result = CliRunner().invoke(app, ["link", "run", "--distance-km", "5",
                                      "--reconciliation", "turbo", "--quiet"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--reconciliation" in lines[0] and "ldpc" in lines[0]


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--ldpc-efficiency", "0.9", "--ldpc-efficiency = 0.9"),
    ("--ldpc-retry-step", "2", "--ldpc-retry-step = 2"),
    ("--ldpc-code-bits", "100", "--ldpc-code-bits = 100"),
])
def test_cli_refuses_a_bad_ldpc_setting_in_one_line(flag: str, value: str, field: str) -> None:
    from typer.testing import CliRunner

    from corridor.cli import app

    result = CliRunner().invoke(app, ["link", "run", "--distance-km", "5", "--reconciliation",
                                      "ldpc", flag, value, "--quiet"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0] and value in lines[0]


def test_corridor_file_takes_reconciliation_per_link(tmp_path: Path) -> None:
    from corridor.kms.node import load_corridor

    text = CORRIDOR_TOML.read_text()
    assert 'cascade_variant = "biconf"' in text
    for value, ok in (('"ldpc"', True), ('"turbo"', False)):
        path = tmp_path / f"corridor-{ok}.toml"
        path.write_text(text.replace('cascade_variant = "biconf"',
                                     f'cascade_variant = "biconf"\nreconciliation = {value}'))
        if ok:
            corridor = load_corridor(path)
            assert {link.reconciliation for link in corridor.links.values()} == {"ldpc"}
        else:
            with pytest.raises(ParameterError) as info:
                load_corridor(path)
            assert info.value.field.endswith(".reconciliation")


def test_corridor_file_takes_ldpc_settings_per_link(tmp_path: Path) -> None:
    from corridor.kms.node import load_corridor, make_source

    text = CORRIDOR_TOML.read_text().replace(
        'cascade_variant = "biconf"', 'cascade_variant = "biconf"\nreconciliation = "ldpc"\n'
        'ldpc_code_bits = 1048576\nldpc_efficiency = 1.09\nldpc_retry_step = 0.01')
    path = tmp_path / "corridor.toml"
    path.write_text(text)
    link = next(iter(load_corridor(path).links.values()))
    source = make_source(link, ("alice", "bob"))
    assert source.config.ldpc_settings() == LdpcSettings(   # type: ignore[attr-defined]
        code_bits=1 << 20, efficiency=1.09, retry_step=0.01)
    path.write_text(text.replace("ldpc_retry_step = 0.01", "ldpc_retry_step = 1.5"))
    with pytest.raises(ParameterError) as info:
        load_corridor(path)
    assert info.value.field.endswith(".ldpc_retry_step") and info.value.value == 1.5


def test_degree_two_chain_between_unsatisfied_checks_is_repaired() -> None:
    from corridor.distill import _ldpc_kernels as kernels
    from corridor.distill.ldpc import _repair_degree_two_paths

    code = codes.get_code("elkouss2009-r50", 8192, 7)
    rng = np.random.default_rng(0)
    word = rng.integers(0, 2, code.n, dtype=np.uint8)
    target = np.empty((1, code.checks), np.uint8)
    kernels.syndromes(word[None, :], code.row_start, code.cols, target)
    degree = np.bincount(code.cols, minlength=code.n)
    rows_of = {}
    for c in range(code.checks):
        for v in code.cols[code.row_start[c]:code.row_start[c + 1]].tolist():
            if degree[v] == 2:
                rows_of.setdefault(v, []).append(c)
    # Two degree-2 variables sharing a check: a chain c1 - v1 - c2 - v2 - c3.
    by_check: dict[int, list[int]] = {}
    for v, (c1, c2) in rows_of.items():
        by_check.setdefault(c1, []).append(v)
        by_check.setdefault(c2, []).append(v)
    chain = next(vs[:2] for vs in by_check.values() if len(vs) >= 2)
    for flipped in ([chain[0]], chain):
        wrong = word.copy()
        wrong[flipped] ^= 1
        suspect = wrong != word      # what Bob's channel values would say, error-free
        assert _repair_degree_two_paths(code, wrong, target[0], suspect)
        assert np.array_equal(wrong, word)
        # Without any suspect variable the shortest path is taken: the same here.
        wrong = word.copy()
        wrong[flipped] ^= 1
        assert _repair_degree_two_paths(code, wrong, target[0], np.zeros(code.n, bool))
        assert np.array_equal(wrong, word)
    # Errors elsewhere (a degree >= 3 variable) are not touched.
    heavy = int(np.flatnonzero(degree >= 3)[0])
    wrong = word.copy()
    wrong[heavy] ^= 1
    assert not _repair_degree_two_paths(code, wrong, target[0], np.ones(code.n, bool))
