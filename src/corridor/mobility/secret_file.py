"""Writing exported keys to files that only their owner can read (mode 0600).

An export is written to a new temporary file in the target's directory, created 0600
from the start (never world-readable, not even for an instant), and renamed over the
target, so a reader never sees half a key and an existing file's looser mode never
survives.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from corridor.errors import ParameterError


def write_secret_file(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` with mode 0600, atomically; returns the path."""
    target = Path(path)
    if not target.parent.is_dir():
        raise ParameterError("--output", str(target), "a file in an existing directory")
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; say it, whatever the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target
