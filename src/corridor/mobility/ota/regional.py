"""The campaign key's first leg: OEM back end -> regional distribution site, hybrid-keyed.

This module owns that transfer. The OEM back end (the master SAE of a corridor pair) and
the regional site (the slave SAE) run one hybrid session
(:mod:`corridor.hybrid.session`: the QKD key both fetch from their KMEs + X-Wing, whose
post-quantum half is ML-KEM-768, through CatKDF, under the pair's policy); HKDF-SHA256
of the session key (info ``corridor ota campaign transfer v1 || lp(campaign ID) ||
session ID``) keys one AES-256-GCM message that carries the campaign key, the campaign
ID as associated data. The session key is wiped after that one message.

:func:`transfer_campaign_key` runs both ends in this process over an in-memory transport
(how ``corridor up`` and ``corridor ota assign`` run the two sites); :func:`send_key` and
:func:`receive_key` are the two ends for any :class:`~corridor.hybrid.transport.ByteTransport`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.hybrid.policy import DecisionRecorder
from corridor.hybrid.qkd import QkdKeySource
from corridor.hybrid.session import Initiator, Responder, SessionKey, SessionRecord
from corridor.hybrid.transport import ByteTransport, memory_pair
from corridor.mobility.fleet.sealing import AES_KEY_BYTES, wipe
from corridor.mobility.fleet.wire import lp
from corridor.mobility.ota.errors import OtaError

TRANSFER_INFO = b"corridor ota campaign transfer v1"
NONCE_BYTES = 12


class TransferFailed(OtaError):
    """The campaign key did not reach the regional site (session refused, tag failed)."""


def _leg_key(session: SessionKey, campaign_id: str) -> bytearray:
    info = TRANSFER_INFO + lp(campaign_id.encode()) + bytes.fromhex(session.record.session_id)
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=AES_KEY_BYTES, salt=None,
                          info=info).derive(session.key))


def send_key(initiator: Initiator, transport: ByteTransport, campaign_id: str,
             key: bytes | bytearray) -> SessionRecord:
    """The OEM's end: one handshake, then the sealed campaign key; the session's record."""
    with initiator.handshake(transport) as session:
        leg = _leg_key(session, campaign_id)
        try:
            nonce = os.urandom(NONCE_BYTES)
            transport.send(nonce + AESGCM(bytes(leg)).encrypt(nonce, bytes(key),
                                                              lp(campaign_id.encode())))
        finally:
            wipe(leg)
        return session.record


def receive_key(responder: Responder, transport: ByteTransport, campaign_id: str
                ) -> tuple[bytearray, SessionRecord]:
    """The regional site's end: the campaign key and the session's record."""
    with responder.handshake(transport) as session:
        leg = _leg_key(session, campaign_id)
        message = transport.recv()
        try:
            key = AESGCM(bytes(leg)).decrypt(message[:NONCE_BYTES], message[NONCE_BYTES:],
                                             lp(campaign_id.encode()))
        except (InvalidTag, ValueError):
            raise TransferFailed(f"campaign {campaign_id}: the key message does not verify "
                                 "under the session key") from None
        finally:
            wipe(leg)
        return bytearray(key), session.record


def transfer_campaign_key(campaign_id: str, key: bytes | bytearray, *, oem_sae_id: str,
                          regional_sae_id: str, policy: str, oem_qkd: QkdKeySource | None,
                          regional_qkd: QkdKeySource | None,
                          recorder: DecisionRecorder | None = None,
                          timeout_s: float = 30.0) -> tuple[bytearray, SessionRecord]:
    """Both ends in this process: the key as the regional site received it and the
    regional side's session record (inputs used: ``qkd+pqc`` when the corridor gave a
    QKD key). A refused session raises its :class:`~corridor.hybrid.errors.HybridSessionError`."""
    oem_end, regional_end = memory_pair(timeout_s)
    initiator = Initiator(oem_sae_id, regional_sae_id, policy, qkd=oem_qkd, recorder=recorder)
    responder = Responder(regional_sae_id, {oem_sae_id: policy}, qkd=regional_qkd,
                          recorder=recorder)
    result: dict[str, Any] = {}

    def regional() -> None:
        try:
            result["key"] = receive_key(responder, regional_end, campaign_id)
        except Exception as exc:  # reported below, after the OEM side ends
            result["error"] = exc

    thread = threading.Thread(target=regional, name="ota-regional", daemon=True)
    thread.start()
    try:
        send_key(initiator, oem_end, campaign_id, key)
    except Exception:
        regional_end.close()
        thread.join(timeout_s)
        raise
    thread.join(timeout_s)
    if "error" in result:
        raise result["error"]
    if "key" not in result:
        raise TransferFailed(f"campaign {campaign_id}: the regional site did not answer "
                             f"within {timeout_s:g} s")
    received, record = result["key"]
    return received, record


__all__ = ["TransferFailed", "receive_key", "send_key", "transfer_campaign_key"]
