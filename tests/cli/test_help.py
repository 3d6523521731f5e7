"""Every help text shows what its source says: Rich markup (which ``--help`` renders)
must not eat a TOML table name such as ``[[sites]]`` or ``[fibre]``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from rich.markup import render

from corridor.cli import app


def _help_texts(command: Any, path: str) -> Iterator[tuple[str, str]]:
    yield path, command.help or ""
    for param in command.params:
        yield f"{path} {param.name}", getattr(param, "help", None) or ""
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _help_texts(sub, f"{path} {name}")


def test_every_bracket_of_a_help_text_survives_its_markup() -> None:
    texts = list(_help_texts(typer.main.get_command(app), "corridor"))
    assert len(texts) > 200   # the whole tree was walked
    eaten = [(where, text) for where, text in texts
             if render(text).plain.count("[") != text.count("[")]
    assert eaten == []


def test_a_group_lists_each_command_with_its_summary_on_one_line() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["fleet", "--help"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    # The docstring breaks after "commands on to"; the listing must not.
    assert "commands on to vehicles (one ML-KEM-768" in result.output
    listed = [(where, text) for where, text in _short_helps(typer.main.get_command(app),
                                                            "corridor") if "\n" in text]
    assert listed == []


def _short_helps(command: Any, path: str) -> Iterator[tuple[str, str]]:
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield f"{path} {name}", sub.short_help or sub.help or ""
        yield from _short_helps(sub, f"{path} {name}")


def _command_paths(command: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _command_paths(sub, [*path, name])


def test_no_help_text_is_cut_short_in_an_80_column_terminal() -> None:
    """Rich cuts a word longer than its column with '…' (an example path or --set
    field=value) and the reader cannot get it back: help texts use words that fit."""
    from typer.testing import CliRunner

    runner = CliRunner()
    cut = []
    for path in _command_paths(typer.main.get_command(app), []):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        cut += [(" ".join(path), line) for line in result.output.splitlines() if "…" in line]
    assert cut == []
