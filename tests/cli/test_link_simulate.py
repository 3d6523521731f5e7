"""``corridor link simulate``: JSON shape, reproducibility, attacks and error messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from corridor.cli import app

runner = CliRunner()
TIMING_FIELDS = {"wall_time_s", "pulses_per_second", "detections_per_second"}


def _simulate(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["link", "simulate", "--format", "json", "--quiet", *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_json_shape() -> None:
    data = _simulate("--preset", "modern-snspd", "--distance-km", "50", "--pulses", "3e6",
                     "--seed", "1", "--block-pulses", "1000000")
    for key in ("preset", "distance_km", "seed", "pulses", "blocks", "detections", "per_class",
                "decoy_estimates", "attack", "wall_time_s", "pulses_per_second",
                "detections_per_second", "basis_and_bit_frequencies", "block_pulses"):
        assert key in data, key
    assert data["preset"] == "modern-snspd"
    assert data["distance_km"] == 50.0
    assert data["pulses"] == 3_000_000
    assert data["blocks"] == 3
    assert data["attack"] is None
    assert list(data["per_class"]) == ["signal", "decoy", "vacuum"]
    signal = data["per_class"]["signal"]
    for key in ("intensity", "pulses", "detections", "observed_gain", "expected_gain",
                "gain_sigma", "observed_qber", "expected_qber", "sifted", "errors"):
        assert key in signal, key
    assert sum(row["pulses"] for row in data["per_class"].values()) == 3_000_000
    assert sum(row["detections"] for row in data["per_class"].values()) == data["detections"]
    decoy = data["decoy_estimates"]
    for key in ("single_photon_yield_lower", "single_photon_error_upper",
                "single_photon_gain_lower", "secret_key_rate_bits_per_pulse", "verdict"):
        assert key in decoy, key
    # No key material in the report: counts and rates only.
    assert "bit\": [" not in json.dumps(data)


def test_same_seed_same_output() -> None:
    args = ("--distance-km", "20", "--pulses", "2000000", "--seed", "77")
    first, second = _simulate(*args), _simulate(*args)
    for data in (first, second):
        for key in TIMING_FIELDS:
            data.pop(key)
    assert first == second
    third = _simulate("--distance-km", "20", "--pulses", "2000000", "--seed", "78")
    assert third["detections"] != first["detections"]


def test_pns_attack_is_reported_and_collapses_the_decoy_bound() -> None:
    # The default preset saturates (50 ns dead time): the attack is flagged all the same.
    data = _simulate("--distance-km", "50", "--pulses", "2e7", "--seed", "13", "--attack", "pns")
    assert data["attack"]["name"] == "pns"
    assert data["decoy_estimates"]["single_photon_yield_lower"] == 0.0
    assert "collapsed" in data["decoy_estimates"]["verdict"]


def test_honest_saturated_link_scores_small_deviations_and_an_honest_verdict() -> None:
    """modern-snspd at 10 km (50 ns dead time, receiver live 13 % of the time): the
    deviations are taken against the exact model the simulator samples from, and the
    decoy bound is compared with an honest link's Y1 under the same saturation."""
    data = _simulate("--distance-km", "10", "--pulses", "4e7", "--seed", "9")
    for name, row in data["per_class"].items():
        assert abs(row["gain_deviation_sigmas"]) < 5, name
        if row["qber_deviation_sigmas"] is not None:
            assert abs(row["qber_deviation_sigmas"]) < 5, name
    signal = data["per_class"]["signal"]
    # The textbook closed form (saturation included) is reported next to the model.
    assert signal["closed_form_gain"] == pytest.approx(signal["expected_gain"], rel=1e-3)
    decoy = data["decoy_estimates"]
    assert decoy["yield_bound_over_honest"] > 0.8
    assert decoy["verdict"].startswith("consistent with an honest channel")


def test_intercept_resend_raises_the_reported_qber() -> None:
    data = _simulate("--distance-km", "25", "--pulses", "5e6", "--seed", "3",
                     "--attack", "intercept-resend", "--attack-fraction", "0.5")
    assert data["attack"] == {"name": "intercept-resend", "fraction": 0.5,
                              "expected_qber_rise": pytest.approx(0.5 * (0.25 - 0.01 / 2))}
    signal = data["per_class"]["signal"]
    # Far above an honest link's QBER, and where the attacked model says it should be.
    assert signal["observed_qber"] > signal["closed_form_qber"] + 0.1
    assert abs(signal["qber_deviation_sigmas"]) < 5


def test_table_output() -> None:
    result = runner.invoke(app, ["link", "simulate", "--distance-km", "30", "--pulses", "1e6",
                                 "--seed", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    for text in ("signal", "decoy", "vacuum", "decoy-state estimates", "verdict", "wall time"):
        assert text in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--attack", "pns", "--attack-fraction", "0.3"], "--attack-fraction"),
    (["--attack", "intercept-resend", "--attack-fraction", "1.5"], "--attack-fraction = 1.5"),
    (["--pulses", "0"], "--pulses = 0"),
    (["--block-pulses", "0"], "--block-pulses = 0"),
    (["--distance-km", "-5"], "--distance-km = -5.0"),
    (["--preset", "nope"], "preset = 'nope'"),
    (["--set", "attenuation_db_per_km=3"], "dB/m"),
])
def test_bad_input_gets_a_clean_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["link", "simulate", "--quiet", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_pulse_count_must_be_whole() -> None:
    result = runner.invoke(app, ["link", "simulate", "--pulses", "1.5"])
    assert result.exit_code == 2
    assert "whole number" in result.output


def test_one_decoy_preset_says_why_the_vacuum_weak_estimate_is_missing() -> None:
    data = _simulate("--preset", "boaron-2018", "--distance-km", "50", "--pulses", "1e6",
                     "--seed", "1")
    assert data["decoy_estimates"]["available"] is False
    assert "one-decoy" in data["decoy_estimates"]["reason"]
