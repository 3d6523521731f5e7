"""``corridor hybrid ...``: hybrid keys (QKD + ML-KEM + X25519) and their exports.

This module only assembles the group: each ``corridor.cli.hybrid_<name>`` module in
:data:`_SUBCOMMAND_MODULES` owns its commands and exposes ``register(hybrid_app)``.
"""

from __future__ import annotations

import importlib

import typer

hybrid_app = typer.Typer(
    help="Hybrid keys: QKD + ML-KEM + X25519 session keys, policies, tunnel exports.",
    no_args_is_help=True)

# Modules that add commands to ``corridor hybrid``, in the order of its help.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "kdf",    # corridor hybrid kdf catkdf|caskdf
    "xwing",  # corridor hybrid xwing keygen|encaps|decaps
    "session",  # corridor hybrid session --from-up (QKD + X-Wing handshake between SAEs)
    "ipsec",  # corridor hybrid ipsec status|responder|initiator
    "tunnels",  # corridor hybrid macsec export, wireguard psk|run
    "entropy",  # corridor hybrid entropy check
)


def register(app: typer.Typer) -> None:
    """Add ``corridor hybrid`` to the main application."""
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"corridor.cli.hybrid_{name}").register(hybrid_app)
    app.add_typer(hybrid_app, name="hybrid")
