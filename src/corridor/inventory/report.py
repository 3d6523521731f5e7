"""The inventory as JSON: a summary, every assessed asset and every skip.

The shape is a contract with the dashboard (which shows the risk summary where a scan
exists)::

    {"summary": {"assets": N,
                 "by_risk": {"critical": n, "high": n, "medium": n, "low": n},
                 "by_vulnerability": {"shor-broken": n, "grover-weakened": n,
                                      "quantum-safe": n, "qkd": n}},
     "assets": [...], "skipped": [...], "scan": {...}, "policy": {...}}

:func:`load_summary` reads that summary back from a file written by
``corridor inventory scan --format json --out FILE``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.inventory.algorithms import VULNERABILITIES
from corridor.inventory.findings import ScanResult
from corridor.inventory.risk import LEVELS, Asset, RiskPolicy


def summary(assets: list[Asset]) -> dict[str, Any]:
    """Counts of assets by risk level and by quantum vulnerability."""
    by_risk = dict.fromkeys(LEVELS, 0)
    by_vulnerability = dict.fromkeys(VULNERABILITIES, 0)
    for asset in assets:
        by_risk[asset.level] += 1
        by_vulnerability[asset.vulnerability] += 1
    return {"assets": len(assets), "by_risk": by_risk, "by_vulnerability": by_vulnerability}


def inventory_json(assets: list[Asset], result: ScanResult, policy: RiskPolicy,
                   targets: list[str], elapsed_s: float) -> dict[str, Any]:
    """The whole inventory as one JSON-ready object."""
    return {
        "summary": summary(assets),
        "assets": [asset.to_dict() for asset in assets],
        "skipped": [skip.to_dict() for skip in result.skipped],
        "scan": {"targets": targets, "files_scanned": result.files_scanned,
                 "bytes_scanned": result.bytes_scanned,
                 "endpoints_scanned": result.endpoints_scanned,
                 "elapsed_s": round(elapsed_s, 3)},
        "policy": {"crqc_years": policy.crqc_years, "year": policy.year,
                   "systems": [s.name for s in policy.systems]},
    }


def load_summary(path: str | Path) -> dict[str, Any]:
    """The ``summary`` object of an inventory JSON file written by
    ``corridor inventory scan --format json``; ParameterError naming the file when it
    is missing, not JSON, or has no summary of that shape."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            "not JSON" if isinstance(exc, ValueError) else type(exc).__name__
        raise ParameterError("inventory", str(path), "a readable inventory JSON file",
                             why) from None
    found = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("assets"), int) \
            or not isinstance(found.get("by_risk"), dict) \
            or not isinstance(found.get("by_vulnerability"), dict):
        raise ParameterError("inventory", str(path),
                             "the JSON of `corridor inventory scan --format json` "
                             "(no summary with assets, by_risk, by_vulnerability)")
    return found


def load_assets(path: str | Path) -> list[dict[str, Any]]:
    """The ``assets`` list of an inventory JSON file (as :func:`load_summary`)."""
    load_summary(path)
    data = json.loads(Path(path).read_text())
    assets = data.get("assets")
    if not isinstance(assets, list):
        raise ParameterError("inventory", str(path), "an inventory JSON with an assets list")
    return [a for a in assets if isinstance(a, dict)]
