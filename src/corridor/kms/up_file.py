"""Reading ``corridor-up.json``, the file ``corridor up`` writes to describe a running
corridor (KME URLs, audit logs, certificates): one reader for every command and report
that is pointed at one, so that a missing or broken file reads the same everywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError


def read_up_file(path: Path, option: str = "--from-up", *,
                 need_kmes: bool = False) -> dict[str, Any]:
    """The parsed file, or one :class:`ParameterError` naming ``option`` and the path
    (missing, unreadable, not JSON, not an object; with ``need_kmes``, no ``kmes`` list)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ParameterError(option, str(path), "an existing corridor-up.json") from None
    except (OSError, ValueError) as exc:
        raise ParameterError(option, str(path), "a readable corridor-up.json",
                             type(exc).__name__) from None
    if not isinstance(data, dict):
        raise ParameterError(option, str(path), "a corridor-up.json (a JSON object)")
    if need_kmes and not isinstance(data.get("kmes"), list):
        raise ParameterError(option, str(path), "a corridor-up.json with its kmes")
    return data


def sae_client(up: dict[str, Any], base: Path, sae_id: str,
               option: str = "--initiator/--responder") -> Any:
    """An ETSI 014 client (:class:`~corridor.kms.client.SaeClient`) for SAE ``sae_id`` of
    the corridor that ``up`` describes, with its certificate under ``base`` (the folder
    of corridor-up.json); a :class:`ParameterError` naming ``option`` if ``up`` has no
    such SAE."""
    from corridor.kms.client import SaeClient

    sae = next((s for s in up.get("saes", []) if s.get("sae_id") == sae_id), None)
    if sae is None:
        known = [s.get("sae_id") for s in up.get("saes", [])]
        raise ParameterError(option, sae_id, f"one of {known} (corridor-up.json: saes)")
    kme = next(k for k in up["kmes"] if k["kme_id"] == sae["kme_id"])
    return SaeClient(kme["base_url"], base / sae["cert"], base / sae["key"],
                     base / sae["ca_cert"], expected_kme_id=kme["kme_id"], timeout_s=10.0)


def pair_policy(up: dict[str, Any], first_sae_id: str, second_sae_id: str) -> str:
    """The hybrid policy of the pair's ``hybrid_sessions`` entry, in either order;
    ``both-required`` when the pair has none."""
    for session in up.get("hybrid_sessions", []):
        if {session.get("initiator_sae_id"), session.get("responder_sae_id")} == \
                {first_sae_id, second_sae_id}:
            return str(session["policy"])
    return "both-required"


__all__ = ["pair_policy", "read_up_file", "sae_client"]
