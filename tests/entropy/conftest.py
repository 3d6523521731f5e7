"""Fixtures: a test PKI and the HTTPS QRNG endpoint of ``qrng_server``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corridor.kms.pki import init_pki
from tests.entropy.qrng_server import QrngServer


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for mutual TLS with the test endpoint."""

    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClientTls, Path, Path]:
    layout = init_pki(tmp_path_factory.mktemp("pki"), ["qrng"], [("client", "qrng")])
    client = ClientTls(layout.ca_cert, layout.saes["client"].cert, layout.saes["client"].key)
    return client, layout.kmes["qrng"].cert, layout.kmes["qrng"].key


@pytest.fixture(scope="module")
def qrng_server(pki: tuple[ClientTls, Path, Path]) -> Iterator[QrngServer]:
    client, cert, key = pki
    server = QrngServer(cert, key, client.ca)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls(pki: tuple[ClientTls, Path, Path]) -> ClientTls:
    return pki[0]


@pytest.fixture
def refused_url() -> str:
    """An https URL on a local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"https://127.0.0.1:{port}/raw"
