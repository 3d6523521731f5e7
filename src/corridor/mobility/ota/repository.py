"""One TUF repository on disk, written with python-tuf's Metadata API.

This module owns :class:`TufRepository`: the metadata of one repository (root, targets,
snapshot, timestamp and the targets roles delegated to suppliers) in
``<path>/metadata/`` and its target files in ``<path>/targets/``, laid out for
``tuf.ngclient`` (``N.root.json`` for every root version, ``timestamp.json``,
``snapshot.json``, ``<role>.json``; no consistent snapshots, so that a mirror is a plain
directory). Every write signs with the role's signers (:mod:`.keys`: Ed25519, ML-DSA-65
or hybrid) and bumps its version; :meth:`TufRepository.publish` then writes a new
snapshot and timestamp. :meth:`TufRepository.rotate_root` follows the TUF rules: the new
root is signed by a threshold of the old root's keys and of its own.

The image repository and each vehicle's director repository (:mod:`.backend`) are both
one of these. The repository signs what it is given; who may sign what is the caller's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from corridor.errors import ParameterError

TOP_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
DEFAULT_EXPIRY: dict[str, dt.timedelta] = {
    Root.type: dt.timedelta(days=365), Targets.type: dt.timedelta(days=90),
    Snapshot.type: dt.timedelta(days=7), Timestamp.type: dt.timedelta(days=1),
}
"""How long each role's metadata is valid; delegated roles as targets."""
SERIALIZER = JSONSerializer(compact=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class TufRepository:
    """One repository's metadata and targets under ``path`` (module docstring).

    Args:
        path: the repository's directory.
        signers: the signers of each role (top-level and delegated) this process holds;
            a write of a role without signers here is refused.
        expiry: how long each role's new metadata stays valid (default
            :data:`DEFAULT_EXPIRY`).
    """

    def __init__(self, path: Path, signers: Mapping[str, Sequence[Signer]],
                 expiry: Mapping[str, dt.timedelta] | None = None) -> None:
        self.path = path
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self.signers = {role: list(s) for role, s in signers.items()}
        self.expiry = dict(DEFAULT_EXPIRY, **(expiry or {}))

    def __repr__(self) -> str:
        return f"TufRepository({str(self.path)!r})"

    @classmethod
    def create(cls, path: Path, signers: Mapping[str, Sequence[Signer]], *,
               thresholds: Mapping[str, int] | None = None,
               expiry: Mapping[str, dt.timedelta] | None = None) -> TufRepository:
        """A new repository: version 1 of the four top-level roles, each role's keys the
        public keys of its ``signers`` (threshold: ``thresholds`` or 1)."""
        if (path / "metadata" / "1.root.json").exists():
            raise ParameterError("--dir", str(path), "a directory without a repository "
                                 "(1.root.json exists)")
        repo = cls(path, signers, expiry)
        root = Root(expires=_now() + repo.expiry[Root.type], consistent_snapshot=False)
        for role in TOP_ROLES:
            for signer in signers[role]:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = (thresholds or {}).get(role, 1)
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
        repo._write(Metadata(root), bump=False)
        repo._write(Metadata(Targets(expires=_now() + repo.expiry[Targets.type])), bump=False)
        repo.publish()
        return repo

    # -- reading -------------------------------------------------------------------

    def root_version(self) -> int:
        return self.open(Root.type).signed.version

    def open(self, role: str) -> Metadata[Any]:
        """The current metadata of ``role``."""
        name = f"{self.root_version_file()}" if role == Root.type else f"{role}.json"
        return Metadata.from_file(str(self.metadata_dir / name))

    def root_version_file(self) -> str:
        versions = sorted(int(p.name.split(".", 1)[0])
                          for p in self.metadata_dir.glob("*.root.json"))
        if not versions:
            raise ParameterError("--dir", str(self.path), "a TUF repository (no root)")
        return f"{versions[-1]}.root.json"

    def root_bytes(self, version: int = 1) -> bytes:
        """The bytes of root ``version`` (what a client is provisioned with)."""
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    def role_sizes_bytes(self) -> dict[str, int]:
        """Bytes of each role's current metadata file."""
        out = {Root.type: (self.metadata_dir / self.root_version_file()).stat().st_size}
        for path in sorted(self.metadata_dir.glob("*.json")):
            if path.name[0].isdigit() or path.name == "root.json":
                continue
            out[path.stem] = path.stat().st_size
        return out

    def delegated_roles(self) -> list[str]:
        delegations = self.open(Targets.type).signed.delegations
        return sorted(delegations.roles or {}) if delegations else []

    # -- writing -------------------------------------------------------------------

    def _signers(self, role: str) -> list[Signer]:
        signers = self.signers.get(role)
        if not signers:
            raise ParameterError("role", role, f"a role whose key this process holds "
                                 f"(has: {sorted(self.signers)})")
        return signers

    def _write(self, md: Metadata[Any], *, bump: bool = True,
               expires: dt.datetime | None = None, extra_signers: Sequence[Signer] = (),
               role: str | None = None) -> None:
        role = role or md.signed.type
        if bump:
            md.signed.version += 1
        md.signed.expires = expires or _now() + self.expiry.get(role, self.expiry[Targets.type])
        md.signatures.clear()
        for signer in [*extra_signers, *self._signers(role)]:
            md.sign(signer, append=True)
        data = md.to_bytes(SERIALIZER)
        if md.signed.type == Root.type:
            (self.metadata_dir / f"{md.signed.version}.root.json").write_bytes(data)
            (self.metadata_dir / "root.json").write_bytes(data)
        else:
            tmp = self.metadata_dir / f".{role}.json.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.metadata_dir / f"{role}.json")

    def add_target(self, target_path: str, data: bytes | None = None, *,
                   role: str = Targets.type, target: TargetFile | None = None,
                   custom: Mapping[str, Any] | None = None) -> TargetFile:
        """Sign ``target_path`` into ``role`` (its file written under ``targets/`` when
        ``data`` is given, else ``target``'s length and hashes are used); not published
        until :meth:`publish`."""
        if data is not None:
            target = TargetFile.from_data(target_path, data, ["sha256", "sha512"])
            file = self.targets_dir / target_path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(data)
        elif target is None:
            raise ValueError("add_target needs data or a target")
        entry = TargetFile(target.length, dict(target.hashes), target_path,
                           {"custom": dict(custom)} if custom else None)
        md = self.open(role)
        md.signed.targets[target_path] = entry
        self._write(md, role=role)
        return entry

    def set_targets(self, entries: Mapping[str, TargetFile], *, role: str = Targets.type
                    ) -> None:
        """Replace every target of ``role`` (a director's bundle for one vehicle)."""
        md = self.open(role)
        md.signed.targets = dict(entries)
        self._write(md, role=role)

    def delegate(self, name: str, keys: Sequence[Key], paths: list[str], *,
                 threshold: int = 1) -> None:
        """Delegate ``paths`` (glob patterns) from targets to role ``name`` with ``keys``
        (terminating: a path that matches is not searched further), and write version 1
        of the new role (signed by its signers, when held here)."""
        md = self.open(Targets.type)
        if md.signed.delegations is None:
            md.signed.delegations = Delegations({}, roles={})
        roles = md.signed.delegations.roles
        assert roles is not None
        roles[name] = DelegatedRole(name, [], threshold, True, paths)
        for key in keys:
            md.signed.add_key(key, name)
        self._write(md)
        if self.signers.get(name):
            self._write(Metadata(Targets(expires=_now())), bump=False, role=name)

    def publish(self, *, timestamp_expires: dt.datetime | None = None) -> int:
        """A new snapshot (every targets role's current version) and timestamp; the
        timestamp's version."""
        meta = {f"{Targets.type}.json": MetaFile(self.open(Targets.type).signed.version)}
        for role in self.delegated_roles():
            if (self.metadata_dir / f"{role}.json").exists():
                meta[f"{role}.json"] = MetaFile(self.open(role).signed.version)
        snapshot_file = self.metadata_dir / "snapshot.json"
        if snapshot_file.exists():
            snapshot = self.open(Snapshot.type)
            snapshot.signed.meta = meta
            self._write(snapshot)
        else:
            self._write(Metadata(Snapshot(meta=meta)), bump=False)
        version = self.open(Snapshot.type).signed.version
        timestamp_file = self.metadata_dir / "timestamp.json"
        if timestamp_file.exists():
            timestamp = self.open(Timestamp.type)
            timestamp.signed.snapshot_meta = MetaFile(version)
            self._write(timestamp, expires=timestamp_expires)
        else:
            self._write(Metadata(Timestamp(snapshot_meta=MetaFile(version))), bump=False,
                        expires=timestamp_expires)
        return int(self.open(Timestamp.type).signed.version)

    def rotate_root(self, new_signers: Mapping[str, Sequence[Signer]], *,
                    thresholds: Mapping[str, int] | None = None) -> int:
        """Root version N+1 with the keys of ``new_signers`` for the roles it names (the
        others keep theirs), signed by the old root keys this process holds and the new
        root keys (TUF: a client accepts it only with a threshold of both); the new
        version. Snapshot and timestamp are re-signed when their keys changed."""
        md = self.open(Root.type)
        root = md.signed
        old_root_signers = self._signers(Root.type)
        for role, signers in new_signers.items():
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            for signer in signers:
                root.add_key(signer.public_key, role)
            root.roles[role].threshold = (thresholds or {}).get(role, 1)
        self.signers.update({role: list(s) for role, s in new_signers.items()})
        new_ids = {s.public_key.keyid for s in self._signers(Root.type)}
        self._write(md, extra_signers=[s for s in old_root_signers
                                       if s.public_key.keyid not in new_ids])
        if Targets.type in new_signers:
            self._write(self.open(Targets.type))
        if set(new_signers) - {Root.type}:
            self.publish()
        return int(root.version)


__all__ = ["DEFAULT_EXPIRY", "SERIALIZER", "TOP_ROLES", "TufRepository"]
