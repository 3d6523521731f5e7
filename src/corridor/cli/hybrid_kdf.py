"""``corridor hybrid kdf catkdf|caskdf``: ETSI TS 103 744 key derivation from the shell.

Thin wrappers over :mod:`corridor.hybrid.kdf` that take every byte string as hex and
print the result as hex, so that another implementation (ETSI's reference code, a
peer's library) can be cross-checked byte for byte (docs/hybrid.md). A malformed hex
argument is reported by option name, length and position only: the value may be a
secret and is never echoed.
"""

from __future__ import annotations

import string
from enum import StrEnum
from typing import Annotated

import typer

from corridor.cli.common import console, handle_errors
from corridor.errors import ParameterError
from corridor.hybrid import kdf

kdf_app = typer.Typer(help="ETSI TS 103 744 CatKDF / CasKDF (HKDF) on hex inputs.",
                      no_args_is_help=True)

_HEX_DIGITS = frozenset(string.hexdigits)


class HashName(StrEnum):
    """Hashes the HKDF flavour of TS 103 744 is offered with."""

    sha256 = "sha256"
    sha384 = "sha384"


def parse_hex(option: str, text: str) -> bytes:
    """The bytes that ``text`` spells in hex, or a ParameterError naming ``option``
    with the length and the first bad position (never the text itself)."""
    for position, char in enumerate(text, start=1):
        if char not in _HEX_DIGITS:
            hint = (f"character {position} is not a hex digit"
                    + ("; leave out the 0x prefix" if text[:2] in ("0x", "0X") else ""))
            raise ParameterError(option, f"{len(text)} characters, not shown",
                                 "a hex string (digits 0-9, a-f, A-F)", hint)
    if len(text) % 2:
        raise ParameterError(option, f"{len(text)} hex digits",
                             "a hex string with an even number of digits")
    return bytes.fromhex(text)


HashOpt = Annotated[HashName, typer.Option("--hash", help="HKDF's hash.")]
MaOpt = Annotated[str, typer.Option("--ma", help="Party A's message(s) (hex).")]
MbOpt = Annotated[str, typer.Option("--mb", help="Party B's message(s) (hex).")]
InfoOpt = Annotated[str, typer.Option("--info", help="Context information (hex).")]
LabelOpt = Annotated[str, typer.Option("--label", help="Label, HKDF's salt (hex).")]
LengthOpt = Annotated[int, typer.Option("--length", help="Bytes of key material.")]


@kdf_app.command("catkdf")
def catkdf_command(
    k1: Annotated[str, typer.Option("--k1", help="First shared secret (hex).")],
    k2: Annotated[str, typer.Option("--k2", help="Second shared secret (hex).")],
    ma: MaOpt,
    mb: MbOpt,
    length: LengthOpt,
    hash_name: HashOpt = HashName.sha256,
    psk: Annotated[str, typer.Option("--psk", help="Pre-shared key (hex; empty: none).")] = "",
    info: InfoOpt = "",
    label: LabelOpt = "",
) -> None:
    """Print CatKDF(psk, k1, k2, MA, MB, info, label) in hex."""
    with handle_errors():
        key = kdf.catkdf(psk=parse_hex("--psk", psk), k1=parse_hex("--k1", k1),
                         k2=parse_hex("--k2", k2), ma=parse_hex("--ma", ma),
                         mb=parse_hex("--mb", mb), info=parse_hex("--info", info),
                         label=parse_hex("--label", label), length=length,
                         hash=hash_name.value)
    console.print(key.hex(), highlight=False, soft_wrap=True)


@kdf_app.command("caskdf")
def caskdf_command(
    k: Annotated[str, typer.Option("--k", help="This stage's shared secret (hex).")],
    ma: MaOpt,
    mb: MbOpt,
    chain_length: Annotated[int, typer.Option(
        "--chain-length", help="Bytes of the next chain secret.")],
    length: LengthOpt,
    hash_name: HashOpt = HashName.sha256,
    chain: Annotated[str, typer.Option(
        "--chain", help="Previous stage's chain secret (hex; empty for stage 1).")] = "",
    info: InfoOpt = "",
    label: LabelOpt = "",
) -> None:
    """Run one CasKDF stage and print 'CHAINHEX KEYHEX'."""
    with handle_errors():
        next_chain, key = kdf.caskdf_stage(
            previous_chain=parse_hex("--chain", chain), k=parse_hex("--k", k),
            ma=parse_hex("--ma", ma), mb=parse_hex("--mb", mb),
            info=parse_hex("--info", info), label=parse_hex("--label", label),
            chain_length=chain_length, length=length, hash=hash_name.value)
    console.print(f"{next_chain.hex()} {key.hex()}", highlight=False, soft_wrap=True)


def register(hybrid_app: typer.Typer) -> None:
    """Add ``corridor hybrid kdf`` to the hybrid group."""
    hybrid_app.add_typer(kdf_app, name="kdf")
