"""``corridor link rate`` and ``corridor link plot``: JSON shapes and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from corridor.cli import app
from corridor.cli.link import link_parameters_from_options, parse_override, parse_pulse_count
from corridor.errors import ParameterError
from corridor.link.params import PRESETS
from corridor.link.rates import plob_bound

runner = CliRunner()

ROW_KEYS = {"distance_km", "mu", "nu", "vacuum_mu", "optimised", "decoy", "model",
            "block_pulses", "secret_key_rate_bits_per_pulse", "secret_key_rate_bits_per_s",
            "gain", "qber", "plob_bits_per_pulse", "plob_bits_per_s", "transmittance",
            "z_basis_probability", "class_probabilities", "preset", "parameters"}


def _json(args: list[str]) -> object:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_documented_invocation_gives_one_object_per_distance() -> None:
    rows = _json(["link", "rate", "--preset", "gys-2004", "--decoy", "infinite",
                  "--distance-km", "0", "50", "100", "--format", "json"])
    assert isinstance(rows, list)
    assert [row["distance_km"] for row in rows] == [0.0, 50.0, 100.0]
    for row in rows:
        assert set(row) >= ROW_KEYS
        assert row["optimised"] is True
        assert row["decoy"] == "infinite"
        assert 0.0 < row["gain"] <= 1.0
        assert 0.0 <= row["qber"] <= 0.5
        assert row["secret_key_rate_bits_per_s"] == pytest.approx(
            row["secret_key_rate_bits_per_pulse"] * 2e6)
    rates = [row["secret_key_rate_bits_per_pulse"] for row in rows]
    assert rates[0] > rates[1] > rates[2] > 0.0
    # 0 km is a lossless fibre: its PLOB bound is infinite and JSON says null.
    assert rows[0]["plob_bits_per_pulse"] is None
    assert rows[1]["plob_bits_per_pulse"] == pytest.approx(plob_bound(10 ** (-0.21 * 5)))


def test_repeated_distance_option_and_settings_as_given() -> None:
    rows = _json(["link", "rate", "--preset", "gys-2004", "--distance-km", "20",
                  "--distance-km", "40", "--no-optimise", "--decoy", "vacuum-weak",
                  "--format", "json"])
    assert [row["distance_km"] for row in rows] == [20.0, 40.0]
    assert all(row["mu"] == 0.48 and row["nu"] == 0.1 and not row["optimised"] for row in rows)


def test_set_length_is_the_distance_when_none_is_given(tmp_path: Path) -> None:
    """``--set length_km=25`` (the help's example), or a --config that sets the length,
    rates that length, not the default list; a preset's own length does not."""
    rows = _json(["link", "rate", "--set", "length_km=25", "--format", "json"])
    assert [row["distance_km"] for row in rows] == [25.0]
    config = tmp_path / "link.toml"
    config.write_text("length_km = 42.0\n")
    rows = _json(["link", "rate", "--config", str(config), "--format", "json"])
    assert [row["distance_km"] for row in rows] == [42.0]
    rows = _json(["link", "rate", "--preset", "grunenfelder-2023", "--format", "json"])
    assert len(rows) > 1


def test_finite_key_rows_name_their_block() -> None:
    rows = _json(["link", "rate", "--preset", "modern-snspd", "--block-pulses", "10000000000",
                  "--distance-km", "50", "--format", "json"])
    (row,) = rows  # type: ignore[misc]
    assert row["model"] == "finite-key"
    assert row["block_pulses"] == 10**10
    assert row["secret_key_rate_bits_per_pulse"] > 0.0


def test_finite_key_flag_chooses_the_bound_and_the_rows_name_it() -> None:
    rates = {}
    for bound in ("lim2014", "tightened"):
        rows = _json(["link", "rate", "--preset", "modern-snspd", "--block-pulses", "1000000000",
                      "--distance-km", "10", "--no-optimise", "--finite-key", bound,
                      "--format", "json"])
        (row,) = rows  # type: ignore[misc]
        assert row["finite_key_bound"] == bound
        rates[bound] = row["secret_key_rate_bits_per_pulse"]
    assert 0.0 < rates["lim2014"] < rates["tightened"]
    asymptotic = _json(["link", "rate", "--preset", "gys-2004", "--distance-km", "50",
                        "--format", "json"])
    assert asymptotic[0]["finite_key_bound"] is None  # type: ignore[index]


def test_max_distance_json() -> None:
    data = _json(["link", "rate", "--preset", "gys-2004", "--max-distance", "--format", "json"])
    assert set(data) == {"max_distance_km", "model", "decoy", "block_pulses",  # type: ignore[arg-type]
                         "finite_key_bound", "optimised", "preset", "parameters"}
    assert 140.0 <= data["max_distance_km"] <= 144.0  # type: ignore[index]
    assert data["preset"] == "gys-2004"  # type: ignore[index]


@pytest.mark.parametrize("args", [
    ["--preset", "gys-2004", "--distance-km", "0", "50", "100"],
    ["--distance-km", "10", "80", "--no-optimise"],
    ["--distance-km", "25", "--block-pulses", "1e10", "--finite-key", "lim2014"],
])
def test_each_row_is_recomputed_from_the_inputs_it_prints(args: list[str]) -> None:
    """The JSON names every input: the preset and each parameter as used at that length
    (optimised intensities included) give the same rate through the models directly."""
    from corridor.link.finite_key import finite_key_rate
    from corridor.link.params import preset
    from corridor.link.rates import secret_key_rate

    rows = _json(["link", "rate", "--format", "json", *args])
    for row in rows:  # type: ignore[attr-defined]
        params = preset(row["preset"]).override(row["parameters"])
        assert params.fibre.length_km == row["distance_km"]
        if row["block_pulses"] is None:
            rate = secret_key_rate(params, row["decoy"])
        else:
            rate = finite_key_rate(params, row["block_pulses"], row["finite_key_bound"])
        assert rate == row["secret_key_rate_bits_per_pulse"]


def test_table_output_by_default() -> None:
    result = runner.invoke(app, ["link", "rate", "--preset", "gys-2004", "--distance-km", "50"])
    assert result.exit_code == 0, result.output
    assert "gys-2004" in result.stdout and "QBER" in result.stdout


def test_overrides_from_set_and_toml(tmp_path: Path) -> None:
    config = tmp_path / "link.toml"
    config.write_text("[fibre]\nattenuation_db_per_km = 0.16\n", encoding="utf-8")
    params = link_parameters_from_options("gys-2004", config, ["efficiency=0.1"])
    assert params.fibre.attenuation_db_per_km == 0.16
    assert params.detector.efficiency == 0.1
    assert params.protocol.misalignment_error == 0.033
    assert parse_override(" length_km = 5 ") == ("length_km", "5")
    with pytest.raises(ParameterError, match="field=value"):
        parse_override("length_km")


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "attenuation_db_per_km"], "--set = 'attenuation_db_per_km': must have the form"),
    (["--set", "attenuation=0.2"], "--set = 'attenuation': a field of the link: "),
    (["--set", "length_km=abc"], "--set length_km = 'abc': must be a number"),
    # Options that would be ignored are refused instead.
    (["--finite-key", "tightened"], "--finite-key = 'tightened': only with --block-pulses"),
    (["--preset", "boaron-2018", "--decoy", "one-decoy", "--block-pulses", "1e12",
      "--finite-key", "lim2014"], "--finite-key = 'lim2014': only with --block-pulses and "
     "without --decoy one-decoy"),
    (["--distance-km", "10", "20", "--max-distance"], "--max-distance = True: not with"),
    (["--max-distance", "--set", "length_km=30"], "--set length_km = '30': not with "
     "--max-distance"),
    (["--distance-km", "10", "--set", "length_km=25"],
     "--set length_km = '25': not with --distance-km"),
    (["--set", "attenuation_db_per_km=3"], "looks like dB/m"),
    (["--set", "decoy_intensity=0.9"], "must be below signal_intensity"),
    (["--distance-km", "-5"],
     "--distance-km = -5.0: allowed range is [0, 10000] (a negative length has no meaning)"),
    (["--preset", "nope"], "preset = 'nope': must be one of " + ", ".join(sorted(PRESETS))),
    (["--block-pulses", "100000000", "--finite-key", "lim"],
     "--finite-key = 'lim': must be one of lim2014, tightened"),
    (["--decoy", "one-decoy"], "--block-pulses: must be given with --decoy one-decoy"),
    (["--preset", "boaron-2018", "--decoy", "one-decoy", "--block-pulses", "1e12",
      "--optimise"], "--optimise = True: is not available with --decoy one-decoy"),
    (["--decoy", "one-decoy", "--block-pulses", "1e12"],
     "vacuum_probability = 0.1: must be 0 for the one-decoy protocol"),
    (["--block-pulses", "1000", "--decoy", "infinite"], "--decoy = 'infinite'"),
    (["--block-pulses", "0"], "--block-pulses = 0"),
    (["--config", "/nonexistent/link.toml"], "must be an existing TOML file"),
])
def test_bad_input_gets_one_clean_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["link", "rate", "--format", "json", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert expected in " ".join(result.stderr.split())
    assert result.stdout == ""


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_a_config_that_is_no_text_file_gets_one_clean_line(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "link.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.write_bytes(b"\x00\xff\xfe")
    result = runner.invoke(app, ["link", "rate", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert f"--config = '{config}': must be a" in message
    assert ("not a directory" if kind == "directory" else "UTF-8") in message


def test_one_decoy_finite_key_of_boaron_2018() -> None:
    """``--decoy one-decoy``: Rusca et al.'s bound at the preset's own settings."""
    rows = _json(["link", "rate", "--preset", "boaron-2018", "--decoy", "one-decoy",
                  "--block-pulses", "1e14", "--distance-km", "405", "--format", "json"])
    (row,) = rows
    assert set(row) >= ROW_KEYS | {"detector_availability"}
    assert (row["decoy"], row["model"], row["optimised"]) == ("one-decoy", "finite-key", False)
    assert row["block_pulses"] == 10**14
    # Boaron et al. 2018: 6.5 bit/s at 405 km (tests/link/test_finite_key_one_decoy.py).
    assert row["secret_key_rate_bits_per_s"] == pytest.approx(6.5, rel=0.3)


def test_rows_report_the_saturated_gain() -> None:
    (row,) = _json(["link", "rate", "--preset", "modern-snspd", "--no-optimise",
                    "--distance-km", "10", "--format", "json"])
    assert 0.1 < row["detector_availability"] < 0.2      # 50 ns at 1 GHz, 10 km
    assert row["gain"] < 0.2 * row["transmittance"] * row["mu"]


def test_unparseable_distance_is_a_usage_error_not_a_traceback() -> None:
    result = runner.invoke(app, ["link", "rate", "--distance-km", "far"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--distance-km" in result.output


def test_plot_writes_png_and_svg(tmp_path: Path) -> None:
    for name in ("rates.png", "rates.svg"):
        out = tmp_path / name
        result = runner.invoke(app, ["link", "plot", "--preset", "gys-2004", "--out", str(out),
                                     "--max-distance-km", "150", "--points", "6",
                                     "--block-pulses", "10000000000"])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 1000
    assert (tmp_path / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "rates.svg").read_bytes()[:500]


def test_plot_refuses_a_missing_folder_and_a_set_length(tmp_path: Path) -> None:
    """No folder is made for --out (it made /nonexistent), and --set length_km, which
    the distance axis would ignore, is refused."""
    missing = runner.invoke(app, ["link", "plot", "--out", str(tmp_path / "no" / "r.png")])
    assert missing.exit_code == 2 and "existing directory" in missing.stderr
    assert not (tmp_path / "no").exists()
    length = runner.invoke(app, ["link", "plot", "--out", str(tmp_path / "r.png"), "--set",
                                 "length_km=25"])
    assert length.exit_code == 2 and "--set length_km = '25'" in length.stderr
    assert not (tmp_path / "r.png").exists()


def test_plot_refuses_an_unknown_suffix(tmp_path: Path) -> None:
    result = runner.invoke(app, ["link", "plot", "--out", str(tmp_path / "rates.pdf")])
    assert result.exit_code == 2
    assert "must end in .png or .svg" in " ".join(result.stderr.split())


@pytest.mark.parametrize(("text", "expected"), [
    ("100000000", 10**8), ("1e8", 10**8), ("2.5e9", 2_500_000_000), ("1_000", 1000),
    ("12345678901234567891", 12345678901234567891),  # exact, not through a float
])
def test_pulse_counts_read_as_integers_or_exponent_form(text: str, expected: int) -> None:
    assert parse_pulse_count(text) == expected


@pytest.mark.parametrize("text", ["abc", "1.5", "nan", "inf", ""])
def test_pulse_counts_that_are_not_whole_numbers_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_pulse_count(text)


def test_plot_of_a_saturating_link_adds_its_unsaturated_reference(tmp_path: Path) -> None:
    out = tmp_path / "rates.svg"
    result = runner.invoke(app, ["link", "plot", "--preset", "modern-snspd", "--out", str(out),
                                 "--max-distance-km", "60", "--points", "4",
                                 "--block-pulses", "10000000000"])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert "without the 50 ns dead time" in svg and "dead time 50 ns" in svg
