"""Recorded key files as a key source.

This module owns :class:`RecordedKeyFileSource`: Alice's and Bob's key files as
``corridor link run --keys-out DIR`` writes them (``DIR/alice.bin``, ``DIR/bob.bin``),
cut into blocks of a stated size; block ``k`` is bytes
``[k * block_bytes, (k + 1) * block_bytes)`` of each file, so a restarted KME finds the
same block under the same ID. Either side may be opened alone (a KME process that only
holds its own site's file).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.config import check_id
from corridor.kms.sources.base import SIDE_ALICE, SIDE_BOB, SIDES, SourceBlock, check_positive


class RecordedKeyFileSource:
    """Alice's and Bob's recorded key files, cut into blocks of ``block_bytes``.

    Args:
        link_id: the link the keys belong to.
        block_bytes: bytes per block (even, so each direction gets half).
        alice_file, bob_file: the two parties' files (``DIR/alice.bin``,
            ``DIR/bob.bin``); at least one. With both, they must have the same length.
        block_interval_s: wall time between blocks (0: as fast as the feeder takes
            them), to play a recording back at a link's rate.
        first_file_block_id: the block ID of the file's first block.

    A last piece shorter than ``block_bytes`` is not delivered. The source does not
    check that the two files hold the same bytes (in a deployment each site only has its
    own); a mismatch shows up as keys that differ, which is why ``corridor link run``'s
    verification stage must have passed on every block written.
    """

    def __init__(self, link_id: str, block_bytes: int, *,
                 alice_file: str | os.PathLike[str] | None = None,
                 bob_file: str | os.PathLike[str] | None = None,
                 block_interval_s: float = 0.0, first_file_block_id: int = 0) -> None:
        self.link_id = check_id("link_id", link_id)
        check_positive("block_bytes", block_bytes, integer=True)
        if block_bytes % 2 or block_bytes < 2:
            raise ParameterError("block_bytes", block_bytes,
                                 "must be an even number of bytes >= 2 (half per direction)")
        self.block_bytes = block_bytes
        self.block_interval_s = float(check_positive("block_interval_s", block_interval_s,
                                                     allow_zero=True))
        self.first_file_block_id = check_positive("first_file_block_id", first_file_block_id,
                                                  integer=True, allow_zero=True)
        paths = {SIDE_ALICE: alice_file, SIDE_BOB: bob_file}
        if all(p is None for p in paths.values()):
            raise ParameterError("alice_file/bob_file", None, "at least one key file is needed")
        self._files: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        for side, path in paths.items():
            if path is None:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 - kept open for the source's life
            except OSError as exc:
                self.close()
                raise ParameterError(f"{side}_file", str(path), "must be a readable key file",
                                     exc.strerror) from None
            self._files[side] = handle
            sizes[side] = os.fstat(handle.fileno()).st_size
        if len(set(sizes.values())) > 1:
            self.close()
            raise ParameterError("bob_file", str(bob_file),
                                 f"must have the same length as the alice file "
                                 f"({sizes[SIDE_ALICE]} bytes), has {sizes[SIDE_BOB]}")
        size = next(iter(sizes.values()))
        self.total_blocks = size // block_bytes
        self._next: int | None = None
        self._due = 0.0
        self._closed = False

    @classmethod
    def from_directory(cls, link_id: str, directory: str | os.PathLike[str], block_bytes: int,
                       *, sides: tuple[str, ...] = SIDES,
                       **options: Any) -> RecordedKeyFileSource:
        """Open ``DIR/alice.bin`` and/or ``DIR/bob.bin`` (``sides`` picks which)."""
        root = Path(directory)
        unknown = [s for s in sides if s not in SIDES]
        if unknown or not sides:
            raise ParameterError("sides", list(sides), f"must name some of {list(SIDES)}")
        return cls(link_id, block_bytes,
                   alice_file=root / "alice.bin" if SIDE_ALICE in sides else None,
                   bob_file=root / "bob.bin" if SIDE_BOB in sides else None, **options)

    def start(self, first_block_id: int) -> None:
        """Deliver from block ``first_block_id`` on (earlier blocks of the file are skipped)."""
        check_positive("first_block_id", first_block_id, integer=True, allow_zero=True)
        if first_block_id < self.first_file_block_id:
            raise ParameterError("first_block_id", first_block_id,
                                 f"must be >= first_file_block_id = {self.first_file_block_id}")
        self._next = first_block_id
        self._due = time.monotonic()

    @property
    def finished(self) -> bool:
        """True after the file's last whole block (or after close)."""
        if self._closed:
            return True
        return self._next is not None and \
            self._next - self.first_file_block_id >= self.total_blocks

    def next_block(self, timeout_s: float) -> SourceBlock | None:
        """The next whole block of the file(s), when its time has come."""
        if self._next is None:
            raise ParameterError("source", "not started", "call start(first_block_id) first")
        if self.finished:
            return None
        wait_s = self._due - time.monotonic()
        if wait_s > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return None
        if wait_s > 0:
            time.sleep(wait_s)
        block_id = self._next
        offset = (block_id - self.first_file_block_id) * self.block_bytes
        keys = {side: os.pread(handle.fileno(), self.block_bytes, offset)
                for side, handle in self._files.items()}
        self._next = block_id + 1
        self._due = max(self._due + self.block_interval_s, time.monotonic()) \
            if self.block_interval_s else self._due
        return SourceBlock(link_id=self.link_id, block_id=block_id,
                           alice_key=keys.get(SIDE_ALICE, b""), bob_key=keys.get(SIDE_BOB, b""))

    def close(self) -> None:
        """Close the files."""
        self._closed = True
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __repr__(self) -> str:
        return (f"RecordedKeyFileSource(link_id={self.link_id!r}, block_bytes={self.block_bytes}, "
                f"sides={sorted(self._files)}, total_blocks={self.total_blocks})")
