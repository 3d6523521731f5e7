"""What still uses quantum-vulnerable cryptography: the scanner, the CBOM, the risk model
(Mosca, NIST IR 8547), the migration plan and the evidence pack (docs/inventory.md).

Modules: :mod:`~corridor.inventory.findings` (the finding model),
:mod:`~corridor.inventory.algorithms` (catalogue), ``scan_*`` (one scanner per kind of
artefact) and :mod:`~corridor.inventory.scan` (the walk), :mod:`~corridor.inventory.risk`,
:mod:`~corridor.inventory.report` (JSON, :func:`load_summary`),
:mod:`~corridor.inventory.cbom`, :mod:`~corridor.inventory.plan`,
:mod:`~corridor.inventory.evidence`.
"""

from corridor.inventory.report import load_summary

__all__ = ["load_summary"]
