"""The one place randomness comes from (ARCHITECTURE.md, seam ``RandomSource``).

``RandomSource.seeded(seed)`` wraps numpy's PCG64 for reproducible tests and
simulations. ``RandomSource.system()`` draws from the operating system's CSPRNG and
is what anything that becomes a user's key material must use. ``RandomSource.qrng(...)``
mixes the OS CSPRNG with a health-tested quantum RNG (``corridor.entropy``). Both expose the same
numpy ``Generator`` interface plus :meth:`bytes`, so code never needs to know which
it has been given.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
from numpy.random import BitGenerator, Generator, SeedSequence


class RandomSource:
    """A source of random numbers: seeded PCG64 or the OS CSPRNG.

    Attributes:
        generator: the numpy ``Generator`` to draw from.
        cryptographic: True when every draw comes from the OS CSPRNG.
    """

    def __init__(self, generator: Generator, *, cryptographic: bool, label: str) -> None:
        self.generator = generator
        self.cryptographic = cryptographic
        self._label = label

    @classmethod
    def seeded(cls, seed: int) -> RandomSource:
        """A reproducible PCG64 stream: same seed, same draws."""
        if not isinstance(seed, int) or seed < 0:
            from corridor.errors import ParameterError

            raise ParameterError("seed", seed, "must be a non-negative integer")
        return cls(Generator(np.random.PCG64(SeedSequence(seed))), cryptographic=False,
                   label=f"PCG64(seed={seed})")

    @classmethod
    def system(cls) -> RandomSource:
        """Draws from the OS CSPRNG (``secrets``/``os.urandom``).

        The numpy generator is re-seeded from 256 fresh OS bits for array draws used in
        simulation; :meth:`bytes` and :meth:`bits` read the OS CSPRNG directly.
        """
        seq = SeedSequence(secrets.randbits(256))
        return cls(Generator(np.random.PCG64(seq)), cryptographic=True, label="os-csprng")

    @classmethod
    def qrng(cls, source: str, *, min_entropy_bits_per_byte: float = 6.0,
             fail_closed: bool = True, on_event: Any = None, **options: Any) -> RandomSource:
        """OS CSPRNG bytes mixed with a health-tested QRNG (docs/entropy.md).

        ``source`` is an ``https://`` entropy endpoint or a device/FIFO/file path;
        ``options`` go to :func:`corridor.entropy.qrng.open_reader` (``ca``, ``cert``,
        ``key``, ``headers``, ``timeout_s``) or, for ``registry`` and ``batch_bytes``, to
        :class:`corridor.entropy.source.QrngRandomSource`. Fails closed by default.
        """
        from corridor.entropy.qrng import open_reader
        from corridor.entropy.source import QrngRandomSource

        source_options = {k: options.pop(k) for k in ("registry", "batch_bytes", "apt_window")
                          if k in options}
        reader = open_reader(source, **options)
        try:
            return QrngRandomSource(reader, min_entropy_bits_per_byte=min_entropy_bits_per_byte,
                                    fail_closed=fail_closed, on_event=on_event,
                                    **source_options)
        except BaseException:
            reader.close()
            raise

    def spawn(self) -> RandomSource:
        """An independent child stream (for Alice and Bob, or one per worker)."""
        bit_generator: BitGenerator = self.generator.bit_generator
        child = bit_generator.seed_seq.spawn(1)[0]  # type: ignore[attr-defined]
        return RandomSource(Generator(np.random.PCG64(child)), cryptographic=self.cryptographic,
                            label=f"{self._label}/child")

    def bytes(self, length: int) -> bytes:
        """``length`` random bytes; OS CSPRNG bytes when the source is cryptographic."""
        if self.cryptographic:
            return secrets.token_bytes(length)
        return self.generator.bytes(length)

    def bits(self, count: int) -> np.ndarray:
        """``count`` random bits as a uint8 array of 0/1."""
        raw = np.frombuffer(self.bytes((count + 7) // 8), dtype=np.uint8)
        return np.unpackbits(raw)[:count]

    def __repr__(self) -> str:
        return f"RandomSource({self._label})"
