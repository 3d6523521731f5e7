"""Helpers shared by every CLI module: error reporting and output formats."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console

from corridor.errors import CorridorError

console = Console()
err_console = Console(stderr=True)


class OutputFormat(StrEnum):
    """Output formats offered by commands that print results."""

    table = "table"
    json = "json"


@contextmanager
def handle_errors() -> Iterator[None]:
    """Print a Corridor error as one line on stderr and exit 2, without a traceback."""
    try:
        yield
    except CorridorError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise SystemExit(2) from None


def fail(message: str) -> None:
    """Stop a command with a clean one-line error (exit code 2)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def emit_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (numpy scalars are converted)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
