"""Helpers shared by every CLI module: error reporting and output formats."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from corridor.errors import CorridorError, ParameterError, fields_renamed
from corridor.kms.up_file import read_up_file as read_up_file  # re-exported for the commands

try:  # typer >= 0.26 vendors click; older versions raise the click package's exceptions
    from typer._click import exceptions as click_exceptions
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions  # type: ignore[no-redef]
    from click import get_current_context  # type: ignore[no-redef]

class _Console(Console):
    """rich's Console, except that a closed pipe raises BrokenPipeError (after
    silencing this console) instead of exiting at once with status 1: a command that
    holds state, like ``corridor up``, must still stop cleanly."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


#: Width of tables written into a pipe or a file (no terminal, no COLUMNS): rich would
#: take 80 and cut names short ("dc-va…"), which a reader of ``| less`` or ``> file``
#: cannot undo. A table takes only the width it needs.
PIPE_WIDTH = 200


def _stdout_width() -> int | None:
    """None (rich decides) on a terminal or with COLUMNS set; else :data:`PIPE_WIDTH`."""
    try:
        terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return None if terminal or os.environ.get("COLUMNS") else PIPE_WIDTH


# A line printed (a path, a command) is never hard-wrapped.
console = _Console(soft_wrap=True, width=_stdout_width())
err_console = _Console(stderr=True, soft_wrap=True)  # an error stays one line


class OutputFormat(StrEnum):
    """Output formats offered by commands that print results."""

    table = "table"
    json = "json"


@contextmanager
def handle_errors() -> Iterator[None]:
    """Print a Corridor error as one line on stderr and exit 2, without a traceback.

    So is a path the system refuses (``--dir`` naming a file, a directory without
    write permission): the path and the system's reason, e.g.
    ``/tmp/x.png/keys: Not a directory``."""
    try:
        yield
    except CorridorError as exc:
        err_console.print(f"[bold red]error:[/] {escape(error_line(exc))}", highlight=False)
        raise SystemExit(2) from None
    except (FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError) as exc:
        where = exc.filename if exc.filename is not None else "path"
        reason = exc.strerror or type(exc).__name__
        err_console.print(f"[bold red]error:[/] {escape(str(where))}: {escape(reason)}",
                          highlight=False)
        raise SystemExit(2) from None


def error_line(exc: CorridorError) -> str:
    """The one line printed for ``exc``: a :class:`ParameterError` about a model's
    field that the running command takes as an option or argument of the same name
    (``validity_days`` for ``--validity-days``) is named as the user typed it, and a
    missing value is not shown as ``= None``."""
    if not isinstance(exc, ParameterError):
        return str(exc)
    name = _cli_name(exc.field)
    if name == exc.field and exc.value is not None:
        return str(exc)
    if exc.value is None:  # "--kme: required ...", not "--kme = None: required ..."
        line = f"{name}: {exc.allowed}"
        return line + f" ({exc.hint})" if exc.hint else line
    return str(ParameterError(name, exc.value, exc.allowed, exc.hint))


def _cli_name(field: str) -> str:
    """``field`` as the running command's option (``--validity-days``) or argument
    (``VEHICLE``) of that name, else ``field`` unchanged."""
    ctx = get_current_context(silent=True)
    if ctx is None or not field.isidentifier():
        return field
    option = "--" + field.replace("_", "-")
    for param in ctx.command.params:
        opts = getattr(param, "opts", [])
        if option in opts:
            return option
        if param.param_type_name == "argument" and param.name == field:
            return str(getattr(param, "metavar", None) or field.upper())
    return field


def parse_count(text: str | int, unit: str = "") -> int:
    """A count as every count option reads it (``--pulses``, ``--bytes``, ``--code-bits``,
    ``--sites`` ...): an integer, with ``_`` separators or in exponent form (``1e6``,
    ``2.5e5``); anything that is not a whole number is a usage error naming the text."""
    if isinstance(text, int):  # the default value is passed through the parser too
        return text
    cleaned = text.strip().replace("_", "")
    what = f"number {unit}".rstrip()
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a {what}") from None
    if not math.isfinite(value) or value != int(value):
        raise typer.BadParameter(f"{text!r} is not a whole {what}")
    return int(value)


def typed_on_command_line(name: str) -> bool:
    """Whether the running command's parameter ``name`` was given by the user (on the
    command line or in its environment variable), not left at its default."""
    ctx = get_current_context(silent=True)
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def refuse_typed(options: Iterable[tuple[str, str, Any]], allowed: str) -> None:
    """Refuse, naming it, the first of ``options`` (parameter name, option as typed, the
    value to show) that the user gave where the command would ignore it."""
    for name, option, value in options:
        if typed_on_command_line(name):
            raise ParameterError(option, value, allowed)


@contextmanager
def as_option(field: str, option: str) -> Iterator[None]:
    """A :class:`ParameterError` about ``field`` (a model's name, ``length_km``) named
    by the option the user typed (``--distance-km``) instead."""
    with as_options({field: option}):
        yield


@contextmanager
def as_options(options: dict[str, str]) -> Iterator[None]:
    """:func:`as_option` for several fields at once."""
    with fields_renamed(options):
        yield


def fail(message: str) -> None:
    """Stop a command with a clean one-line error (exit code 2)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


# Commands whose options and arguments are seeds, keys and shared secrets.
_SECRET_INPUT_GROUPS = ("hybrid xwing", "hybrid kdf")
_EXTRA_ARGS = re.compile(r"\(([^()]*)\)\s*$")  # click: "unexpected extra argument (X Y)"
# typer checks typed options with pydantic; its phrases, in the words of Corridor's own.
_PYDANTIC_WORDS = (
    ("Value error, ", ""),
    ("Input should be greater than or equal to ", "must be at least "),
    ("Input should be less than or equal to ", "must be at most "),
    ("Input should be greater than ", "must be above "),
    ("Input should be less than ", "must be below "),
    ("Input should be a valid number, unable to parse string as a number", "must be a number"),
    ("Input should be a valid integer, unable to parse string as an integer",
     "must be a whole number"),
    ("Input should be a valid integer, got a number with a fractional part",
     "must be a whole number"),
)


def usage_error_line(exc: click_exceptions.UsageError) -> str:
    """One line for an option-parser error: the message, the value typed when the
    parser's message does not quote it (typer's pydantic coercion says "Input should be
    a valid number" without the value), and the command's ``--help`` to read."""
    message = " ".join(exc.format_message().split())
    param = getattr(exc, "param", None)
    if param is not None and param.param_type_name == "argument" and param.name:
        # "Missing argument 'SLAVE_SAE_ID'", as --help shows it, not 'slave_sae_id'
        shown = str(getattr(param, "metavar", None) or param.name.upper())
        message = message.replace(f"'{param.name}'", f"'{shown}'")
    for phrase, plain in _PYDANTIC_WORDS:
        message = message.replace(phrase, plain)
    command = exc.ctx.command_path if exc.ctx is not None else "corridor"
    secret = any(f" {group} " in f" {command} " for group in _SECRET_INPUT_GROUPS)
    if secret:  # what was typed there may be a seed or a key: never echo it
        message = _EXTRA_ARGS.sub(lambda m: f"({len(m[1].split())} not shown)", message)
        if message.startswith("No such command "):  # a seed typed where a command goes
            message = "No such command (what was typed is not shown)."
    elif isinstance(exc, click_exceptions.BadParameter) and not isinstance(
            exc, click_exceptions.MissingParameter):
        typed = _typed_values(exc, sys.argv[1:])
        if typed and not any(repr(value) in message for value in typed):
            message += f"; got {', '.join(map(repr, typed))}"
    return f"{message} (see '{command} --help')"


def _typed_values(exc: click_exceptions.BadParameter, argv: list[str]) -> list[str]:
    """What followed the failing option on the command line (``--opt V`` or
    ``--opt=V``), each time it was given."""
    opts = [opt for opt in getattr(exc.param, "opts", []) if opt.startswith("-")]
    values = []
    for i, token in enumerate(argv):
        for opt in opts:
            if token == opt and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif token.startswith(opt + "="):
                values.append(token[len(opt) + 1:])
    return values


def emit_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout (numpy scalars are converted)."""
    text = json.dumps(data, indent=2, default=_default) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not at exit
    except BrokenPipeError:
        # Ends in corridor.cli.main like a closed pipe under the console (status 141).
        raise BrokenPipeError from None
    except OSError as exc:
        raise CorridorError(f"standard output cannot be written: "
                            f"{os.strerror(exc.errno) if exc.errno else exc}") from None


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


AuditLogOpt = Annotated[Path | None, typer.Option(
    "--audit-log", help="Audit log (JSON Lines, HMAC-chained) for every policy decision; "
    "`corridor audit verify` checks it.")]
AuditKeyFileOpt = Annotated[Path | None, typer.Option(
    "--audit-key-file", help="File with the audit log's 32-byte key in hex.")]


def open_decision_audit(audit_log: Path | None, audit_key_file: Path | None) -> Any:
    """The :class:`~corridor.kms.audit.AuditLog` named by ``--audit-log`` (``None`` without
    one), keyed by ``--audit-key-file``: where hybrid and tunnel commands record their
    policy decisions."""
    if audit_log is None:
        return None
    if audit_key_file is None:
        raise ParameterError("--audit-key-file", None, "a file with the key in hex",
                             "required with --audit-log")
    try:
        key = bytes.fromhex(audit_key_file.read_text().strip())
    except (OSError, ValueError):
        raise ParameterError("--audit-key-file", str(audit_key_file),
                             "a readable file with 64 hex digits") from None
    if len(key) != 32:
        raise ParameterError("--audit-key-file", str(audit_key_file),
                             "a readable file with 64 hex digits")
    from corridor.kms.audit import AuditLog

    return AuditLog(audit_log, key)
