"""The ``corridor`` command: one Typer application, one sub-group per layer.

Each ``corridor.cli.<name>`` module owns one group of commands and exposes
``register(app)``; this module only assembles them and turns Corridor's own errors
into one clean line on stderr (exit code 2) instead of a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import os
import signal
import sys

import typer
from rich.markup import escape

from corridor.cli.common import click_exceptions, err_console, handle_errors, usage_error_line

app = typer.Typer(
    name="corridor",
    help="Quantum-safe key distribution for connected mobility.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that register commands. Order is the order of ``corridor --help``.
_COMMAND_MODULES = (
    "link",      # corridor link rate|plot|simulate|run
    "pki",       # corridor pki init
    "sae",       # corridor sae status|get-key|get-key-with-id
    "audit",     # corridor audit verify|export
    "alarm",     # corridor alarm list|clear
    "kme",       # corridor kme serve
    "hybrid",    # corridor hybrid kdf|session|ipsec|macsec|wireguard
    "up",        # corridor up
    "net",       # corridor net plan|generate
    "v2x",       # corridor v2x budget|attacks
    "fleet",     # corridor fleet init|depot|vehicle|send|watch|demo
    "ota",       # corridor ota init|release|assign|serve|vehicle|status|rotate
    "inventory",  # corridor inventory scan|plan
    "evidence",  # corridor evidence
    "pilot",     # corridor pilot report
    "web",       # corridor web
)

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"corridor.cli.{_name}")
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a layer is being built
        if exc.name != f"corridor.cli.{_name}":
            raise
        continue
    _module.register(app)


def _one_line_summaries(application: typer.Typer) -> None:
    """Give every command its docstring's first paragraph as one line of short help.

    In a group's command list typer keeps the docstring's line breaks (rich markup
    mode), so a summary broken at 88 columns in the source read "commands on to" /
    "vehicles" on two lines of ``corridor fleet --help``."""
    for info in application.registered_commands:
        text = info.help or inspect.getdoc(info.callback) or ""
        if info.short_help is None and text:
            info.short_help = " ".join(text.split("\n\n")[0].split())
    for group in application.registered_groups:
        if group.typer_instance is not None:
            _one_line_summaries(group.typer_instance)


_one_line_summaries(app)


def _stop(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise SystemExit(2)


def main() -> None:
    """Entry point of the ``corridor`` console script.

    Every mistake ends the same way: one line on stderr, ``error: ...``, and exit code
    2, whether Corridor's own validation or the option parser found it (no boxes).
    """
    try:
        with handle_errors():
            result = app(standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        exc.show()  # ``corridor`` alone prints its help
        raise SystemExit(exc.exit_code) from None
    except click_exceptions.UsageError as exc:
        _stop(usage_error_line(exc))
    except click_exceptions.ClickException as exc:
        _stop(" ".join(exc.format_message().split()))
    except typer.Abort:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # Whoever read the output left (``corridor ... | head``): nothing more can be
        # shown, so end quietly, with the status of a command killed by SIGPIPE, as
        # other command-line tools do (Python's documentation, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(128 + signal.SIGPIPE) from None
    if isinstance(result, int) and not isinstance(result, bool):
        raise SystemExit(result)  # typer.Exit(code) comes back as its code here


if __name__ == "__main__":  # pragma: no cover
    main()
