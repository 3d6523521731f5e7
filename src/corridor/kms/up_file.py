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


__all__ = ["read_up_file"]
