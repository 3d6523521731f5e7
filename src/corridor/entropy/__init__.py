"""Entropy from a quantum random number generator (QRNG), health-tested and mixed.

``health`` owns the NIST SP 800-90B section 4.4 continuous health tests, ``qrng`` the
readers that fetch raw bytes from a QRNG (HTTPS endpoint or device/file path), and
``source`` the :class:`~corridor.entropy.source.QrngRandomSource` that mixes them
with the OS CSPRNG behind the ``RandomSource`` seam (docs/entropy.md).
:func:`open_qrng_source` opens a reader and wraps it in one call.
"""

from __future__ import annotations

from typing import Any

from corridor.entropy.qrng import open_reader
from corridor.entropy.source import QrngRandomSource


def open_qrng_source(source: str, *, min_entropy_bits_per_byte: float = 6.0,
                     fail_closed: bool = True, on_event: Any = None,
                     **options: Any) -> QrngRandomSource:
    """OS CSPRNG bytes mixed with a health-tested QRNG (docs/entropy.md).

    ``source`` is an ``https://`` entropy endpoint or a device/FIFO/file path;
    ``options`` go to :func:`corridor.entropy.qrng.open_reader` (``ca``, ``cert``,
    ``key``, ``headers``, ``timeout_s``) or, for ``registry``, ``batch_bytes`` and
    ``apt_window``, to :class:`QrngRandomSource`. Fails closed by default.
    """
    source_options = {k: options.pop(k) for k in ("registry", "batch_bytes", "apt_window")
                      if k in options}
    reader = open_reader(source, **options)
    try:
        return QrngRandomSource(reader, min_entropy_bits_per_byte=min_entropy_bits_per_byte,
                                fail_closed=fail_closed, on_event=on_event, **source_options)
    except BaseException:
        reader.close()
        raise

