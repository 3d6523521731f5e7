"""The scan: walk paths and endpoints, hand each item to the scanner of its kind, and
collect findings and skips.

:func:`scan` takes file paths, directories and ``host:port`` endpoints. A directory is
walked with symbolic links followed once (a link back into a directory already being
walked is a ``symlink loop`` skip, not an endless walk). Each file is classified by its
name and, when the name says nothing, by its first bytes (:func:`file_kind`); files of
no cryptographic kind are not read further. Nothing stops a scan: a file that cannot be
read, holds binary data where text was expected, does not parse, or exceeds
``max_file_bytes`` (the bound on the time spent on one file) becomes a
:class:`~corridor.inventory.findings.Skipped` with the reason; an endpoint that does not
answer within ``timeout_s`` as well.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography.utils import CryptographyDeprecationWarning

from corridor.inventory.findings import ScanResult, Skipped
from corridor.inventory.scan_config import config_findings, dialects
from corridor.inventory.scan_corridor import corridor_file_findings
from corridor.inventory.scan_keys import (
    UnreadableArtefact,
    der_findings,
    pem_findings,
    pkcs12_findings,
    ssh_public_lines,
)
from corridor.inventory.scan_native import EXTENSIONS, native_findings
from corridor.inventory.scan_python import python_findings
from corridor.inventory.scan_tls import DEFAULT_TIMEOUT_S, parse_endpoint, scan_endpoint

DEFAULT_MAX_FILE_BYTES = 8 * 1024 * 1024
_SNIFF_BYTES = 4096
_PEM_EXTENSIONS = {".pem", ".crt", ".cer", ".key", ".pub", ".csr", ".req"}
_DER_EXTENSIONS = {".der", ".cer", ".crt"}
_CONFIG_EXTENSIONS = {".conf", ".cnf", ".cfg", ".config"}
_CONFIG_NAMES = {"sshd_config", "ssh_config", "openssl.cnf", "nginx.conf", "httpd.conf",
                 "swanctl.conf", "ssl.conf", "apache2.conf", "wpa_supplicant.conf"}
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".mypy_cache",
              ".ruff_cache", ".pytest_cache"}


@dataclass(frozen=True)
class ScanOptions:
    """Limits of one scan.

    Attributes:
        max_file_bytes: larger files of a cryptographic kind are skipped (bounds the
            time per file: every parser is linear or close to it in the file's size).
        timeout_s: limit of each TLS handshake (an endpoint that stalls is skipped).
        live: also handshake with the KMEs named by a ``corridor-up.json``.
    """

    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    live: bool = False


def file_kind(path: Path, head: bytes | None = None) -> str | None:
    """The scanner for ``path`` (``python``, ``java``, ``c``, ``go``, ``pem``, ``der``,
    ``pkcs12``, ``ssh-public``, ``known-hosts``, ``config``, ``corridor``), from its name
    and, when given, its first bytes; None when it is of no cryptographic kind."""
    name = path.name
    suffix = path.suffix.lower()
    if suffix == ".py":
        return "python"
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if suffix in (".p12", ".pfx"):
        return "pkcs12"
    if name in ("known_hosts", "known_hosts2", "ssh_known_hosts"):
        return "known-hosts"
    if name.startswith("authorized_keys") or (suffix == ".pub" and name.startswith("id_")):
        return "ssh-public"
    if suffix in _PEM_EXTENSIONS or suffix == ".der" \
            or (name.startswith("id_") and not suffix) or name.startswith("ssh_host_"):
        return "pem"
    if suffix == ".toml" or (suffix == ".json" and "corridor-up" in name):
        return "corridor"
    if name in _CONFIG_NAMES or suffix in _CONFIG_EXTENSIONS or name.endswith("_config"):
        return "config"
    if head is not None and not suffix:
        if b"-----BEGIN " in head:
            return "pem"
        if b"\x00" not in head and dialects(head.decode("utf-8", "replace")):
            return "config"
    return None


def _binary(data: bytes) -> bool:
    return b"\x00" in data[:_SNIFF_BYTES]


def scan_file(path: Path, kind: str, data: bytes, options: ScanOptions) -> ScanResult:
    """Findings of one file's bytes by the scanner of ``kind``."""
    result = ScanResult(files_scanned=1, bytes_scanned=len(data))
    with warnings.catch_warnings():
        # Old, odd artefacts (negative serials, FFDH) are what an inventory looks for.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        _scan_bytes(path, kind, data, options, result)
    return result


def _scan_bytes(path: Path, kind: str, data: bytes, options: ScanOptions,
                result: ScanResult) -> None:
    location = str(path)
    try:
        if kind == "pkcs12":
            result.findings += pkcs12_findings(location, data)
        elif kind == "pem" and (b"-----BEGIN " in data[:65536] or b"-----BEGIN " in data):
            result.findings += pem_findings(location, data)
        elif kind == "pem":
            if path.suffix.lower() in _DER_EXTENSIONS:
                result.findings += der_findings(location, data)
            elif path.suffix.lower() == ".pub" and not _binary(data):
                result.findings += ssh_public_lines(location, data.decode("utf-8", "replace"),
                                                    "ssh-public")
            else:
                raise UnreadableArtefact("no PEM block" + (" (binary data)"
                                                           if _binary(data) else ""))
        elif _binary(data):
            raise UnreadableArtefact(f"binary data in a {kind} file")
        else:
            text = data.decode("utf-8", "replace")
            if kind == "python":
                result.findings += python_findings(location, text)
            elif kind in ("java", "c", "go"):
                result.findings += native_findings(location, text, kind)
            elif kind in ("known-hosts", "ssh-public"):
                result.findings += ssh_public_lines(location, text, kind)
            elif kind == "corridor":
                found = corridor_file_findings(location, text, live=options.live,
                                               timeout_s=options.timeout_s)
                if found is not None:
                    result.extend(found)
            else:
                result.findings += config_findings(location, text)
    except UnreadableArtefact as exc:
        result.skipped.append(Skipped(location, str(exc)))
    except SyntaxError as exc:
        result.skipped.append(Skipped(location, f"Python that does not parse (line "
                                                f"{exc.lineno})"))
    except (ValueError, RecursionError, MemoryError) as exc:
        result.skipped.append(Skipped(location, f"does not parse ({type(exc).__name__})"))
    except Exception as exc:  # one odd file must not end the inventory of the rest
        result.skipped.append(Skipped(location, f"scanner failed on it "
                                                f"({type(exc).__name__}); please report"))


def _scan_path_file(path: Path, options: ScanOptions, result: ScanResult) -> None:
    kind = file_kind(path)
    try:
        info = path.stat()
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else \
            f"cannot read: {exc.strerror or exc}"
        result.skipped.append(Skipped(str(path), reason))
        return
    if not stat.S_ISREG(info.st_mode):
        if kind is not None:
            result.skipped.append(Skipped(str(path), "not a regular file"))
        return
    try:
        with path.open("rb") as handle:
            head = None
            if kind is None:
                if path.suffix:
                    return
                head = handle.read(_SNIFF_BYTES)
                kind = file_kind(path, head)
                if kind is None:
                    return
            if info.st_size > options.max_file_bytes:
                result.skipped.append(Skipped(str(path), f"larger than the limit "
                                              f"({info.st_size} > {options.max_file_bytes} "
                                              "bytes)"))
                return
            data = (head or b"") + handle.read(options.max_file_bytes + 1)
    except OSError as exc:
        result.skipped.append(Skipped(str(path), f"cannot read: {exc.strerror or exc}"))
        return
    result.extend(scan_file(path, kind, data, options))


def _walk(root: Path, options: ScanOptions, result: ScanResult) -> None:
    stack = [root]
    visited: set[tuple[int, int]] = set()
    while stack:
        directory = stack.pop()
        try:
            info = directory.stat()
        except OSError as exc:
            reason = "symlink loop" if exc.errno == errno.ELOOP else \
                f"cannot read: {exc.strerror or exc}"
            result.skipped.append(Skipped(str(directory), reason))
            continue
        ident = (info.st_dev, info.st_ino)
        if ident in visited:
            result.skipped.append(Skipped(str(directory), "symlink loop (directory already "
                                          "walked)"))
            continue
        visited.add(ident)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            result.skipped.append(Skipped(str(directory), f"cannot list: "
                                          f"{exc.strerror or exc}"))
            continue
        subdirs = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name not in _SKIP_DIRS:
                    subdirs.append(path)
            else:
                _scan_path_file(path, options, result)
        stack.extend(reversed(subdirs))


def scan(targets: list[str], options: ScanOptions | None = None) -> ScanResult:
    """Scan every target (file, directory or ``host:port``); findings deduplicated."""
    options = options or ScanOptions()
    result = ScanResult()
    for target in targets:
        path = Path(target)
        endpoint = parse_endpoint(target)
        if endpoint is not None and not path.exists():
            result.extend(scan_endpoint(*endpoint, timeout_s=options.timeout_s))
        elif path.is_dir():
            _walk(path, options, result)
        elif path.exists() or path.is_symlink():
            _scan_path_file(path, options, result)
        else:
            result.skipped.append(Skipped(target, "no such file, directory or host:port"))
    return result.deduplicated()
