"""Validation messages of the link parameters (corridor.link.params)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.link.params import (
    PRESETS,
    DetectorParameters,
    FibreParameters,
    SourceParameters,
    load_toml,
    preset,
)


def _message(excinfo: pytest.ExceptionInfo[ParameterError]) -> str:
    return str(excinfo.value)


def test_negative_length_names_field_value_and_range() -> None:
    with pytest.raises(ParameterError) as excinfo:
        FibreParameters(length_km=-3.0)
    message = _message(excinfo)
    assert excinfo.value.field == "length_km"
    assert "-3.0" in message and "[0, 10000]" in message and "negative length" in message


@pytest.mark.parametrize("field", ["signal_probability", "decoy_probability",
                                   "vacuum_probability", "z_basis_probability"])
def test_probability_outside_unit_interval(field: str) -> None:
    with pytest.raises(ParameterError) as excinfo:
        SourceParameters(**{field: 1.5})
    assert excinfo.value.field == field
    assert "1.5" in _message(excinfo)


def test_dark_count_probability_outside_unit_interval() -> None:
    with pytest.raises(ParameterError) as excinfo:
        DetectorParameters(dark_count_probability=-0.1)
    assert excinfo.value.field == "dark_count_probability"
    assert "[0, 1]" in _message(excinfo)


def test_decoy_not_below_signal() -> None:
    with pytest.raises(ParameterError) as excinfo:
        SourceParameters(signal_intensity=0.3, decoy_intensity=0.3)
    assert excinfo.value.field == "decoy_intensity"
    assert "must be below signal_intensity = 0.3" in _message(excinfo)


def test_attenuation_that_looks_like_db_per_metre_says_so() -> None:
    with pytest.raises(ParameterError) as excinfo:
        FibreParameters(attenuation_db_per_km=200.0)
    message = _message(excinfo)
    assert excinfo.value.field == "attenuation_db_per_km"
    assert "dB/m" in message and "0.2 dB/km" in message


def test_probabilities_must_sum_to_one() -> None:
    with pytest.raises(ParameterError, match="must sum to 1"):
        SourceParameters(signal_probability=0.5, decoy_probability=0.1, vacuum_probability=0.1)


def test_override_applies_a_set_of_fields_at_once_and_rejects_unknown_names() -> None:
    base = preset("gys-2004")
    # Signal and decoy change together without tripping the ordering check half way.
    changed = base.override({"signal_intensity": 0.05, "decoy_intensity": 0.02})
    assert changed.source.intensities == (0.05, 0.02, 0.0)
    with pytest.raises(ParameterError, match="parameter name"):
        base.override({"attenuation": 0.2})


def test_presets_carry_the_published_parameters() -> None:
    gys = PRESETS["gys-2004"]
    # Lo-Ma-Chen 2005 (GYS): 0.21 dB/km, eta_bob 4.5 %, Y0 1.7e-6, e_d 3.3 %, f 1.22.
    assert gys.fibre.attenuation_db_per_km == 0.21
    assert gys.detector.efficiency == 0.045
    assert gys.background_yield == pytest.approx(1.7e-6, rel=1e-6)
    assert gys.protocol.misalignment_error == 0.033
    assert gys.protocol.reconciliation_efficiency == 1.22
    assert gys.source.z_basis_probability == 0.5
    snspd = PRESETS["modern-snspd"]
    assert snspd.background_yield == pytest.approx(1e-7, rel=1e-6)
    assert snspd.detector.efficiency == 0.6
    assert snspd.source.efficient_bb84


def test_toml_file_overrides_a_preset(tmp_path: Path) -> None:
    path = tmp_path / "link.toml"
    path.write_text('preset = "gys-2004"\n[fibre]\nlength_km = 25.0\n', encoding="utf-8")
    params = load_toml(path)
    assert params.name == "gys-2004"
    assert params.fibre.length_km == 25.0


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="must be an existing TOML file"):
        load_toml(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[fibre\n", encoding="utf-8")
    with pytest.raises(ParameterError, match="not valid TOML"):
        load_toml(broken)


@pytest.mark.parametrize("value", [0, -1, 2.5, 2000, True])
def test_detector_pixels_must_be_a_whole_count(value: object) -> None:
    with pytest.raises(ParameterError) as excinfo:
        DetectorParameters(detector_pixels=value)  # type: ignore[arg-type]
    assert excinfo.value.field == "detector_pixels"
    assert "[1, 1024]" in _message(excinfo)


def test_detector_pixels_from_set_and_toml_become_integers(tmp_path: Path) -> None:
    params = preset("modern-snspd").override({"detector_pixels": "14"})
    assert params.detector.detector_pixels == 14
    assert isinstance(params.detector.detector_pixels, int)
    path = tmp_path / "link.toml"
    path.write_text('preset = "modern-snspd"\n[detector]\ndetector_pixels = 4\n')
    assert load_toml(path).detector.detector_pixels == 4


def test_saturating_presets_carry_their_detectors() -> None:
    snspd = PRESETS["modern-snspd"]
    assert snspd.detector.dead_time_s == 50e-9 and snspd.detector.detector_pixels == 1
    record = PRESETS["grunenfelder-2023"]
    assert record.source.pulse_rate_hz == 2.5e9 and record.fibre.length_km == 10.0
    assert record.detector.detector_pixels == 14
    boaron = PRESETS["boaron-2018"]
    assert boaron.source.pulse_rate_hz == 2.5e9 and boaron.source.vacuum_probability == 0.0
    assert boaron.protocol.eps_sec == 1e-9 and boaron.protocol.eps_cor == 1e-15
