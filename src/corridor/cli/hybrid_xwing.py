"""``corridor hybrid xwing keygen|encaps|decaps``: X-Wing on hex, for cross-checking.

Wraps :mod:`corridor.hybrid.xwing`; every input and output is hex on one line. These
commands print secret keys and shared secrets on purpose (they exist to compare with
another implementation); do not use them to handle production keys.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from corridor.cli.common import console, handle_errors
from corridor.cli.hybrid_kdf import parse_hex
from corridor.hybrid import xwing

xwing_app = typer.Typer(help="X-Wing KEM (ML-KEM-768 + X25519) on hex inputs.",
                        no_args_is_help=True)


def _say(*values: bytes) -> None:
    console.print(" ".join(v.hex() for v in values), highlight=False, soft_wrap=True)


@xwing_app.command("keygen")
def keygen_command(
    seed: Annotated[str | None, typer.Option(
        "--seed", help="32-byte seed (hex); default: fresh from the OS.")] = None,
) -> None:
    """Print 'SKHEX PKHEX'."""
    with handle_errors():
        raw = os.urandom(xwing.SEED_BYTES) if seed is None else parse_hex("--seed", seed)
        _say(*xwing.generate_keypair(raw))


@xwing_app.command("encaps")
def encaps_command(
    pk: Annotated[str, typer.Option("--pk", help="Public key (hex).")],
    eseed: Annotated[str | None, typer.Option(
        "--eseed", help="64-byte eseed (hex): fixes the X25519 half only.")] = None,
) -> None:
    """Print 'SSHEX CTHEX'."""
    with handle_errors():
        ss, ct = xwing.encapsulate(parse_hex("--pk", pk),
                                   None if eseed is None else parse_hex("--eseed", eseed))
        _say(ss, ct)


@xwing_app.command("decaps")
def decaps_command(
    sk: Annotated[str, typer.Option("--sk", help="Secret key (hex).")],
    ct: Annotated[str, typer.Option("--ct", help="Ciphertext (hex).")],
) -> None:
    """Print 'SSHEX'."""
    with handle_errors():
        _say(xwing.decapsulate(parse_hex("--sk", sk), parse_hex("--ct", ct)))


def register(hybrid_app: typer.Typer) -> None:
    """Add ``corridor hybrid xwing`` to the hybrid group."""
    hybrid_app.add_typer(xwing_app, name="xwing")
