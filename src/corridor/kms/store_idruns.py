"""Key-ID runs: the keys of one announced batch named by a head and a counter.

:func:`corridor.kms.store.new_key_ids` names the keys of one delivery with UUIDs that
share their first 28 characters (the *head*: 90 random bits and the version and variant)
and end in an 8-digit lower-case hexadecimal counter that goes up by one from key to
key. The slave KME stores such a batch, when it is owed to one slave SAE, as one
``kms_run`` record without a row per key: the head, the first counter and a bitmap of
the keys still owed (one bit per key, set while owed). This module owns the pure parts:
recognising a run of IDs, splitting an ID into head and counter, and the bitmap.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

HEAD_CHARS = 28
_COUNTER_LIMIT = 1 << 32


def split_id(key_id: str) -> tuple[str, int] | None:
    """(head, counter) of an ID of run form, or None: 36 characters whose last 8 are the
    counter in lower-case hexadecimal, exactly as :func:`ids_of` writes it."""
    if not isinstance(key_id, str) or len(key_id) != 36:
        return None
    tail = key_id[HEAD_CHARS:]
    try:
        counter = int(tail, 16)
    except ValueError:
        return None
    if f"{counter:08x}" != tail:  # no sign, no "0x", no upper case, no spaces
        return None
    return key_id[:HEAD_CHARS], counter


def ids_of(head: str, first: int, count: int) -> list[str]:
    """The ``count`` key IDs of a run from counter ``first``."""
    # The counters as one hexadecimal string, sliced: a third cheaper per key than
    # formatting each.
    digits = struct.pack(f">{count}I", *range(first, first + count)).hex()
    return [head + digits[i:i + 8] for i in range(0, 8 * count, 8)]


def group_by_head(key_ids: Sequence[str]) -> dict[str, tuple[list[str], list[int]]]:
    """The IDs of run form among ``key_ids``, by head: (IDs, counters), in the order
    given. One run in order (the common case) is recognised without splitting each ID."""
    run = as_run(key_ids)
    if run is not None:
        return {run[0]: (list(key_ids), list(range(run[1], run[1] + len(key_ids))))}
    groups: dict[str, tuple[list[str], list[int]]] = {}
    for key_id in key_ids:
        parts = split_id(key_id)
        if parts is not None:
            ids, counters = groups.setdefault(parts[0], ([], []))
            ids.append(key_id)
            counters.append(parts[1])
    return groups


def as_run(key_ids: Sequence[str]) -> tuple[str, int] | None:
    """(head, first counter) when ``key_ids`` (not empty) are consecutive IDs of one run
    in counter order, else None. One comparison of two lists built in C."""
    if not key_ids:
        return None
    parts = split_id(key_ids[0])
    if parts is None:
        return None
    head, first = parts
    if len(key_ids) == 1:
        return parts
    if first + len(key_ids) > _COUNTER_LIMIT:
        return None
    if list(key_ids) != ids_of(head, first, len(key_ids)):
        return None
    return head, first


def full_bitmap(count: int) -> bytearray:
    """A bitmap of ``count`` keys, all owed (bit i of byte i // 8 is key i)."""
    bitmap = bytearray(b"\xff" * (count // 8))
    if count % 8:
        bitmap.append((1 << (count % 8)) - 1)
    return bitmap


def is_set(bitmap: bytes | bytearray, index: int) -> bool:
    """Whether key ``index`` is still owed."""
    return bool(bitmap[index >> 3] >> (index & 7) & 1)


def clear(bitmap: bytearray, indices: Iterable[int]) -> None:
    """Mark keys as no longer owed."""
    for index in indices:
        bitmap[index >> 3] &= ~(1 << (index & 7)) & 0xFF


def owed(bitmap: bytes | bytearray, count: int) -> list[int]:
    """Indices of the keys still owed, in order."""
    return [i for i in range(count) if bitmap[i >> 3] >> (i & 7) & 1]
