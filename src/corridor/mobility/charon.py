"""A running strongSwan charon, reached over its VICI socket (PyPI ``vici``).

This module owns the conversation with charon: connecting to the socket (a clear
:class:`CharonUnavailableError` when it is absent or refuses), loading and unloading
shared secrets (the IKE pre-shared key and RFC 8784 PPKs) and connections, starting and
closing IKE SAs, and reading the IKE SAs back. It knows nothing of QKD, keys' origin or
policies (:mod:`corridor.mobility.ipsec` does). Secrets pass through to charon and are
never logged or put in an error message.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vici
import vici.exception

from corridor.errors import CorridorError

DEFAULT_VICI_SOCKET = "/var/run/charon.vici"


class CharonUnavailableError(CorridorError):
    """charon's VICI socket is absent, refuses, or the session broke."""


class CharonCommandError(CorridorError):
    """charon refused a VICI command (its ``errmsg`` in the message)."""


@dataclass(frozen=True)
class IkeSa:
    """One IKE SA as ``list-sas`` reports it (the fields Corridor uses).

    Attributes:
        connection: the name of the connection it belongs to.
        unique_id: charon's numeric ID of the SA (``ike-id`` for terminate).
        state: ``ESTABLISHED``, ``CONNECTING``, ``DELETING``, ...
        ppk: True when charon reports the PPK was used (RFC 8784).
        children: the names of its CHILD SAs in state INSTALLED.
        bytes_total: bytes in and out over its installed CHILD SAs.
    """

    connection: str
    unique_id: int
    state: str
    ppk: bool
    children: tuple[str, ...]
    bytes_total: int = 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _vici_socket_path(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    return text[len("unix://"):] if text.startswith("unix://") else text


class Charon:
    """One VICI session with one charon daemon; safe to share between threads (calls are
    serialised: a VICI session carries one request at a time).

    Args:
        socket_path: charon's VICI socket (``charon.plugins.vici.socket`` in
            strongswan.conf, ``unix://`` prefix allowed).
        timeout_s: how long a connection attempt and each answer may take.
    """

    def __init__(self, socket_path: str | os.PathLike[str] = DEFAULT_VICI_SOCKET, *,
                 timeout_s: float = 30.0) -> None:
        self.socket_path = _vici_socket_path(socket_path)
        self._lock = threading.Lock()
        if not Path(self.socket_path).exists():
            raise CharonUnavailableError(
                f"charon's VICI socket {self.socket_path} does not exist: start charon with "
                "the vici plugin, or pass the path its strongswan.conf sets in "
                "charon.plugins.vici.socket (--vici-socket)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise CharonUnavailableError(
                f"cannot connect to charon's VICI socket {self.socket_path}: "
                f"{exc.strerror or exc}: is charon running (and are we allowed to use "
                "its socket)?") from None
        self._sock = sock
        self._session = vici.Session(sock)

    def __repr__(self) -> str:
        return f"Charon(socket_path={self.socket_path!r})"

    def __enter__(self) -> Charon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the VICI session."""
        self._sock.close()

    def _call(self, what: str, method: str, *args: Any) -> Any:
        with self._lock:
            try:
                result = getattr(self._session, method)(*args)
                if isinstance(result, Iterator):
                    result = list(result)
                return result
            except vici.exception.CommandException as exc:
                # charon's errmsg names the object, never a secret's bytes.
                raise CharonCommandError(f"charon refused {what}: {exc}") from None
            except (OSError, vici.exception.SessionException,
                    vici.exception.DeserializationException) as exc:
                raise CharonUnavailableError(
                    f"VICI session with charon at {self.socket_path} broke during {what}: "
                    f"{type(exc).__name__}") from None

    def version(self) -> dict[str, str]:
        """charon's daemon name, version and system."""
        return {k: _text(v) for k, v in self._call("version", "version").items()}

    def load_shared(self, secret_id: str, kind: str, data: bytes,
                    owners: Sequence[str]) -> None:
        """Load a shared secret (``kind`` ``IKE`` or ``PPK``) under ``secret_id`` (the
        handle for :meth:`unload_shared`), for the identities ``owners``; for a PPK the
        owner is its PPK ID."""
        self._call(f"load-shared {secret_id}", "load_shared",
                   {"id": secret_id, "type": kind, "data": data, "owners": list(owners)})

    def unload_shared(self, secret_id: str) -> None:
        """Remove the shared secret loaded as ``secret_id``."""
        self._call(f"unload-shared {secret_id}", "unload_shared", {"id": secret_id})

    def shared_ids(self) -> list[str]:
        """The IDs of the shared secrets loaded over VICI."""
        keys = self._call("get-shared", "get_shared").get("keys", [])
        return [_text(k) for k in keys]

    def load_conn(self, name: str, conn: Mapping[str, Any]) -> None:
        """Load (or replace) connection ``name`` (a swanctl.conf ``connections`` entry as
        a dict)."""
        self._call(f"load-conn {name}", "load_conn", {name: dict(conn)})

    def unload_conn(self, name: str) -> None:
        """Unload connection ``name`` (its established SAs stay until closed)."""
        self._call(f"unload-conn {name}", "unload_conn", {"name": name})

    def conn_names(self) -> list[str]:
        """The names of the connections loaded over VICI."""
        return [_text(c) for c in self._call("get-conns", "get_conns").get("conns", [])]

    def initiate(self, child: str, ike: str, *, timeout_ms: int = 15000) -> None:
        """Start IKE SA ``ike`` with its CHILD SA ``child``; returns once established
        (raises :class:`CharonCommandError` when it fails, e.g. a PPK mismatch)."""
        self._call(f"initiate {ike}/{child}", "initiate",
                   {"child": child, "ike": ike, "timeout": timeout_ms})

    def terminate(self, ike_id: int, *, timeout_ms: int = 15000) -> None:
        """Close IKE SA ``ike_id`` (and its CHILD SAs) with a DELETE to the peer."""
        self._call(f"terminate IKE SA {ike_id}", "terminate",
                   {"ike-id": str(ike_id), "timeout": timeout_ms})

    def ike_sas(self, connection: str | None = None) -> list[IkeSa]:
        """The IKE SAs charon holds (of ``connection`` only, when given)."""
        filters = {"ike": connection} if connection else None
        sas = []
        for entry in self._call("list-sas", "list_sas", filters):
            for name, sa in entry.items():
                installed = [child for child in sa.get("child-sas", {}).values()
                             if _text(child.get("state", "")) == "INSTALLED"]
                sas.append(IkeSa(
                    connection=_text(name), unique_id=int(sa["uniqueid"]),
                    state=_text(sa.get("state", "")),
                    ppk=_text(sa.get("ppk", "no")) == "yes",
                    children=tuple(_text(child.get("name", "")) for child in installed),
                    bytes_total=sum(int(child.get(k, 0)) for child in installed
                                    for k in ("bytes-in", "bytes-out"))))
        return sas
