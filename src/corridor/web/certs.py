"""Certificate expiry for the dashboard: every certificate of the deployment's PKI.

This module owns :func:`certificate_rows`: for the CA and each KME, SAE, operator and
dashboard certificate that ``pki.json`` lists, its subject, serial number, ``notAfter``
and the days left, with a level and a sentence (a certificate 20 days from expiry says
so in words, not only in amber). Only public certificates are read, never a private key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509

#: Days before expiry from which a certificate is shown as an alarm, and as a warning.
EXPIRY_ALARM_DAYS = 7
EXPIRY_WARN_DAYS = 30


def expiry_level(days_left: float) -> tuple[str, str]:
    """(level, text) for a certificate with ``days_left`` until ``notAfter``."""
    if days_left < 0:
        return "alarm", f"expired {-days_left:.0f} days ago: renew it now"
    if days_left < EXPIRY_ALARM_DAYS:
        return "alarm", f"expires in {days_left:.1f} days: renew it now"
    if days_left < EXPIRY_WARN_DAYS:
        return "warn", f"expires in {days_left:.0f} days: plan the renewal"
    return "ok", f"valid for {days_left:.0f} more days"


def certificate_rows(certificates: Iterable[tuple[str, str, Path]], *,
                     now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """One row per (role, ID, certificate file), soonest expiry first; an unreadable
    file is a row that says why."""
    moment = now or dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    for role, name, path in certificates:
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            rows.append({"role": role, "id": name, "path": str(path), "level": "alarm",
                         "not_after": None, "days_left": None,
                         "text": f"cannot read the certificate: {type(exc).__name__}"})
            continue
        days = (cert.not_valid_after_utc - moment).total_seconds() / 86400
        level, text = expiry_level(days)
        rows.append({"role": role, "id": name, "path": str(path), "level": level,
                     "subject": cert.subject.rfc4514_string(),
                     "serial": format(cert.serial_number, "x"),
                     "not_after": cert.not_valid_after_utc.isoformat(),
                     "days_left": round(days, 2), "text": text})
    return sorted(rows, key=lambda r: (r["days_left"] is not None,
                                       r["days_left"] if r["days_left"] is not None else 0))


__all__ = ["EXPIRY_ALARM_DAYS", "EXPIRY_WARN_DAYS", "certificate_rows", "expiry_level"]
