"""Where a hybrid session's QKD key comes from, and why it may be missing.

:class:`QkdKeySource` is what a session asks: ``new_key(slave)`` at the initiator (ETSI
014 ``enc_keys``), ``key_by_id(master, key_ID)`` at the responder (``dec_keys``). When
there is no key, it raises :class:`QkdKeyMissing` with a reason code, and the session's
policy decides what happens (corridor.hybrid.policy); :func:`missing_reason` maps every
:class:`~corridor.kms.client.SaeClient` failure to one:

=====================  ==================================================================
reason                 cause
=====================  ==================================================================
pool_empty             503 "not enough key material" (the link has not made enough key)
link_quarantined       the link's monitor quarantined it (``link_check``, where known)
kme_unreachable        no connection to the KME (refused, timed out, TLS failure)
peer_kme_unreachable   503: the slave's KME could not be reached by ours
peer_kme_refused       503: the slave's KME refused the reservation (at start-up: it has
                       not stored the link's block yet)
no_relay_path          503: no usable relay path to the slave's KME over trusted nodes now
                       (a pool on the path short of key, at start-up; links quarantined;
                       KMEs unreachable)
relay_failed           503: a relay over trusted nodes was tried and failed
quota_exceeded         503 or 400: the pair's quota (corridor.kms.quota) is spent
kme_unavailable        any other 503 (storage alarm, ...)
key_not_found          400 "one or more keys specified are not found on KME" (dec_keys)
kme_unauthorized       401: the KME does not know this SAE (or not for this key)
kme_bad_request        any other 400
kme_protocol_error     a 200 answer that does not follow ETSI GS QKD 014
=====================  ==================================================================

A key of the wrong size, or one for another key ID, is a fault and never a fallback:
:class:`~corridor.hybrid.errors.QkdKeyInvalid`.

:class:`KmeQkdKeys` fetches over mutual TLS, optionally ``batch_size`` keys per
``enc_keys`` (kept in memory until used, dropped on :meth:`~KmeQkdKeys.close`), and
holds keys fetched ahead by ID at the responder (:meth:`~KmeQkdKeys.prefetch_ids`).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from corridor.errors import ParameterError
from corridor.hybrid.errors import HybridSessionError, QkdKeyInvalid
from corridor.kms.client import KmeConnectionError, KmeProtocolError, KmeResponseError, SaeClient
from corridor.kms.interface import DeliveredKey


class QkdKeyMissing(HybridSessionError):
    """No QKD key now; ``reason`` is the code the policy decision records."""

    reason = "qkd_key_missing"

    def __init__(self, reason: str, detail: str = "") -> None:
        self.detail = detail
        super().__init__(f"no QKD key: {reason}" + (f" ({detail})" if detail else ""),
                         reason)


def missing_reason(exc: Exception) -> str:
    """The reason code of a failed key request (module docstring table)."""
    if isinstance(exc, KmeConnectionError):
        return "kme_unreachable"
    if isinstance(exc, KmeProtocolError):
        return "kme_protocol_error"
    if isinstance(exc, KmeResponseError):
        message = exc.message.lower()
        if "quota" in message:
            return "quota_exceeded"
        if exc.status_code == 503:
            if "not enough key material" in message:
                return "pool_empty"
            if "no usable relay path" in message:
                # Its text lists the possible causes, "KMEs unreachable" among them: the
                # start-up state (empty pools on the path) must not read as an outage.
                return "no_relay_path"
            if "could not be relayed" in message:
                return "relay_failed"
            if "refused the reservation" in message:
                return "peer_kme_refused"
            if "unreachable" in message or "no connection" in message:
                return "peer_kme_unreachable"
            return "kme_unavailable"
        if exc.status_code == 401:
            return "kme_unauthorized"
        if exc.status_code == 400 and "not found" in message:
            return "key_not_found"
        return "kme_bad_request"
    return "qkd_source_failed"


class QkdKeySource(Protocol):
    """What a hybrid session asks for its QKD key."""

    key_size_bits: int

    def new_key(self, slave_sae_id: str) -> DeliveredKey:
        """A fresh key shared with ``slave_sae_id``; :class:`QkdKeyMissing` if none."""

    def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
        """The key ``key_id`` that ``master_sae_id`` got for us; :class:`QkdKeyMissing`."""


def check_key(key: DeliveredKey, key_size_bits: int, key_id: str | None = None) -> DeliveredKey:
    """``key`` if it has ``key_size_bits`` (and ``key_id``); :class:`QkdKeyInvalid` if not."""
    if key_id is not None and key.key_id != key_id:
        raise QkdKeyInvalid(f"the KME answered with key {key.key_id!r} when asked for "
                            f"{key_id!r}")
    if len(key.key) * 8 != key_size_bits:
        raise QkdKeyInvalid(f"QKD key {key.key_id!r} from the KME is {len(key.key) * 8} "
                            f"bits, expected {key_size_bits}")
    return key


class KmeQkdKeys:
    """QKD keys from this SAE's KME over ETSI GS QKD 014 (mutual TLS).

    Args:
        client: the SAE's client of its KME.
        key_size_bits: size of each key (a multiple of 8, 128 to 8192).
        batch_size: keys per ``enc_keys`` request (1: one request per session key).
        link_check: returns ``link_quarantined`` (or another reason) when the link that
            feeds this pool must not be used now, else None; checked before every key.
    """

    def __init__(self, client: SaeClient, *, key_size_bits: int = 256, batch_size: int = 1,
                 link_check: Callable[[], str | None] | None = None) -> None:
        if isinstance(key_size_bits, bool) or not isinstance(key_size_bits, int) \
                or key_size_bits % 8 or not 128 <= key_size_bits <= 8192:
            raise ParameterError("key_size_bits", key_size_bits,
                                 "a multiple of 8 from 128 to 8192")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
                or not 1 <= batch_size <= 1024:
            raise ParameterError("batch_size", batch_size, "an integer from 1 to 1024")
        self.client = client
        self.key_size_bits = key_size_bits
        self.batch_size = batch_size
        self.link_check = link_check
        self._lock = threading.Lock()
        self._ahead: dict[str, collections.deque[DeliveredKey]] = {}
        self._by_id: dict[tuple[str, str], DeliveredKey] = {}

    def _check_link(self) -> None:
        if self.link_check is not None:
            reason = self.link_check()
            if reason is not None:
                raise QkdKeyMissing(reason)

    def new_key(self, slave_sae_id: str) -> DeliveredKey:
        self._check_link()
        with self._lock:
            queue = self._ahead.setdefault(slave_sae_id, collections.deque())
            if not queue:
                try:
                    keys = self.client.get_key(slave_sae_id, number=self.batch_size,
                                               size=self.key_size_bits)
                except (KmeConnectionError, KmeProtocolError, KmeResponseError) as exc:
                    raise QkdKeyMissing(missing_reason(exc), str(exc)) from None
                queue.extend(check_key(key, self.key_size_bits) for key in keys)
                if not queue:
                    raise QkdKeyMissing("kme_protocol_error", "the KME returned no key")
            return queue.popleft()

    def prefetch_ids(self, master_sae_id: str, key_ids: Sequence[str]) -> None:
        """Fetch the keys ``key_ids`` in one ``dec_keys`` call (the KME's
        ``max_key_per_request`` bounds the batch) and hold them for :meth:`key_by_id`."""
        try:
            keys = self.client.get_key_with_id(master_sae_id, list(key_ids))
        except (KmeConnectionError, KmeProtocolError, KmeResponseError) as exc:
            raise QkdKeyMissing(missing_reason(exc), str(exc)) from None
        with self._lock:
            for key in keys:
                self._by_id[(master_sae_id, key.key_id)] = check_key(key, self.key_size_bits)

    def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
        self._check_link()
        with self._lock:
            held = self._by_id.pop((master_sae_id, key_id), None)
        if held is not None:
            return held
        try:
            keys = self.client.get_key_with_id(master_sae_id, key_id)
        except (KmeConnectionError, KmeProtocolError, KmeResponseError) as exc:
            raise QkdKeyMissing(missing_reason(exc), str(exc)) from None
        if len(keys) != 1:
            raise QkdKeyInvalid(f"the KME answered {len(keys)} keys when asked for "
                                f"{key_id!r}")
        return check_key(keys[0], self.key_size_bits, key_id)

    @property
    def held_keys(self) -> int:
        """Keys fetched ahead and not used yet."""
        with self._lock:
            return sum(len(q) for q in self._ahead.values()) + len(self._by_id)

    def close(self) -> None:
        """Drop the keys held ahead (they are never used for anything else)."""
        with self._lock:
            self._ahead.clear()
            self._by_id.clear()

    def __repr__(self) -> str:
        return (f"KmeQkdKeys(kme_url={self.client.kme_url!r}, "
                f"key_size_bits={self.key_size_bits}, batch_size={self.batch_size})")


__all__ = ["KmeQkdKeys", "QkdKeyMissing", "QkdKeySource", "check_key", "missing_reason"]
