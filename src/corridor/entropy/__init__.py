"""Entropy from a quantum random number generator (QRNG), health-tested and mixed.

``health`` owns the NIST SP 800-90B section 4.4 continuous health tests, ``qrng`` the
readers that fetch raw bytes from a QRNG (HTTPS endpoint or device/file path), and
``source`` the :class:`~corridor.entropy.source.QrngRandomSource` that mixes them
with the OS CSPRNG behind the ``RandomSource`` seam (docs/entropy.md).
"""
