"""``corridor net plan|generate`` from the command line: table, JSON, map, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from corridor.cli.net import register

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CITY = str(EXAMPLES / "city.toml")


@pytest.fixture
def app() -> typer.Typer:
    application = typer.Typer()
    register(application)

    @application.callback()
    def _root() -> None:  # keeps ``net`` a sub-command
        pass

    return application


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_table_names_links_pairs_bottlenecks_and_decisions(app: typer.Typer,
                                                          runner: CliRunner) -> None:
    result = runner.invoke(app, ["net", "plan", CITY, "--top", "20"],
                           env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "city-corridor" in out and "dc--cloud" in out and "tmc--rsc-ring" in out
    assert "dc-vault -> oem-backend" in out and "partly met" in out
    line = next(row for row in out.splitlines() if row.startswith("bottlenecks ("))
    # Three links at 100 %: their order is by utilisation, ties by float rounding.
    assert line.startswith("bottlenecks (3): ")
    assert sorted(line.split(": ", 1)[1].split(", ")) == ["dc--cloud", "exchange--cloud",
                                                          "tmc--dc"]
    # examples/city.toml lets the backup stream (policy any) fall back to PQC alone.
    assert "PQC-only when QKD key runs out (1): dc-vault->oem-backend" in out
    assert "refuses sessions without QKD key (0): none" in out


def test_json_numbers_recompute_from_their_inputs(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["net", "plan", CITY, "--format", "json", "--fail", "tmc--dc"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["failed_links"] == ["tmc--dc"]
    links = {link["link_id"]: link for link in data["links"]}
    assert links["tmc--dc"]["failed"] and links["tmc--dc"]["utilisation"] == 0.0
    for link in links.values():
        rate = (link["secret_key_rate_bits_per_pulse"] * link["block_pulses"]
                / link["block_time_s"])
        assert link["secret_key_rate_bits_per_s"] == pytest.approx(rate)
        assert link["capacity_bits_per_s_per_direction"] == pytest.approx(rate / 2)
    used: dict[tuple[str, str, str], float] = {}
    for pair in data["pairs"]:
        assert pair["served_bits_per_s"] == pytest.approx(
            sum(path["bits_per_s"] for path in pair["paths"]))
        assert pair["unmet_bits_per_s"] == pytest.approx(
            pair["demand_bits_per_s"] - pair["served_bits_per_s"], abs=1e-6)
        assert pair["key_consumed_bits_per_s"] == pytest.approx(
            sum(path["bits_per_s"] * len(path["links"]) for path in pair["paths"]))
        for path in pair["paths"]:
            for link_id, u, v in zip(path["links"], path["kmes"], path["kmes"][1:],
                                     strict=False):
                used[(link_id, u, v)] = used.get((link_id, u, v), 0.0) + path["bits_per_s"]
    for link_id, link in links.items():
        for direction, bits in link["used_bits_per_s"].items():
            u, v = direction.split("->")
            assert bits == pytest.approx(used.get((link_id, u, v), 0.0), abs=1e-6)
            assert bits <= link["capacity_bits_per_s_per_direction"] * (1 + 1e-6)
    totals = data["totals"]
    assert totals["unmet_bits_per_s"] == pytest.approx(
        sum(pair["unmet_bits_per_s"] for pair in data["pairs"]))


def test_what_if_and_plot(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    figure = tmp_path / "city.png"
    result = runner.invoke(app, ["net", "plan", CITY, "--what-if", "--plot", str(figure),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    ranking = data["what_if"]
    assert len(ranking) == len(data["links"])
    assert ranking[0]["unmet_bits_per_s"] >= ranking[-1]["unmet_bits_per_s"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    assert data["plot"] == str(figure)


def test_generate_writes_a_network_that_plans(app: typer.Typer, runner: CliRunner,
                                              tmp_path: Path) -> None:
    out = tmp_path / "regional.toml"
    result = runner.invoke(app, ["net", "generate", "--sites", "60", "--seed", "3",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["net", "generate", "--sites", "60", "--seed", "3"])
    assert again.output == out.read_text()
    result = runner.invoke(app, ["net", "plan", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["links"]) >= 60


def _corridor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("args", "expected"), [
    (["net", "plan", "no-such.toml"], "error: FILE = 'no-such.toml': must be an existing"),
    (["net", "plan", CITY, "--fail", "nowhere"],
     "error: --fail = 'nowhere': must be a link ID or a site ID of 'city-corridor'"),
    (["net", "plan", CITY, "--plot", "map.gif"], "error: --plot = 'map.gif': must end in"),
    (["net", "generate", "--sites", "5"], "error: --sites = 5: must be an integer from 30"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = _corridor(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr


def test_a_unit_mistake_in_the_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "city.toml").read_text().replace(
        "length_km = 24.8", "length_km = 24800.0"))
    result = _corridor("net", "plan", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: links.dc--cloud.parameters.length_km = 24800.0: must be a span length in "
        "(0, 500] km (longer routes need a trusted node between two links; a length in "
        "metres must be divided by 1000)")


def test_json_on_stdout_is_only_json() -> None:
    """HiGHS prints a banner on file descriptor 1 when a solver is made; the planner
    silences it, so piping ``--format json`` into a JSON reader works."""
    result = _corridor("net", "plan", str(EXAMPLES / "two-site.toml"), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["totals"]["unmet_bits_per_s"] == 0.0 and data["lp_solves"] >= 1


def test_simulate_table_compares_both_strategies(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["net", "simulate", CITY, "--hours", "0.05", "--horizon-s",
                                 "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "city-corridor: 0.05 h, seed 1, requests of 262,144 bit" in out
    assert "shortest-path" in out and "key-aware" in out
    assert "dc-vault -> oem-backend" in out and "dc--cloud:kme-dc->kme-cloud" in out


def test_simulate_json_recomputes_and_plot(app: typer.Typer, runner: CliRunner,
                                           tmp_path: Path) -> None:
    figure = tmp_path / "sim.png"
    result = runner.invoke(app, ["net", "simulate", CITY, "--hours", "0.1", "--seed", "3",
                                 "--request-bits", "131072", "--format", "json",
                                 "--plot", str(figure)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    config = data["config"]
    assert (config["seed"], config["request_bits"], config["duration_s"]) == (3, 131072, 360.0)
    assert data["plot"] == str(figure) and figure.stat().st_size > 10_000
    pools = {pool["pool"]: pool for pool in data["pools"]}
    for strategy in data["strategies"].values():
        assert strategy["served"] + strategy["blocked"] == strategy["offered"]
        assert strategy["blocking_probability"] == pytest.approx(
            strategy["blocked"] / strategy["offered"])
        assert strategy["key_consumed_bits"] == pytest.approx(
            sum(p["key_consumed_bits"] for p in strategy["pairs"]))
        for pair in strategy["pairs"]:
            assert pair["blocking_probability"] == pytest.approx(
                pair["blocked"] / pair["offered"] if pair["offered"] else 0.0)
            assert pair["key_consumed_bits"] == pytest.approx(sum(
                config["request_bits"] * int(hops) * n
                for hops, n in pair["served_by_hops"].items()))
        for pool in strategy["pools"]:
            spec = pools[pool["pool"]]
            assert pool["initial_bits"] + pool["refilled_bits"] - pool["consumed_bits"] == \
                pytest.approx(pool["final_bits"], abs=1e-3)
            assert pool["refilled_bits"] + pool["overflow_bits"] == pytest.approx(
                spec["rate_bits_per_s"] * config["duration_s"])
            assert sum(pool["state_s"].values()) == pytest.approx(config["duration_s"])
            assert 0 <= pool["final_bits"] <= spec["capacity_bits"]


@pytest.mark.parametrize(("args", "expected"), [
    (["net", "simulate", CITY, "--hours", "0"], "error: --hours = 0.0: must be a number in"),
    (["net", "simulate", CITY, "--request-bits", "0"],
     "error: --request-bits = 0: must be an integer >= 1"),
    (["net", "simulate", CITY, "--low", "0.9"],
     "error: --low/--high = '0.9/0.5': --low must not exceed --high"),
    (["net", "simulate", CITY, "--high", "0.05"],
     "error: --low/--high = '0.1/0.05': --low must not exceed --high"),
    (["net", "simulate", CITY, "--low", "1.5"], "error: --low = 1.5: must be a number in"),
    (["net", "simulate", CITY, "--plot", "sim.gif"], "error: --plot = 'sim.gif': must end in"),
    (["net", "simulate", "no-such.toml"], "error: FILE = 'no-such.toml': must be an existing"),
])
def test_simulate_bad_input_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = _corridor(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr


def test_tables_written_into_a_pipe_keep_whole_names() -> None:
    """``corridor net plan ... | less``: no terminal, no COLUMNS; rich alone would take 80
    columns and cut the pairs short ("dc-va…")."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run([sys.executable, "-m", "corridor", "net", "plan", CITY],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert "dc-vault -> oem-backend" in result.stdout   # a pair on one line, whole
